// A follower relaying streams when the coordinator dies: two real `cluster up` processes joined with --peer; two
// streams (Chat Completions and Responses) go through the follower's API, and the coordinator is killed (SIGKILL)
// once both are generating. Each stream must end with its API's terminal error event (and `[DONE]` on chat)
// within 5 s, never with a socket torn down mid-event. Both APIs listen on loopback only with one --api-key: the
// follower relays over the gRPC plane (RelayHttp), checking the client's key itself first (the relay carries
// none, and the coordinator takes it on the cluster key); a client that goes away cancels the coordinator's
// generation.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { RELAYED_FROM_HEADER } from "../../api/forward.js";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "follower-relay-"));
const API_KEY = "follower-relay-api-key";
const running: CliProcess[] = [];

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(home, { recursive: true, force: true });
});

interface StreamEnd {
  events: string[];
  /** ms from `killedAt()` to the end of the response. */
  endedAfterKillMs: number;
  error?: string;
}

/** Reads an SSE response to its end; resolves `started` at the first delta. */
async function readStream(
  response: Response,
  started: () => void,
  killedAt: () => number,
): Promise<StreamEnd> {
  const events: string[] = [];
  let buffer = "";
  const decoder = new TextDecoder();
  let sawDelta = false;
  try {
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let cut = buffer.indexOf("\n\n");
      while (cut >= 0) {
        events.push(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (!sawDelta && /delta/.test(events.at(-1) ?? "")) {
          sawDelta = true;
          started();
        }
        cut = buffer.indexOf("\n\n");
      }
    }
  } catch (err) {
    return { events, endedAfterKillMs: Date.now() - killedAt(), error: (err as Error).message };
  }
  if (buffer.trim()) events.push(`(partial) ${buffer}`);
  return { events, endedAfterKillMs: Date.now() - killedAt() };
}

/** Waits (10 s at most) until the coordinator's dashboard lists a cancelled request; fails with both logs. */
async function waitForCancelled(url: string, procs: CliProcess[]): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = "";
  while (Date.now() < deadline) {
    const r = await fetch(`${url}/dashboard/snapshot.json`, {
      headers: { authorization: `Bearer ${API_KEY}` },
    });
    last = await r.text();
    const snapshot = JSON.parse(last) as { recent?: Array<{ status: string }> };
    if (snapshot.recent?.some((q) => q.status === "cancelled")) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(
    `no cancelled request on the coordinator: ${last.slice(0, 1500)}\n${procs.map((p) => p.output()).join("\n")}`,
  );
}

