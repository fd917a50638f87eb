// A follower's dashboard data is the coordinator's snapshot, read over RelayHttp through a real node agent (as
// `cluster up` wires them; docs/architecture.md "Relayed requests"): both APIs with their own API keys. The relay
// reads the snapshot and no other route outside /v1 (the page, /metrics: 401), a forged relay secret gets 401,
// and with the coordinator's API gone the follower answers a 503 that names the coordinator.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiServer, startApiServer } from "../../api/server.js";
import type { ClusterSnapshot } from "../../cluster/snapshot.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import type { RelayHttpChunk } from "../../common/wire/types.js";
import { fixtureSnapshot } from "../helpers/dashboard-fixture.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";
import { type RelayAgent, startRelayAgent } from "../helpers/relay-agent.js";

type ApiErrorBody = { error: { code: string; message: string } };

const COORDINATOR_KEY = "coordinator-key";
const FOLLOWER_KEY = "follower-key";

let coordinator: ApiServer;
let follower: ApiServer;
let agent: RelayAgent;
let coordinatorClosed = false;

beforeAll(async () => {
  const modelDir = await ensureModel("tiny", "tiny");
  const relayToken = randomBytes(32).toString("base64url");
  const base = { generator: () => undefined, modelDir, modelId: "tiny", health: () => ({ ok: true }) };
  // Told apart by their tick: the coordinator's picture is fixtureSnapshot(3), the follower's own (1).
  coordinator = await startApiServer(
    { ...base, snapshot: () => fixtureSnapshot(3) },
    { host: "127.0.0.1", port: 0, apiKey: COORDINATOR_KEY, relayToken },
  );
  agent = await startRelayAgent({
    apiUrl: coordinator.url,
    relayToken,
    clusterKey: generateClusterKey(),
    modelDir,
  });
  follower = await startApiServer(
    { ...base, snapshot: () => fixtureSnapshot(1), relay: () => agent.relay },
    { host: "127.0.0.1", port: 0, apiKey: FOLLOWER_KEY },
  );
}, 60_000);

afterAll(async () => {
  await follower?.close();
  await agent?.close();
  if (!coordinatorClosed) await coordinator?.close();
});

/** GET `path` through the relay as the follower's API sends it: the status and body the coordinator answered. */
async function relayGet(path: string): Promise<{ status: number; body: string }> {
  const call = agent.relay.open({ method: "GET", path, headers: [], body: Buffer.alloc(0) });
  let status = 0;
  const parts: Buffer[] = [];
  for await (const chunk of call as AsyncIterable<RelayHttpChunk>) {
    if (status === 0) status = chunk.status;
    parts.push(Buffer.from(chunk.data));
  }
  return { status, body: Buffer.concat(parts).toString("utf8") };
}

describe("a follower's view of the coordinator's snapshot", () => {
  it("serves the coordinator's snapshot under the follower's own key", async () => {
    expect((await fetch(`${follower.url}/dashboard/snapshot.json`)).status).toBe(401);
    const response = await fetch(`${follower.url}/dashboard/snapshot.json`, {
      headers: { authorization: `Bearer ${FOLLOWER_KEY}` },
    });
    expect(response.status).toBe(200);
    const snapshot = (await response.json()) as ClusterSnapshot;
    const expected = fixtureSnapshot(3);
    expect(snapshot.nodes).toEqual(JSON.parse(JSON.stringify(expected.nodes)));
    expect(snapshot.coordinatorId).toBe(expected.coordinatorId);
    // The follower's own figures stay its own on /metrics.
    const metrics = await fetch(`${follower.url}/metrics`, {
      headers: { authorization: `Bearer ${FOLLOWER_KEY}` },
    });
    expect(metrics.status).toBe(200);
  });

  it("lets a relay read the snapshot and nothing else outside /v1; a forged secret gets 401", async () => {
    expect((await relayGet("/dashboard/snapshot.json")).status).toBe(200);
    expect((await relayGet("/dashboard/%73napshot.json")).status).toBe(200);
    for (const path of ["/", "/metrics", "/%6detrics"]) {
      const reply = await relayGet(path);
      expect(reply.status, `${path}: ${reply.body}`).toBe(401);
    }
    // A path no route serves gets its 404 and nothing else (the WebSocket's path is no HTTP route).
    for (const path of ["/dashboard/live", "/no/such/route"])
      expect((await relayGet(path)).status, path).toBe(404);
    const forged = await fetch(`${coordinator.url}/dashboard/snapshot.json`, {
      headers: { "x-studio-cluster-relay": "forged", "x-studio-cluster-forwarded": "1" },
    });
    expect(forged.status).toBe(401);
    expect(((await forged.json()) as ApiErrorBody).error.message).toMatch(
      /reserved for this node's own agent/,
    );
  });

  it("answers 503 naming the coordinator when it cannot be reached", async () => {
    // The coordinator's API gone, its agent still up: every relay fails, as when the coordinator stops serving.
    await coordinator.close();
    coordinatorClosed = true;
    const response = await fetch(`${follower.url}/dashboard/snapshot.json`, {
      headers: { authorization: `Bearer ${FOLLOWER_KEY}` },
    });
    expect(response.status).toBe(503);
    const { error } = (await response.json()) as ApiErrorBody;
    expect(error.code).toBe("cluster_not_ready");
    expect(error.message).toContain(`the coordinator ${agent.relay.label} cannot be reached`);
  });
});
