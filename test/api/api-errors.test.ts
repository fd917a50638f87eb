// Failure paths of the HTTP API over a real 2-stage cluster serving the tiny model: auth, unknown model, bad
// bodies, context overflow (OpenAI's exact text), not ready, overloaded, client disconnect (KV freed on every
// stage), stop strings, forwarding from a non-coordinator node, and the loopback rule.
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiServer } from "../../api/server.js";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { fromChatCompletions } from "../../chat/conversation.js";
import type { CoordinatorRelay } from "../../common/wire/http-relay.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";
import { type RelayAgent, startRelayAgent } from "../helpers/relay-agent.js";

const CONTEXT = 2048;
let cluster: ApiCluster;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 2, contextWindow: CONTEXT });
});
afterAll(async () => {
  await cluster?.stop();
});

type Json = Record<string, unknown>;

function post(
  path: string,
  body: unknown,
  opts: { key?: string; base?: string; signal?: AbortSignal } = {},
): Promise<Response> {
  return fetch(`${opts.base ?? cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${opts.key ?? cluster.apiKey}`, "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: opts.signal,
  });
}

async function errorOf(
  response: Response,
): Promise<{ message: string; type: string; code: string | null; param: string | null }> {
  const body = (await response.json()) as {
    error: { message: string; type: string; code: string | null; param: string | null };
  };
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  return body.error;
}

const HELLO = [{ role: "user", content: "hello" }];
const chat = (extra: Json = {}) => ({
  model: cluster.modelId,
  messages: [{ role: "user", content: "hello" }],
  ...extra,
});

describe("auth and routing errors", () => {
  it("401 in OpenAI's shape for a wrong or missing key", async () => {
    const wrong = await post("/chat/completions", chat(), { key: "nope" });
    expect(wrong.status).toBe(401);
    expect(await errorOf(wrong)).toMatchObject({ code: "invalid_api_key", type: "authentication_error" });
    const missing = await fetch(`${cluster.baseUrl}/models`);
    expect(missing.status).toBe(401);
  });

  it("404 model_not_found for another model's name", async () => {
    const response = await post("/chat/completions", chat({ model: "gpt-4o" }));
    expect(response.status).toBe(404);
    expect(await errorOf(response)).toMatchObject({ code: "model_not_found", param: "model" });
  });
});

describe("bad request bodies get 400 naming the field", () => {
  const cases: Array<[string, string, unknown, RegExp, string | null]> = [
    ["no messages", "/chat/completions", { model: "m" }, /messages/, "messages"],
    ["messages not an array", "/chat/completions", { messages: "hi" }, /messages/, "messages"],
    [
      "unknown role",
      "/chat/completions",
      { messages: [{ role: "robot", content: "x" }] },
      /unknown role "robot"/,
      "messages[0].role",
    ],
    [
      "temperature out of range",
      "/chat/completions",
      { messages: HELLO, temperature: 7 },
      /temperature/,
      "temperature",
    ],
    [
      "max_tokens not positive",
      "/chat/completions",
      { messages: HELLO, max_tokens: 0 },
      /max_tokens/,
      "max_tokens",
    ],
    ["no input", "/responses", { model: "m" }, /input/, "input"],
    [
      "an image",
      "/responses",
      {
        input: [{ role: "user", content: [{ type: "input_image", image_url: "data:image/png;base64,AA" }] }],
      },
      /text-only/,
      "input[0].content[0]",
    ],
    [
      "previous_response_id",
      "/responses",
      { input: "hi", previous_response_id: "resp_1" },
      /previous_response_id/,
      "previous_response_id",
    ],
    [
      "unknown item type",
      "/responses",
      { input: [{ type: "computer_call" }] },
      /unknown input item type/,
      "input[0].type",
    ],
    ["invalid JSON", "/chat/completions", "{not json", /invalid request/, null],
  ];
  for (const [what, path, body, message, param] of cases) {
    it(what, async () => {
      const response = await post(path, body);
      expect(response.status).toBe(400);
      const error = await errorOf(response);
      expect(error.message).toMatch(message);
      expect(error.type).toBe("invalid_request_error");
      if (param !== null) expect(error.param).toBe(param);
    });
  }

  const promptTokens = (content: string) => {
    const formatter = ChatFormatter.forModelDir(cluster.modelDir);
    const messages = [{ role: "user", content }];
    return formatter.encode(formatter.render(fromChatCompletions(messages, undefined))).length;
  };

  it("400 context_length_exceeded with OpenAI's exact text", async () => {
    // Between the window and twice it: counted exactly.
    const perWord = promptTokens("word ".repeat(101)) - promptTokens("word ");
    const messages = [
      { role: "user", content: "word ".repeat(Math.ceil((1.5 * CONTEXT) / (perWord / 100))) },
    ];
    const tokens = promptTokens(messages[0].content);
    expect(tokens).toBeGreaterThan(CONTEXT);
    expect(tokens).toBeLessThan(2 * CONTEXT);
    const response = await post("/chat/completions", { model: cluster.modelId, messages, stream: true });
    expect(response.status).toBe(400);
    const error = await errorOf(response);
    expect(error.code).toBe("context_length_exceeded");
    expect(error.message).toBe(
      `This model's maximum context length is ${CONTEXT} tokens. However, your messages resulted in ${tokens} tokens.`,
    );
  });

  it('400 context_length_exceeded saying "more than" for a prompt past twice the window', async () => {
    const content = "word ".repeat(40_000);
    const response = await post("/chat/completions", {
      model: cluster.modelId,
      messages: [{ role: "user", content }],
    });
    expect(response.status).toBe(400);
    const error = await errorOf(response);
    expect(error.code).toBe("context_length_exceeded");
    const moreThan = Number(/resulted in more than (\d+) tokens\.$/.exec(String(error.message))?.[1]);
    expect(moreThan, String(error.message)).toBeGreaterThan(2 * CONTEXT);
    expect(moreThan).toBeLessThan(promptTokens(content));
  });
});

