// Faults at the API over a real 2-stage cluster: 200 clients that disconnect mid-stream leave no sequence and
// no KV byte behind on any stage; a per-request timeout ends a stream with a terminal "timeout" event; closing
// the server drains: new requests get 503, short streams finish, long ones end with a terminal failure event.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiServer, startApiServer } from "../../api/server.js";
import type { NodeStatus } from "../../common/wire/types.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";
import { Rng } from "../helpers/seeded-rng.js";

let cluster: ApiCluster;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 2, contextWindow: 8192 });
});
afterAll(async () => {
  await cluster?.stop();
});

function post(base: string, path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(`${base}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${cluster.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

const held = (statuses: NodeStatus[]) => statuses.map((s) => [s.sequences, s.kv_bytes]);

/** Polls the stages (their status comes once a second) until `ok`, or throws with the last figures. */
async function waitForStages(ok: (s: NodeStatus[]) => boolean, problem: string): Promise<NodeStatus[]> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const statuses = await cluster.stageStatuses();
    if (ok(statuses)) return statuses;
    if (Date.now() > deadline) throw new Error(`${problem}: ${JSON.stringify(held(statuses))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const streamBody = (path: string, maxTokens: number, text: string) =>
  path === "/chat/completions"
    ? { messages: [{ role: "user", content: text }], max_tokens: maxTokens, stream: true }
    : path === "/responses"
      ? { input: text, max_output_tokens: maxTokens, stream: true }
      : { prompt: text, max_tokens: maxTokens, stream: true };

/** Opens a stream, reads `events` SSE events (0: none, just the headers), then aborts the connection. */
async function disconnectAfter(path: string, events: number, text: string): Promise<void> {
  const controller = new AbortController();
  try {
    const response = await post(cluster.baseUrl, path, streamBody(path, 2000, text), controller.signal);
    if (response.status !== 200)
      throw new Error(`${path}: status ${response.status}: ${await response.text()}`);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let seen = "";
    while ((seen.match(/\n\n/g) ?? []).length < events) {
      const chunk = await reader.read();
      if (chunk.done) throw new Error(`${path}: the stream ended before the client disconnected`);
      seen += decoder.decode(chunk.value, { stream: true });
    }
  } finally {
    controller.abort();
  }
}

describe("client disconnects", () => {
  it("200 clients that disconnect mid-stream leave KV bytes and sequence counts where they started", async () => {
    const before = await waitForStages(
      (s) => s.every((x) => x.sequences === 0),
      "stages busy before the test",
    );
    const rng = new Rng(0xd15c_0008);
    const paths = ["/chat/completions", "/responses", "/completions"];
    const clients = Array.from({ length: 200 }, (_, i) => ({
      path: rng.pick(paths),
      events: rng.int(8),
      text: `story ${i}: ${"once upon a time ".repeat(1 + rng.int(20))}`,
    }));
    const started = performance.now();
    let peak = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, cluster.scheduler.inFlight);
    }, 10);
    try {
      // Waves of 20 at once, well under the scheduler's limit of 64.
      for (let i = 0; i < clients.length; i += 20)
        await Promise.all(clients.slice(i, i + 20).map((c) => disconnectAfter(c.path, c.events, c.text)));
    } finally {
      clearInterval(sampler);
    }
    expect(peak).toBeGreaterThan(1);
    const after = await waitForStages(
      (s) => s.every((x, i) => x.sequences === before[i].sequences && x.kv_bytes === before[i].kv_bytes),
      "KV still held after 200 disconnects",
    );
    const settledMs = performance.now() - started;
    expect(cluster.scheduler.inFlight).toBe(0);
    expect(cluster.server.requests.figures().inFlight).toEqual([]);
    console.log(
      `200 disconnecting clients: stages ${JSON.stringify(held(before))} before, ${JSON.stringify(held(after))} after, ` +
        `${(settledMs / 1000).toFixed(1)} s in all, up to ${peak} sequences in flight`,
    );
  }, 180_000);
});

async function startServer(options: { requestTimeoutMs?: number }): Promise<ApiServer> {
  return startApiServer(
    {
      generator: () => cluster.scheduler,
      modelDir: cluster.modelDir,
      modelId: cluster.modelId,
      health: () => ({}),
    },
    { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey, ...options },
  );
}

/** Reads an SSE response until `n` events arrived; returns the reader to finish with readRest. */
async function firstEvents(response: Response, n: number) {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  while ((text.match(/\n\n/g) ?? []).length < n) {
    const chunk = await reader.read();
    if (chunk.done) break;
    text += decoder.decode(chunk.value, { stream: true });
  }
  return {
    async rest() {
      for (let c = await reader.read(); !c.done; c = await reader.read())
        text += decoder.decode(c.value, { stream: true });
      return readSse(new Response(text));
    },
  };
}

describe("per-request timeout", () => {
  it("a request that runs past the server's limit ends with a terminal timeout event and frees its KV", async () => {
    const server = await startServer({ requestTimeoutMs: 700 });
    try {
      const started = performance.now();
      const response = await post(`${server.url}/v1`, "/responses", streamBody("/responses", 3000, "go on"));
      const events = await (await firstEvents(response, 0)).rest();
      const elapsed = performance.now() - started;
      const last = events[events.length - 1];
      expect(last.event).toBe("response.failed");
      const failed = JSON.parse(last.data) as { response: { error: { code: string; message: string } } };
      expect(failed.response.error.code).toBe("timeout");
      expect(failed.response.error.message).toMatch(/longer than the server's limit of 700 ms/);
      expect(elapsed).toBeLessThan(5000);
      console.log(`request timeout 700 ms: terminal event after ${elapsed.toFixed(0)} ms`);
    } finally {
      await server.close();
    }
    await waitForStages(
      (s) => s.every((x) => x.sequences === 0 && x.kv_bytes === 0),
      "KV held after timeout",
    );
  });
});

describe("shutdown drains the API", () => {
  it("new requests get 503, short streams finish, long ones end with a terminal failure event", async () => {
    const server = await startServer({});
    const base = `${server.url}/v1`;
    const long = await Promise.all(
      ["/chat/completions", "/responses", "/completions"].map(async (path) => ({
        path,
        // Long enough to outlast the grace period even on a quiet machine (3000 tokens once finished in it).
        stream: await firstEvents(await post(base, path, streamBody(path, 7500, "a long story")), 3),
      })),
    );
    const short = await post(base, "/responses", streamBody("/responses", 3, "hi"));
    const closing = server.close({ graceMs: 1500 });
    await new Promise((r) => setTimeout(r, 50));
    const refused = await post(base, "/chat/completions", streamBody("/chat/completions", 3, "late"));
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/shutting down/);
    const shortEvents = await (await firstEvents(short, 0)).rest();
    expect(shortEvents[shortEvents.length - 1].event).toBe("response.incomplete");
    for (const { path, stream } of long) {
      const events = await stream.rest();
      const last = events[events.length - 1];
      if (path === "/responses") {
        expect(last.event).toBe("response.failed");
        expect(JSON.parse(last.data).response.error).toMatchObject({ code: "cluster_not_ready" });
        continue;
      }
      // The chat APIs: an error chunk, then [DONE].
      expect(last.data).toBe("[DONE]");
      const error = JSON.parse(events[events.length - 2].data) as {
        error: { code: string; message: string };
      };
      expect(error.error.code).toBe("cluster_not_ready");
      expect(error.error.message).toMatch(/shutting down/);
    }
    await closing;
    await waitForStages((s) => s.every((x) => x.sequences === 0 && x.kv_bytes === 0), "KV held after drain");
  });
});
