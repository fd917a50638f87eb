// The official `@anthropic-ai/sdk` against the real API over a real cluster (2 node-agent processes, scheduler
// with a prefix cache, HTTP server) serving the scripted model, which answers every prompt with reasoning, text
// and two tool calls: POST /v1/messages streamed and not (thinking, text, tool_use blocks; the tool_result
// follow-up reads its prefix from the cache), count_tokens, stop_sequences, and Anthropic-shaped errors through
// the SDK's own error classes, with the key as x-api-key or as a Bearer token.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import Anthropic, { type APIError } from "@anthropic-ai/sdk";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiServer } from "../../api/server.js";
import { fromAnthropicMessages } from "../../chat/anthropic-messages.js";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { fromChatCompletions } from "../../chat/conversation.js";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";
import { startRelayAgent } from "../helpers/relay-agent.js";

const CONTEXT = 4096;
let cluster: ApiCluster;
let client: Anthropic;

const TOOLS: Anthropic.Tool[] = [
  {
    name: "get_weather",
    description: "Weather for a city",
    input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
  {
    name: "get_time",
    description: "Time in a zone",
    input_schema: {
      type: "object",
      properties: { zone: { type: "string" }, utc_offset: { type: "integer" } },
      required: ["zone"],
    },
  },
];
const EXPECTED_CALLS = SCRIPTED_REPLY.toolCalls.map((c) => ({ name: c.name, input: c.arguments }));
const MARKUP = /<\/?(think|minimax|invoke|parameter)|\[e~\[/;
// Long enough (well over one 256-token block) for the follow-up turn to find it in the prefix cache.
const SYSTEM = "You are a careful weather assistant. Answer briefly and call tools when needed. ".repeat(24);

/**
 * An SDK client that sends the key as `x-api-key` only, as Claude Code does with ANTHROPIC_API_KEY and as
 * Anthropic's SDKs did before 1.x (1.x sends `apiKey` as a Bearer token).
 */
function keyClient(baseURL: string, key: string): Anthropic {
  return new Anthropic({
    baseURL,
    apiKey: "unused",
    defaultHeaders: { "x-api-key": key, authorization: null },
    maxRetries: 0,
  });
}

beforeAll(async () => {
  cluster = await startApiCluster({
    preset: "scripted",
    stages: 2,
    contextWindow: CONTEXT,
    prefixCacheBytesPerNode: 64 * 1024 * 1024,
  });
  // The SDK appends /v1/messages to its base URL, as Claude Code does with ANTHROPIC_BASE_URL.
  client = keyClient(cluster.server.url, cluster.apiKey);
});
afterAll(async () => {
  await cluster?.stop();
});

async function rejection(promise: Promise<unknown>): Promise<APIError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Anthropic.APIError);
  return err as APIError;
}

function checkReply(message: Anthropic.Message): void {
  expect(message.type).toBe("message");
  expect(message.role).toBe("assistant");
  expect(message.model).toBe(cluster.modelId);
  expect(message.content.map((b) => b.type)).toEqual(["thinking", "text", "tool_use", "tool_use"]);
  const [thinking, text, ...calls] = message.content as [
    Anthropic.ThinkingBlock,
    Anthropic.TextBlock,
    ...Anthropic.ToolUseBlock[],
  ];
  expect(thinking.thinking).toBe(SCRIPTED_REPLY.reasoning);
  expect(thinking.signature).toMatch(/^[A-Za-z0-9+/=]{20,}$/);
  expect(text.text).toBe(SCRIPTED_REPLY.content);
  expect(text.text).not.toMatch(MARKUP);
  expect(calls.map((c) => ({ name: c.name, input: c.input }))).toEqual(EXPECTED_CALLS);
  for (const call of calls) expect(call.id).toMatch(/^toolu_/);
  expect(new Set(calls.map((c) => c.id)).size).toBe(2);
  expect(message.stop_reason).toBe("tool_use");
  expect(message.stop_sequence).toBeNull();
  expect(message.usage.input_tokens).toBeGreaterThan(0);
  expect(message.usage.output_tokens).toBeGreaterThan(0);
  expect(message.usage.cache_read_input_tokens).toBeGreaterThanOrEqual(0);
}

/** The follow-up turn: the reply given back as it came, and one tool_result per tool_use. */
function followUp(history: Anthropic.MessageParam[], reply: Anthropic.Message): Anthropic.MessageParam[] {
  const results: Anthropic.ToolResultBlockParam[] = reply.content
    .filter((b): b is Anthropic.ToolUseBlock => b.type === "tool_use")
    .map((b) => ({ type: "tool_result", tool_use_id: b.id, content: `result of ${b.name}` }));
  return [
    ...history,
    { role: "assistant", content: reply.content as Anthropic.ContentBlockParam[] },
    { role: "user", content: results },
  ];
}

describe("messages.create", () => {
  it("answers with thinking, text and tool_use blocks, then takes tool_result blocks back from the cache", async () => {
    const history: Anthropic.MessageParam[] = [
      { role: "user", content: "Weather in Paris and the time in CET?" },
    ];
    const first = await client.messages.create({
      model: cluster.modelId,
      max_tokens: 200,
      system: SYSTEM,
      thinking: { type: "enabled", budget_tokens: 100 },
      tools: TOOLS,
      messages: history,
    });
    checkReply(first);
    const second = await client.messages.create({
      model: cluster.modelId,
      max_tokens: 200,
      system: [{ type: "text", text: SYSTEM }],
      tools: TOOLS,
      messages: followUp(history, first),
    });
    checkReply(second);
    // The follow-up's prompt begins with the first one's: that prefix came from the cache, the rest is new.
    expect(second.usage.cache_read_input_tokens).toBeGreaterThanOrEqual(256);
    expect(second.usage.input_tokens).toBeGreaterThan(0);
    expect(second.usage.input_tokens + (second.usage.cache_read_input_tokens ?? 0)).toBeGreaterThan(
      first.usage.input_tokens + (first.usage.cache_read_input_tokens ?? 0),
    );
    // The dashboard and /metrics see it as a Messages request, with the same figures.
    expect(cluster.server.requests.figures().recent[0]).toMatchObject({
      api: "messages",
      status: "completed",
      cachedTokens: second.usage.cache_read_input_tokens,
      outputTokens: second.usage.output_tokens,
    });
  });

  it("ends with max_tokens, and leaves the reasoning out when thinking is disabled", async () => {
    // The script's first 8 tokens: reasoning, </think>, the visible sentence; the tool block comes later.
    const message = await client.messages.create({
      model: cluster.modelId,
      max_tokens: 8,
      thinking: { type: "disabled" },
      messages: [{ role: "user", content: "Weather?" }],
    });
    expect(message.content).toEqual([{ type: "text", text: SCRIPTED_REPLY.content }]);
    expect(message.stop_reason).toBe("max_tokens");
    expect(message.usage.output_tokens).toBe(8);
  });

  it("stops at a stop sequence and names it", async () => {
    // Sampling fields the SDK's types no longer list, but clients still send.
    const params = {
      model: cluster.modelId,
      max_tokens: 200,
      stop_sequences: ["nowhere", "both now"],
      temperature: 0,
      top_p: 1,
      top_k: 1,
      messages: [{ role: "user", content: [{ type: "text", text: "Weather?" }] }],
    };
    const message = await client.messages.create(params as Anthropic.MessageCreateParamsNonStreaming);
    expect(message.stop_reason).toBe("stop_sequence");
    expect(message.stop_sequence).toBe("both now");
    expect(message.content.map((b) => b.type)).toEqual(["thinking", "text"]);
    expect((message.content[1] as Anthropic.TextBlock).text).toBe("Checking ");
  });
});

describe("messages.stream", () => {
  it("streams thinking, text and tool_use blocks that finalMessage() assembles, then the follow-up", async () => {
    const history: Anthropic.MessageParam[] = [{ role: "user", content: "Weather in Paris?" }];
    const stream = client.messages.stream({
      model: cluster.modelId,
      max_tokens: 200,
      system: SYSTEM,
      thinking: { type: "enabled", budget_tokens: 100 },
      tools: TOOLS,
      messages: history,
    });
    const events: Anthropic.MessageStreamEvent[] = [];
    let thinking = "";
    let text = "";
    const json: string[] = [];
    stream.on("streamEvent", (event) => events.push(event));
    stream.on("thinking", (delta) => {
      thinking += delta;
    });
    stream.on("text", (delta) => {
      text += delta;
    });
    stream.on("inputJson", (partial) => json.push(partial));
    const final = await stream.finalMessage();
    checkReply(final);
    expect(thinking).toBe(SCRIPTED_REPLY.reasoning);
    expect(text).toBe(SCRIPTED_REPLY.content);
    expect(json.map((j) => JSON.parse(j))).toEqual(EXPECTED_CALLS.map((c) => c.input));

    const types = events.map((e) => e.type);
    expect(types[0]).toBe("message_start");
    expect(types.slice(-2)).toEqual(["message_delta", "message_stop"]);
    // Blocks open, fill and close one at a time, their indexes in order.
    const starts = events.filter((e) => e.type === "content_block_start");
    const stops = events.filter((e) => e.type === "content_block_stop");
    expect(starts.map((e) => e.index)).toEqual([0, 1, 2, 3]);
    expect(stops.map((e) => e.index)).toEqual([0, 1, 2, 3]);
    expect(starts.map((e) => e.content_block)).toMatchObject([
      { type: "thinking", thinking: "" },
      { type: "text", text: "" },
      { type: "tool_use", name: "get_weather", input: {} },
      { type: "tool_use", name: "get_time", input: {} },
    ]);
    let open = -1;
    for (const event of events) {
      if (event.type === "content_block_start") open = event.index;
      if (event.type === "content_block_delta") expect(event.index).toBe(open);
      if (event.type === "content_block_stop") open = -1;
    }
    const signature = events.find(
      (e) => e.type === "content_block_delta" && e.delta.type === "signature_delta",
    );
    expect(signature).toMatchObject({ index: 0 });
    const delta = events.find((e) => e.type === "message_delta") as Anthropic.MessageDeltaEvent;
    expect(delta.delta).toEqual({ stop_reason: "tool_use", stop_sequence: null });
    expect(delta.usage.output_tokens).toBe(final.usage.output_tokens);
    expect(delta.usage.input_tokens).toBeGreaterThan(0);

    const next = await client.messages
      .stream({
        model: cluster.modelId,
        max_tokens: 200,
        system: SYSTEM,
        tools: TOOLS,
        messages: followUp(history, final),
      })
      .finalMessage();
    checkReply(next);
    expect(next.usage.cache_read_input_tokens).toBeGreaterThanOrEqual(256);
  });

  it("sends the events as named SSE events with a ping after message_start", async () => {
    // Claude Code posts to /v1/messages?beta=true with anthropic-beta headers.
    const response = await fetch(`${cluster.server.url}/v1/messages?beta=true`, {
      method: "POST",
      headers: {
        "x-api-key": cluster.apiKey,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14",
        "content-type": "application/json",
      },
      body: JSON.stringify({
        model: cluster.modelId,
        max_tokens: 8,
        stream: true,
        messages: [{ role: "user", content: "Weather?" }],
      }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = await readSse(response);
    expect(events.slice(0, 2).map((e) => e.event)).toEqual(["message_start", "ping"]);
    for (const e of events) expect((JSON.parse(e.data) as { type: string }).type).toBe(e.event);
    const last = events.slice(-2).map((e) => JSON.parse(e.data) as Record<string, unknown>);
    expect(last[0]).toMatchObject({ type: "message_delta", delta: { stop_reason: "max_tokens" } });
    expect(last[1]).toEqual({ type: "message_stop" });
  });
});

describe("count_tokens", () => {
  const messages: Anthropic.MessageParam[] = [
    { role: "user", content: "Weather in Paris?" },
    {
      role: "assistant",
      content: [
        { type: "thinking", thinking: "Call the tool.", signature: "x" },
        { type: "text", text: "Checking." },
        { type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "Paris" } },
      ],
    },
    { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "sunny" }] },
  ];

  it("counts the prompt the same conversation gets through Chat Completions", async () => {
    const counted = await client.messages.countTokens({
      model: cluster.modelId,
      system: "Be brief.",
      tools: TOOLS,
      messages,
    });
    const formatter = ChatFormatter.forModelDir(cluster.modelDir);
    const chat = fromChatCompletions(
      [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Weather in Paris?" },
        {
          role: "assistant",
          content: "Checking.",
          reasoning_content: "Call the tool.",
          tool_calls: [
            {
              id: "toolu_1",
              type: "function",
              function: { name: "get_weather", arguments: '{"city":"Paris"}' },
            },
          ],
        },
        { role: "tool", tool_call_id: "toolu_1", content: "sunny" },
      ],
      TOOLS.map((t) => ({
        type: "function",
        function: { name: t.name, description: t.description, parameters: t.input_schema },
      })),
    );
    expect(counted.input_tokens).toBe(formatter.encode(formatter.render(chat)).length);
    // And what a reply to it reports as its input.
    const reply = await client.messages.create({
      model: cluster.modelId,
      max_tokens: 1,
      system: "Be brief.",
      tools: TOOLS,
      messages,
    });
    expect(reply.usage.input_tokens + (reply.usage.cache_read_input_tokens ?? 0)).toBe(counted.input_tokens);
  });

  it('leaves the tools out of the prompt for tool_choice "none"', async () => {
    const body = { model: cluster.modelId, system: "Be brief.", tools: TOOLS, messages };
    const auto = await client.messages.countTokens({ ...body, tool_choice: { type: "auto" } });
    const none = await client.messages.countTokens({ ...body, tool_choice: { type: "none" } });
    const formatter = ChatFormatter.forModelDir(cluster.modelDir);
    const { conversation } = fromAnthropicMessages({ ...body, tools: [] });
    expect(none.input_tokens).toBe(formatter.encode(formatter.render(conversation)).length);
    expect(none.input_tokens).toBeLessThan(auto.input_tokens);
  });
});

interface ChatMessage {
  role: string;
  content: string | Array<{ type: string; text?: string }> | null;
  reasoning_content?: string;
  tool_calls?: Array<{ id: string; function: { name: string; arguments: string } }>;
  tool_call_id?: string;
}
interface ChatTool {
  function: { name: string; description?: string; parameters: Anthropic.Tool.InputSchema };
}

/** An OpenAI chat body as an Anthropic client would send the same conversation. */
function asAnthropic(messages: ChatMessage[], tools: ChatTool[]): Anthropic.MessageCountTokensParams {
  const text = (c: ChatMessage["content"]) =>
    typeof c === "string" ? c : (c ?? []).map((p) => p.text ?? "").join("");
  const out: Anthropic.MessageParam[] = [];
  let system = "";
  for (const m of messages) {
    if (m.role === "system") system += text(m.content);
    else if (m.role === "user") out.push({ role: "user", content: text(m.content) });
    else if (m.role === "tool")
      out.push({
        role: "user",
        content: [{ type: "tool_result", tool_use_id: m.tool_call_id ?? "", content: text(m.content) }],
      });
    else {
      const blocks: Anthropic.ContentBlockParam[] = [];
      if (m.reasoning_content)
        blocks.push({ type: "thinking", thinking: m.reasoning_content, signature: "" });
      if (text(m.content)) blocks.push({ type: "text", text: text(m.content) });
      for (const call of m.tool_calls ?? [])
        blocks.push({
          type: "tool_use",
          id: call.id,
          name: call.function.name,
          input: JSON.parse(call.function.arguments) as Record<string, unknown>,
        });
      out.push({ role: "assistant", content: blocks });
    }
  }
  return {
    model: cluster.modelId,
    system,
    messages: out,
    tools: tools.map((t) => ({
      name: t.function.name,
      description: t.function.description,
      input_schema: t.function.parameters,
    })),
  };
}

describe("OpenClaw's recorded conversation, sent the Anthropic way", () => {
  const fixture = join(
    process.cwd(),
    "..",
    "shared",
    "fixtures",
    "openclaw",
    "chat-turn2-tool-result-request.json",
  );
  const present = existsSync(fixture);
  if (!present) console.warn(`anthropic-sdk: skipping the recorded-conversation test, no ${fixture}`);

  it.skipIf(!present)(
    "renders the same prompt as the same conversation through Chat Completions",
    async () => {
      const body = JSON.parse(readFileSync(fixture, "utf8")) as {
        messages: ChatMessage[];
        tools: ChatTool[];
      };
      const counted = await client.messages.countTokens(asAnthropic(body.messages, body.tools));
      const formatter = ChatFormatter.forModelDir(cluster.modelDir);
      const chat = formatter.encode(formatter.render(fromChatCompletions(body.messages, body.tools))).length;
      // ~15k tokens: the ~48k-character system prompt, 12 tools, a tool round trip.
      expect(chat).toBeGreaterThan(5000);
      expect(counted.input_tokens).toBe(chat);
    },
  );
});

describe("errors and auth through the SDK", () => {
  const valid = () => ({
    model: cluster.modelId,
    max_tokens: 4,
    messages: [{ role: "user" as const, content: "hi" }],
  });

  it("400 invalid_request_error for a missing max_tokens or a bad role", async () => {
    const { max_tokens: _, ...noMax } = valid();
    const missing = await rejection(client.messages.create(noMax as never));
    expect(missing).toBeInstanceOf(Anthropic.BadRequestError);
    expect(missing.error).toEqual({
      type: "error",
      error: { type: "invalid_request_error", message: "max_tokens: Field required" },
    });
    const role = await rejection(
      client.messages.create({ ...valid(), messages: [{ role: "tool", content: "x" }] } as never),
    );
    expect(role).toBeInstanceOf(Anthropic.BadRequestError);
    expect((role.error as { error: { message: string } }).error.message).toBe(
      "messages.0.role: Input should be 'user', 'assistant' or 'system'",
    );
    const orphan = await rejection(
      client.messages.create({
        ...valid(),
        messages: [
          { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_x", content: "?" }] },
        ],
      }),
    );
    expect(orphan.message).toMatch(/messages\.0\.content\.0\.tool_use_id: no earlier tool_use/);
    const image = await rejection(
      client.messages.create({
        ...valid(),
        messages: [
          {
            role: "user",
            content: [{ type: "image", source: { type: "base64", media_type: "image/png", data: "AAAA" } }],
          },
        ],
      }),
    );
    expect(image.message).toMatch(/text-only/);
    const choice = await rejection(
      client.messages.create({ ...valid(), tools: TOOLS, tool_choice: { type: "tool", name: "launch" } }),
    );
    expect(choice.message).toMatch(/tool_choice\.name: names the tool 'launch'/);
    const hot = await rejection(
      client.messages.create({ ...valid(), temperature: 1.5 } as Anthropic.MessageCreateParamsNonStreaming),
    );
    expect(hot.message).toMatch(/temperature: Expected number to be less or equal to 1/);
  });

  it("401 authentication_error for a wrong or missing key; x-api-key and Bearer both pass", async () => {
    const wrong = keyClient(cluster.server.url, "nope");
    const denied = await rejection(wrong.messages.create(valid()));
    expect(denied).toBeInstanceOf(Anthropic.AuthenticationError);
    expect(denied.status).toBe(401);
    expect(denied.error).toEqual({
      type: "error",
      error: { type: "authentication_error", message: "Incorrect API key provided." },
    });
    const streamDenied = await rejection(wrong.messages.stream(valid()).finalMessage());
    expect(streamDenied).toBeInstanceOf(Anthropic.AuthenticationError);
    const none = await fetch(`${cluster.server.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(valid()),
    });
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ type: "error", error: { type: "authentication_error" } });

    // ANTHROPIC_AUTH_TOKEN in Claude Code, and `apiKey` in the 1.x SDK: the key as a Bearer token.
    const bearer = new Anthropic({ baseURL: cluster.server.url, authToken: cluster.apiKey, maxRetries: 0 });
    expect((await bearer.messages.create(valid())).type).toBe("message");
    const sdkDefault = new Anthropic({ baseURL: cluster.server.url, apiKey: cluster.apiKey, maxRetries: 0 });
    expect((await sdkDefault.messages.create(valid())).type).toBe("message");
    const wrongBearer = new Anthropic({ baseURL: cluster.server.url, authToken: "nope", maxRetries: 0 });
    expect(await rejection(wrongBearer.messages.create(valid()))).toBeInstanceOf(
      Anthropic.AuthenticationError,
    );
    // The key as x-api-key opens the OpenAI routes too: one key, one rule for /v1.
    const models = await fetch(`${cluster.baseUrl}/models`, { headers: { "x-api-key": cluster.apiKey } });
    expect(models.status).toBe(200);
  });

  it("404 not_found_error for another model or a route under /v1/messages; 400 for a prompt too long", async () => {
    const model = await rejection(client.messages.create({ ...valid(), model: "claude-sonnet-4-5" }));
    expect(model).toBeInstanceOf(Anthropic.NotFoundError);
    expect((model.error as { error: { type: string } }).error.type).toBe("not_found_error");
    const route = await fetch(`${cluster.server.url}/v1/messages/batches`, {
      method: "POST",
      headers: { "x-api-key": cluster.apiKey, "content-type": "application/json" },
      body: "{}",
    });
    expect(route.status).toBe(404);
    expect(await route.json()).toMatchObject({ type: "error", error: { type: "not_found_error" } });
    const long = await rejection(
      client.messages.create({
        ...valid(),
        messages: [{ role: "user", content: "weather ".repeat(CONTEXT) }],
      }),
    );
    expect(long).toBeInstanceOf(Anthropic.BadRequestError);
    expect(long.message).toMatch(/prompt is too long: \d+ tokens > 4096 maximum/);
  });

  it("takes null for every optional field, as some clients send it", async () => {
    const nulls = Object.fromEntries(
      ["system", "tools", "tool_choice", "thinking", "stream", "temperature", "top_p", "top_k"]
        .concat(["stop_sequences", "metadata"])
        .map((k) => [k, null]),
    );
    const response = await fetch(`${cluster.server.url}/v1/messages`, {
      method: "POST",
      headers: { "x-api-key": cluster.apiKey, "content-type": "application/json" },
      body: JSON.stringify({ ...valid(), ...nulls }),
    });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ type: "message", stop_reason: "max_tokens" });
  });

  it("400 for a body that is not JSON", async () => {
    const response = await fetch(`${cluster.server.url}/v1/messages`, {
      method: "POST",
      headers: { "x-api-key": cluster.apiKey, "content-type": "application/json" },
      body: "{not json",
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
  });
});

describe("a server that cannot take the request", () => {
  it("529 overloaded_error while the cluster is not ready, 413 request_too_large for a body over the limit", async () => {
    const server = await startApiServer(
      {
        generator: () => undefined,
        modelDir: cluster.modelDir,
        modelId: cluster.modelId,
        health: () => ({ ready: false }),
      },
      { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey, bodyLimit: 4096 },
    );
    try {
      const idle = keyClient(server.url, cluster.apiKey);
      const busy = await rejection(
        idle.messages.create({
          model: cluster.modelId,
          max_tokens: 4,
          messages: [{ role: "user", content: "hi" }],
        }),
      );
      expect(busy).toBeInstanceOf(Anthropic.OverloadedError);
      expect(busy.status).toBe(529);
      expect(busy.headers?.get("retry-after")).toBe("5");
      expect((busy.error as { error: { type: string } }).error.type).toBe("overloaded_error");
      const big = await rejection(
        idle.messages.create({
          model: cluster.modelId,
          max_tokens: 4,
          messages: [{ role: "user", content: "x".repeat(8192) }],
        }),
      );
      expect(big).toBeInstanceOf(Anthropic.ContentTooLargeError);
      expect((big.error as { error: { type: string } }).error.type).toBe("request_too_large");
      // count_tokens needs only the tokenizer: it answers while the cluster is not ready.
      const counted = await idle.messages.countTokens({
        model: cluster.modelId,
        messages: [{ role: "user", content: "hi" }],
      });
      expect(counted.input_tokens).toBeGreaterThan(0);
    } finally {
      await server.close();
    }
  });
});

describe("a node that is not the coordinator", () => {
  it("forwards /v1/messages with the key from x-api-key, streams included, and checks the key first", async () => {
    const agent = await startRelayAgent({
      apiUrl: cluster.server.url,
      relayToken: cluster.relayToken,
      clusterKey: cluster.clusterKey,
      modelDir: cluster.modelDir,
    });
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
      const other = keyClient(server.url, cluster.apiKey);
      const message = await other.messages
        .stream({
          model: cluster.modelId,
          max_tokens: 200,
          tools: TOOLS,
          messages: [{ role: "user", content: "Weather?" }],
        })
        .finalMessage();
      checkReply(message);
      const counted = await other.messages.countTokens({
        model: cluster.modelId,
        messages: [{ role: "user", content: "Weather?" }],
      });
      expect(counted.input_tokens).toBeGreaterThan(0);
      const wrong = keyClient(server.url, "nope");
      expect(
        await rejection(
          wrong.messages.create({
            model: cluster.modelId,
            max_tokens: 4,
            messages: [{ role: "user", content: "hi" }],
          }),
        ),
      ).toBeInstanceOf(Anthropic.AuthenticationError);
    } finally {
      await server.close();
      await agent.close();
    }
  });
});