describe("a follower relaying streams", () => {
  it("ends each with the terminal error event (and [DONE] on chat) when the coordinator dies", async () => {
    const modelDir = await ensureModel("tiny", "tiny");
    const [grpcA, grpcB, apiA, apiB] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const common = ["--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
    common.push("--memory-bandwidth", "50", "--api-key", API_KEY);
    const env = { STUDIO_CLUSTER_HOME: home };
    const a = runCli(["up", ...common, "--name", "ra", "--port", `${grpcA}`, "--api-port", `${apiA}`], env);
    const bArgs = ["up", ...common, "--name", "rb", "--port", `${grpcB}`, "--api-port", `${apiB}`];
    const b = runCli([...bArgs, "--peer", `127.0.0.1:${grpcA}`], env);
    running.push(a, b);
    const urls = [`http://127.0.0.1:${apiA}`, `http://127.0.0.1:${apiB}`];
    const view = await waitForHealth(
      urls[0],
      (h) =>
        liveNodes(h).length === 2 &&
        h.coordinator?.id ===
          liveNodes(h)
            .map((m) => m.id)
            .sort()[0],
      "two members",
      [a, b],
    );
    const coordinator = view.coordinator!.id === view.node.id ? 0 : 1;
    const follower = 1 - coordinator;
    await waitForHealth(urls[coordinator], (h) => h.state === "ready", "the plan", [a, b]);
    // The follower must see the same coordinator (on a loaded machine its view can lag a's).
    await waitForHealth(
      urls[follower],
      (h) => h.ok === true && h.coordinator?.id === view.coordinator!.id,
      "the follower to serve through the coordinator",
      [a, b],
    );

    // Stop tokens banned: each stream runs its whole budget, long enough to be cut off.
    const bias = Object.fromEntries(
      ChatFormatter.forModelDir(modelDir).stopTokenIds.map((id) => [String(id), -100]),
    );
    const keyed = { authorization: `Bearer ${API_KEY}` };
    // The follower checks the key before relaying: without it, 401 from the follower itself.
    const unkeyed = await fetch(`${urls[follower]}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 2 }),
    });
    expect(unkeyed.status).toBe(401);
    expect(unkeyed.headers.get(RELAYED_FROM_HEADER)).toBeNull();

    // A client that goes away mid-stream: the relay's cancel reaches the coordinator's generation.
    const abandoned = new AbortController();
    const abandonedRes = await fetch(`${urls[follower]}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...keyed },
      body: JSON.stringify({
        messages: [{ role: "user", content: "abandon me" }],
        max_tokens: 4000,
        stream: true,
        logit_bias: bias,
      }),
      signal: abandoned.signal,
    });
    expect(abandonedRes.status).toBe(200);
    expect(abandonedRes.headers.get(RELAYED_FROM_HEADER)).toContain(
      `(${view.coordinator!.id}) at 127.0.0.1:`,
    );
    const reader = (abandonedRes.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    abandoned.abort();
    await waitForCancelled(urls[coordinator], [a, b]);

    const post = (path: string, body: object) =>
      fetch(`${urls[follower]}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...keyed },
        body: JSON.stringify({ ...body, stream: true, logit_bias: bias }),
        signal: AbortSignal.timeout(60_000),
      });
    let killedAt = 0;
    let startedCount = 0;
    let bothStarted: () => void = () => {};
    const generating = new Promise<void>((r) => {
      bothStarted = r;
    });
    const onStart = () => {
      startedCount++;
      if (startedCount === 2) bothStarted();
    };
    const chat = post("/v1/chat/completions", {
      messages: [{ role: "user", content: "go on" }],
      max_tokens: 6500,
    });
    // Both must fit in one window's KV at once (8,192 positions on the tiny model, rounded up to blocks), or
    // admission holds the second until the first is done and the kill comes too late. The kill comes at the
    // second stream's first delta; under a loaded machine that can be seconds after the first began, so the
    // first is the long one (the tiny model decodes about a thousand tokens a second).
    const resp = post("/v1/responses", { input: "go on", max_output_tokens: 1200, logit_bias: undefined });
    const [chatRes, respRes] = await Promise.all([chat, resp]);
    expect([chatRes.status, respRes.status]).toEqual([200, 200]);
    // Both relayed, not served by the follower itself.
    for (const res of [chatRes, respRes]) expect(res.headers.get(RELAYED_FROM_HEADER)).toBeTruthy();
    const ends = Promise.all([
      readStream(chatRes, onStart, () => killedAt),
      readStream(respRes, onStart, () => killedAt),
    ]);
    // Each stream must still be generating when the coordinator dies; one that ended first fails here, with
    // what both nodes printed.
    const endedEarly = ends.then((e) => {
      throw new Error(
        `a stream ended before both generated: ${JSON.stringify(e).slice(0, 2000)}\n${a.output()}\n${b.output()}`,
      );
    });
    endedEarly.catch(() => {});
    await Promise.race([generating, endedEarly]);
    killedAt = Date.now();
    [a, b][coordinator].child.kill("SIGKILL");
    const [chatEnd, respEnd] = await ends;
    const show = (e: StreamEnd) =>
      `${JSON.stringify({ ...e, events: e.events.slice(-3) })}\n${a.output()}\n${b.output()}`;

    expect(chatEnd.error, show(chatEnd)).toBeUndefined();
    expect(chatEnd.endedAfterKillMs, show(chatEnd)).toBeLessThan(5000);
    expect(chatEnd.events.at(-1)).toBe("data: [DONE]");
    const chatError = JSON.parse(chatEnd.events.at(-2)!.slice("data: ".length)) as {
      error?: { code?: string };
    };
    expect(chatError.error?.code, show(chatEnd)).toBe("node_lost");
    expect(chatEnd.events.some((e) => e.startsWith("(partial)"))).toBe(false);

    expect(respEnd.error, show(respEnd)).toBeUndefined();
    expect(respEnd.endedAfterKillMs, show(respEnd)).toBeLessThan(5000);
    const last = respEnd.events.at(-1)!;
    expect(last.split("\n")[0], show(respEnd)).toBe("event: response.failed");
    const failed = JSON.parse(last.split("\n")[1].slice("data: ".length)) as {
      response: { id: string; status: string; error: { code: string } };
    };
    expect(failed.response.status).toBe("failed");
    expect(failed.response.error.code).toBe("node_lost");
    expect(failed.response.id).toMatch(/^resp_/);
  });
});
