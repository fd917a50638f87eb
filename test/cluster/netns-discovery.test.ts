// Three machines simulated by three network namespaces on one bridge (10.77.0.0/24 exists only inside them):
// `cluster up` in each, with NO --peer, must find the others over Bonjour multicast alone, elect one
// coordinator, plan three stages and generate through the HTTP API (directly and forwarded by another node).
// Every API listens on its namespace's loopback only (the default --api-host): a follower relays over the gRPC
// plane, the one way between namespaces it has.
// Needs root and iproute2; skips with the reason otherwise. Namespaces are removed in afterAll whatever happens.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, cliEntry, runCli } from "../helpers/cluster-up.js";
import { ip, must, netnsSkipReason } from "../helpers/netns.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const tag = randomBytes(3).toString("hex");
const bridgeNs = `sc${tag}br`;
const nodeNs = [1, 2, 3].map((i) => `sc${tag}n${i}`);
const address = (i: number) => `10.77.0.${i + 1}`;
const API_KEY = "netns-test-api-key";

const reason = netnsSkipReason();
if (reason) console.warn(`skipping netns discovery test: ${reason}`);

function setUpNetwork(): void {
  for (const ns of [bridgeNs, ...nodeNs]) must(["netns", "add", ns]);
  must(["-n", bridgeNs, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
  must(["-n", bridgeNs, "link", "set", "br0", "up"]);
  nodeNs.forEach((ns, i) => {
    const hostSide = `v${tag}${i}`;
    must(["link", "add", hostSide, "netns", bridgeNs, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    must(["-n", bridgeNs, "link", "set", hostSide, "master", "br0"]);
    must(["-n", bridgeNs, "link", "set", hostSide, "up"]);
    must(["-n", ns, "link", "set", "lo", "up"]);
    must(["-n", ns, "addr", "add", `${address(i)}/24`, "dev", "eth0"]);
    must(["-n", ns, "link", "set", "eth0", "up"]);
    // No default route in the namespace: mDNS needs to know where multicast goes.
    must(["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
  });
}

function tearDownNetwork(): void {
  for (const ns of [...nodeNs, bridgeNs]) ip(["netns", "delete", ns]);
}

/** Runs a small script with node inside a namespace and returns its stdout (JSON by convention). */
function nsNode(ns: string, script: string): string {
  const r = spawnSync("ip", ["netns", "exec", ns, process.execPath, "--input-type=module", "-e", script], {
    encoding: "utf8",
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`node in ${ns} failed: ${r.stderr}`);
  return r.stdout;
}

/** Each node's API, on its own namespace's loopback. */
const API_URL = "http://127.0.0.1:8080";

function health(i: number): ClusterHealth | undefined {
  const url = `${API_URL}/health`;
  const out = nsNode(
    nodeNs[i],
    `const r = await fetch(${JSON.stringify(url)}, { headers: { authorization: "Bearer ${API_KEY}" } }).catch(() => undefined);` +
      `console.log(r ? await r.text() : "null");`,
  );
  return JSON.parse(out) ?? undefined;
}

interface ChatResult {
  status: number;
  text: string;
  relayedFrom: string | null;
  /** Set when the API could not be reached at all. */
  error?: string;
}

function chat(ns: string, apiUrl: string, prompt: string): ChatResult {
  const body = { messages: [{ role: "user", content: prompt }], max_tokens: 8, temperature: 0 };
  const out = nsNode(
    ns,
    `const r = await fetch(${JSON.stringify(`${apiUrl}/v1/chat/completions`)}, { method: "POST", ` +
      `headers: { "content-type": "application/json", authorization: "Bearer ${API_KEY}" }, ` +
      `body: ${JSON.stringify(JSON.stringify(body))}, signal: AbortSignal.timeout(5000) }).catch((e) => e);` +
      `if (r instanceof Error) { console.log(JSON.stringify({ status: 0, text: "", relayedFrom: null, error: String(r.cause ?? r) })); process.exit(0); }` +
      `const b = await r.json(); const m = b.choices?.[0]?.message ?? {};` +
      `console.log(JSON.stringify({ status: r.status, text: (m.reasoning_content ?? "") + "|" + (m.content ?? ""), ` +
      `relayedFrom: r.headers.get("x-studio-cluster-relayed-from"), body: b }));`,
  );
  return JSON.parse(out) as ChatResult;
}

describe.skipIf(reason !== undefined)("Bonjour discovery across three network namespaces", () => {
  const procs: CliProcess[] = [];
  const homes: string[] = [];

  beforeAll(async () => {
    cliEntry(); // fails early with a clear message when dist/ is missing
    setUpNetwork();
    const modelDir = await ensureModel("tiny", "tiny");
    const key = generateClusterKey();
    nodeNs.forEach((ns, i) => {
      const home = mkdtempSync(join(tmpdir(), `netns-node${i + 1}-`));
      homes.push(home);
      const args = ["up", "--model", modelDir, "--key", key, "--name", `node${i + 1}`, "--port", "7100"];
      // The default --api-host (127.0.0.1): nothing outside the namespace reaches the API.
      args.push("--api-port", "8080", "--api-key", API_KEY, "--threads", "1");
      // Equal machines: a measured bandwidth on two busy cores is noise, and the split should not depend on it.
      args.push("--memory-bandwidth", "50");
      procs.push(runCli(args, { STUDIO_CLUSTER_HOME: home }, ["ip", "netns", "exec", ns]));
    });
  });

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop("SIGKILL")));
    tearDownNetwork();
    for (const home of homes) rmSync(home, { recursive: true, force: true });
  });

  it("find each other without --peer, elect one coordinator, plan three stages and generate", async () => {
    let views: Array<ClusterHealth | undefined> = [];
    const started = Date.now();
    const agreed = () =>
      views.every((h) => h !== undefined && liveNodes(h).length === 3) &&
      new Set(views.map((h) => h?.coordinator?.id)).size === 1 &&
      views.some((h) => h?.state === "ready" && h.plan?.stages.length === 3);
    while (Date.now() - started < 60_000) {
      for (const p of procs)
        if (p.child.exitCode !== null)
          throw new Error(`a node exited:\n${procs.map((q) => q.output()).join("\n")}`);
      views = [0, 1, 2].map(health);
      if (agreed()) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect(
      agreed(),
      `views: ${JSON.stringify(views, null, 1)}\n${procs.map((p) => p.output()).join("\n")}`,
    ).toBe(true);
    const coordinatorId = views[0]!.coordinator!.id;
    const coordinatorIndex = views.findIndex((h) => h!.node.id === coordinatorId);
    const coordinator = views[coordinatorIndex]!;
    // Every member was found at its namespace address, by Bonjour alone.
    expect(
      liveNodes(coordinator)
        .map((m) => m.address.split(":")[0])
        .sort(),
    ).toEqual([0, 1, 2].map(address));
    expect(coordinatorId).toBe([...liveNodes(coordinator).map((m) => m.id)].sort()[0]);
    const stages = coordinator.plan!.stages;
    expect(stages.map((s) => [s.layerStart, s.layerEnd])).toEqual([
      [0, 2],
      [2, 4],
      [4, 6],
    ]);
    expect(new Set(stages.map((s) => s.nodeId)).size).toBe(3);
    for (const h of views) expect(h!.state).toBe(h!.node.id === coordinatorId ? "ready" : "following");

    const direct = chat(nodeNs[coordinatorIndex], API_URL, "Three machines, one model.");
    expect(direct.status, JSON.stringify(direct)).toBe(200);
    expect(direct.relayedFrom).toBeNull();
    const followerIndex = (coordinatorIndex + 1) % 3;
    // The coordinator's API is out of the follower's reach: only the gRPC plane joins them.
    const unreachable = chat(nodeNs[followerIndex], `http://${address(coordinatorIndex)}:8080`, "x");
    expect(unreachable.status, JSON.stringify(unreachable)).toBe(0);
    const forwarded = chat(nodeNs[followerIndex], API_URL, "Three machines, one model.");
    expect(forwarded.status, JSON.stringify(forwarded)).toBe(200);
    expect(forwarded.text).toBe(direct.text);
    expect(forwarded.relayedFrom).toContain(`${coordinatorId}) at ${address(coordinatorIndex)}:7100`);
  });
});