async function waitForStages(
  ok: (s: { sequences: number; kv_bytes: number }) => boolean,
  problem: string,
): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const statuses = await cluster.stageStatuses();
    if (statuses.every(ok)) return;
    if (Date.now() > deadline)
      throw new Error(`${problem}: ${JSON.stringify(statuses.map((s) => [s.sequences, s.kv_bytes]))}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("what the cluster cannot honour is refused, naming the field, not ignored", () => {
  const cases: Array<[string, Json, string]> = [
    ["/chat/completions", { messages: HELLO, n: 2 }, "n"],
    ["/chat/completions", { messages: HELLO, logprobs: true }, "logprobs"],
    ["/chat/completions", { messages: HELLO, logprobs: true, top_logprobs: 3 }, "logprobs"],
    ["/chat/completions", { messages: HELLO, top_logprobs: 3 }, "top_logprobs"],
    ["/completions", { prompt: "hi", n: 3 }, "n"],
    ["/completions", { prompt: "hi", best_of: 2 }, "best_of"],
    ["/completions", { prompt: "hi", logprobs: 2 }, "logprobs"],
    ["/responses", { input: "hi", include: ["message.output_text.logprobs"] }, "include"],
    ["/responses", { input: "hi", top_logprobs: 2 }, "top_logprobs"],
  ];
  for (const [path, body, param] of cases)
    it(`${path} ${JSON.stringify(body).slice(0, 80)} -> 400 param ${param}`, async () => {
      const response = await post(path, { ...body, stream: true });
      expect(response.status).toBe(400);
      const error = await errorOf(response);
      expect(error).toMatchObject({ type: "invalid_request_error", param });
      expect(error.message).toMatch(/not supported/);
    });

  it("the values that ask for nothing more pass", async () => {
    const c = await post(
      "/chat/completions",
      chat({ n: 1, logprobs: false, top_logprobs: null, max_tokens: 1 }),
    );
    expect(c.status).toBe(200);
    const r = await post("/responses", {
      input: "hi",
      include: ["reasoning.encrypted_content"],
      max_output_tokens: 1,
    });
    expect(r.status).toBe(200);
  });
});

describe("generation control", () => {
  it("stop strings end the completion before the stop text", async () => {
    const plain = (await (
      await post("/completions", { prompt: "the quick brown fox", max_tokens: 40 })
    ).json()) as {
      choices: Array<{ text: string; finish_reason: string }>;
    };
    const text = plain.choices[0].text;
    expect(text.length).toBeGreaterThan(12);
    const stop = text.slice(8, 12);
    const stopped = (await (
      await post("/completions", { prompt: "the quick brown fox", max_tokens: 40, stop: [stop] })
    ).json()) as {
      choices: Array<{ text: string; finish_reason: string }>;
    };
    expect(stopped.choices[0].text).toBe(text.slice(0, text.indexOf(stop)));
    expect(stopped.choices[0].finish_reason).toBe("stop");
  });

  it("a client that disconnects cancels the sequence and frees its KV on every stage", async () => {
    const controller = new AbortController();
    const response = await post(
      "/completions",
      { prompt: "tell me a long story", max_tokens: 1500, stream: true },
      { signal: controller.signal },
    );
    const reader = response.body!.getReader();
    let seen = "";
    while ((seen.match(/data: /g) ?? []).length < 5)
      seen += new TextDecoder().decode((await reader.read()).value);
    try {
      // The sequence is live on every stage (statuses come once a second, so wait for a fresh one).
      await waitForStages(
        (s) => s.sequences === 1 && s.kv_bytes > 0,
        "the sequence never showed on every stage",
      );
      expect(cluster.scheduler.inFlight).toBe(1);
    } finally {
      controller.abort();
    }
    await waitForStages((s) => s.sequences === 0 && s.kv_bytes === 0, "KV still held after disconnect");
    expect(cluster.scheduler.inFlight).toBe(0);
  });

  it("streams plain completions with a usage chunk and [DONE]", async () => {
    const events = await readSse(
      await post("/completions", { prompt: "hello", max_tokens: 5, stream: true }),
    );
    expect(events[events.length - 1].data).toBe("[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data) as { choices: Json[]; usage?: Json });
    expect(chunks[chunks.length - 2].choices[0].finish_reason).toBe("length");
    expect(chunks[chunks.length - 1].usage).toMatchObject({
      completion_tokens: 5,
      total_tokens: expect.any(Number),
    });
    // A finished request holds nothing anywhere.
    await waitForStages(
      (s) => s.sequences === 0 && s.kv_bytes === 0,
      "KV still held after a finished request",
    );
    expect(cluster.scheduler.inFlight).toBe(0);
  });
});

/** A real node agent of this process relaying to the cluster's API (RelayHttp), as a coordinator's does. */
function relayAgent() {
  return startRelayAgent({
    apiUrl: cluster.server.url,
    relayToken: cluster.relayToken,
    clusterKey: cluster.clusterKey,
    modelDir: cluster.modelDir,
  });
}

describe("cluster states and other nodes", () => {
  it("503 with retry-after while the cluster is not ready", async () => {
    const server = await startApiServer(
      {
        generator: () => undefined,
        modelDir: cluster.modelDir,
        modelId: "m",
        health: () => ({ state: "loading" }),
      },
      { host: "127.0.0.1", port: 0 },
    );
    try {
      const response = await post("/chat/completions", chat({ model: "m" }), { base: `${server.url}/v1` });
      expect(response.status).toBe(503);
      expect(response.headers.get("retry-after")).toBeTruthy();
      expect((await errorOf(response)).code).toBe("cluster_not_ready");
      const health = await fetch(`${server.url}/health`);
      expect(health.status).toBe(503);
      expect(await health.json()).toEqual({ state: "loading" });
    } finally {
      await server.close();
    }
  });

  it("a node that is not the coordinator forwards requests, streams included", async () => {
    const agent = await relayAgent();
    const server = await startApiServer(
      {
        generator: () => undefined,
        modelDir: cluster.modelDir,
        modelId: cluster.modelId,
        health: () => ({}),
        relay: () => agent.relay,
      },
      { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey },
    );
    try {
      const base = `${server.url}/v1`;
      const events = await readSse(
        await post("/chat/completions", chat({ stream: true, max_tokens: 4 }), { base }),
      );
      expect(events[events.length - 1].data).toBe("[DONE]");
      expect(JSON.parse(events[0].data).choices[0].delta.role).toBe("assistant");
      const bad = await post("/chat/completions", chat({ model: "other" }), { base });
      expect(bad.status).toBe(404);
    } finally {
      await server.close();
      await agent.close();
    }
  });

  it("a request is forwarded at most once (two nodes that each point at the other answer 503)", async () => {
    // Each node with its agent (relaying to its own API), each taking the other for the coordinator.
    const ctx = (target: () => CoordinatorRelay | undefined) => ({
      generator: () => undefined,
      modelDir: cluster.modelDir,
      modelId: cluster.modelId,
      health: () => ({}),
      relay: target,
    });
    const agents: RelayAgent[] = [];
    const tokens = [randomBytes(32).toString("base64url"), randomBytes(32).toString("base64url")];
    const a = await startApiServer(
      ctx(() => agents[1]?.relay),
      { host: "127.0.0.1", port: 0, relayToken: tokens[0] },
    );
    const b = await startApiServer(
      ctx(() => agents[0]?.relay),
      { host: "127.0.0.1", port: 0, relayToken: tokens[1] },
    );
    const common = { clusterKey: cluster.clusterKey, modelDir: cluster.modelDir };
    agents.push(await startRelayAgent({ ...common, apiUrl: a.url, relayToken: tokens[0] }));
    agents.push(await startRelayAgent({ ...common, apiUrl: b.url, relayToken: tokens[1] }));
    try {
      const response = await post("/chat/completions", chat(), { base: `${a.url}/v1` });
      expect(response.status).toBe(503);
      expect((await errorOf(response)).code).toBe("cluster_not_ready");
    } finally {
      await Promise.all([a.close(), b.close(), ...agents.map((x) => x.close())]);
    }
  });

  it("429 overloaded with retry-after when the scheduler and its queue are full", async () => {
    const small = new Scheduler({ contextWindow: CONTEXT, maxSequences: 1, maxQueue: 0 });
    small.attach(cluster.pipeline);
    const server = await startApiServer(
      {
        generator: () => small,
        modelDir: cluster.modelDir,
        modelId: cluster.modelId,
        health: () => ({}),
      },
      { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey },
    );
    const controller = new AbortController();
    try {
      const base = `${server.url}/v1`;
      const first = await post(
        "/completions",
        { prompt: "a", max_tokens: 1500, stream: true },
        { base, signal: controller.signal },
      );
      expect(first.status).toBe(200);
      const second = await post("/completions", { prompt: "b", max_tokens: 4 }, { base });
      expect(second.status).toBe(429);
      expect(second.headers.get("retry-after")).toBeTruthy();
      expect((await errorOf(second)).code).toBe("overloaded");
    } finally {
      controller.abort();
      await server.close();
      cluster.scheduler.attach(cluster.pipeline); // hand the results back to the shared scheduler
    }
  });

  it("refuses to listen beyond loopback without an API key", async () => {
    await expect(
      startApiServer(
        {
          generator: () => undefined,
          modelDir: cluster.modelDir,
          modelId: "m",
          health: () => ({}),
        },
        { host: "0.0.0.0", port: 0 },
      ),
    ).rejects.toThrow(/refusing to listen on 0\.0\.0\.0 without an API key/);
  });

  // Last: it takes a stage down for good.
  it("a stage lost mid-stream ends the Responses stream with response.failed code node_lost", async () => {
    const response = await post("/responses", {
      input: "tell me a long story",
      max_output_tokens: 1500,
      stream: true,
    });
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while ((text.match(/\ndata: /g) ?? []).length < 6)
      text += decoder.decode((await reader.read()).value, { stream: true });
    cluster.agents[1].child.kill("SIGKILL");
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read())
      text += decoder.decode(chunk.value, { stream: true });
    const events = await readSse(new Response(text));
    const last = events[events.length - 1];
    expect(last.event).toBe("response.failed");
    const failed = JSON.parse(last.data) as {
      response: { status: string; error: { code: string; message: string } };
    };
    expect(failed.response.status).toBe("failed");
    expect(failed.response.error.code).toBe("node_lost");
    expect(failed.response.error.message).toMatch(/api-stage-1/);
  });
});
