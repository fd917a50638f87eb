// Faults on the Anthropic route over a real 2-stage cluster serving the tiny model (long random replies),
// through @anthropic-ai/sdk: a run past the server's time limit ends its stream with an `error` event of type
// timeout_error; a shutdown answers new requests 529 overloaded_error (the /v1 hook's 503 reshaped) and ends
// streams in flight with an overloaded_error event; a client that aborts frees its sequence on every stage.
import Anthropic, { type APIError } from "@anthropic-ai/sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiServer, startApiServer } from "../../api/server.js";
import type { NodeStatus } from "../../common/wire/types.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";

let cluster: ApiCluster;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 2, contextWindow: 8192 });
});
afterAll(async () => {
  await cluster?.stop();
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

function clientOf(server: ApiServer): Anthropic {
  return new Anthropic({ baseURL: server.url, apiKey: cluster.apiKey, maxRetries: 0 });
}

const long = (maxTokens: number) => ({
  model: cluster.modelId,
  max_tokens: maxTokens,
  messages: [{ role: "user" as const, content: "Tell a long story." }],
});

async function rejection(promise: Promise<unknown>): Promise<APIError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Anthropic.APIError);
  return err as APIError;
}

/** Polls the stages (their status comes once a second) until no sequence and no KV byte is held. */
async function stagesIdle(problem: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const statuses: NodeStatus[] = await cluster.stageStatuses();
    if (statuses.every((s) => s.sequences === 0 && s.kv_bytes === 0)) return;
    if (Date.now() > deadline)
      throw new Error(`${problem}: ${JSON.stringify(statuses.map((s) => [s.sequences, s.kv_bytes]))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Resolves once the stream delivered its first content delta. */
function firstDelta(stream: {
  on(event: "streamEvent", listener: (event: Anthropic.MessageStreamEvent) => void): unknown;
}): Promise<void> {
  return new Promise((resolve) => {
    stream.on("streamEvent", (event) => {
      if (event.type === "content_block_delta") resolve();
    });
  });
}

describe("faults on /v1/messages", () => {
  it("a run past the server's limit ends its stream with a timeout_error event and frees its KV", async () => {
    const server = await startServer({ requestTimeoutMs: 700 });
    try {
      const stream = clientOf(server).messages.stream(long(3000));
      const events: string[] = [];
      stream.on("streamEvent", (event) => events.push(event.type));
      const err = await rejection(stream.finalMessage());
      expect(events[0]).toBe("message_start");
      expect(events).toContain("content_block_delta");
      expect(events).not.toContain("message_stop");
      expect(err.error).toMatchObject({
        type: "error",
        error: {
          type: "timeout_error",
          message: expect.stringMatching(/longer than the server's limit of 700 ms/),
        },
      });
    } finally {
      await server.close();
    }
    await stagesIdle("KV held after the timeout");
  });

  it("a shutdown answers 529 overloaded_error and ends the streams in flight with an error event", async () => {
    const server = await startServer({});
    const client = clientOf(server);
    const inFlight = client.messages.stream(long(7500));
    const failed = rejection(inFlight.finalMessage());
    await firstDelta(inFlight);
    const closing = server.close({ graceMs: 300 });
    await new Promise((r) => setTimeout(r, 50));
    const refused = await rejection(client.messages.create(long(3)));
    expect(refused).toBeInstanceOf(Anthropic.OverloadedError);
    expect(refused.status).toBe(529);
    expect(refused.headers?.get("retry-after")).toBe("5");
    expect(refused.error).toMatchObject({
      type: "error",
      error: { type: "overloaded_error", message: expect.stringMatching(/shutting down/) },
    });
    const ended = await failed;
    expect(ended.error).toMatchObject({
      type: "error",
      error: { type: "overloaded_error", message: expect.stringMatching(/shutting down/) },
    });
    await closing;
    await stagesIdle("KV held after the drain");
  });

  it("a client that aborts its stream frees its sequence on every stage", async () => {
    const server = await startServer({});
    try {
      const stream = clientOf(server).messages.stream(long(3000));
      const done = stream.done().catch(() => undefined);
      await firstDelta(stream);
      stream.abort();
      await done;
      expect(stream.aborted).toBe(true);
      await stagesIdle("KV held after the client aborted");
      expect(cluster.scheduler.inFlight).toBe(0);
    } finally {
      await server.close();
    }
  });
});
