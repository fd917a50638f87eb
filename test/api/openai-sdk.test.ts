// The official `openai` SDK against the real API over a real cluster (2 node-agent processes, scheduler,
// HTTP server) serving the scripted model, which answers every prompt with reasoning, text and two tool calls.
// Every event sequence is checked against docs/api.md.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";

let cluster: ApiCluster;
let client: OpenAI;

const CHAT_TOOLS: OpenAI.Chat.ChatCompletionFunctionTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Weather for a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
  {
    type: "function",
    function: {
      name: "get_time",
      description: "Time in a zone",
      parameters: {
        type: "object",
        properties: { zone: { type: "string" }, utc_offset: { type: "integer" } },
        required: ["zone"],
      },
    },
  },
];
const RESPONSES_TOOLS: OpenAI.Responses.FunctionTool[] = CHAT_TOOLS.map((t) => ({
  type: "function",
  name: t.function.name,
  description: t.function.description ?? null,
  parameters: t.function.parameters ?? null,
  strict: false,
}));
const EXPECTED_CALLS = SCRIPTED_REPLY.toolCalls.map((c) => ({ name: c.name, arguments: c.arguments }));
const MARKUP = /<\/?(think|minimax|invoke|parameter)|\[e~\[/;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "scripted", stages: 2, contextWindow: 4096 });
  client = new OpenAI({ baseURL: cluster.baseUrl, apiKey: cluster.apiKey, maxRetries: 0 });
});
afterAll(async () => {
  await cluster?.stop();
});

interface ChatStreamResult {
  chunks: OpenAI.Chat.ChatCompletionChunk[];
  reasoning: string;
  content: string;
  calls: Array<{ id: string; name: string; arguments: string }>;
  finish: string | null;
  usage: OpenAI.CompletionUsage | undefined;
}

async function chatStream(messages: OpenAI.Chat.ChatCompletionMessageParam[]): Promise<ChatStreamResult> {
  const stream = await client.chat.completions.create({
    model: cluster.modelId,
    messages,
    tools: CHAT_TOOLS,
    stream: true,
    max_completion_tokens: 200,
  });
  const out: ChatStreamResult = {
    chunks: [],
    reasoning: "",
    content: "",
    calls: [],
    finish: null,
    usage: undefined,
  };
  for await (const chunk of stream) {
    out.chunks.push(chunk);
    if (chunk.usage) out.usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    const delta = choice.delta as typeof choice.delta & { reasoning_content?: string };
    if (delta.reasoning_content) out.reasoning += delta.reasoning_content;
    if (delta.content) out.content += delta.content;
    for (const call of delta.tool_calls ?? []) {
      if (!out.calls[call.index]) {
        // id and name must come with the first chunk of each call.
        expect(call.id).toBeTruthy();
        expect(call.function?.name).toBeTruthy();
        out.calls[call.index] = { id: call.id!, name: call.function!.name!, arguments: "" };
      }
      out.calls[call.index].arguments += call.function?.arguments ?? "";
    }
    if (choice.finish_reason) out.finish = choice.finish_reason;
  }
  return out;
}

function checkChatStream(out: ChatStreamResult): void {
  expect(out.chunks[0].choices[0].delta.role).toBe("assistant");
  expect(out.reasoning).toBe(SCRIPTED_REPLY.reasoning);
  expect(out.content).toBe(SCRIPTED_REPLY.content);
  expect(out.content).not.toMatch(MARKUP);
  expect(out.calls.map((c) => ({ name: c.name, arguments: JSON.parse(c.arguments) }))).toEqual(
    EXPECTED_CALLS,
  );
  expect(out.finish).toBe("tool_calls");
  // The usage chunk comes last, with no choices, although include_usage was not asked for.
  const last = out.chunks[out.chunks.length - 1];
  expect(last.choices).toEqual([]);
  expect(out.usage?.prompt_tokens).toBeGreaterThan(0);
  expect(out.usage?.completion_tokens).toBeGreaterThan(0);
  expect(out.usage?.total_tokens).toBe(out.usage!.prompt_tokens + out.usage!.completion_tokens);
  expect(out.usage?.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(0);
  expect(out.usage?.completion_tokens_details?.reasoning_tokens).toBeGreaterThan(0);
}

describe("chat completions through the openai SDK", () => {
  it("streams reasoning, text and tool calls, then tool results in a second turn", async () => {
    const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
      { role: "developer", content: "You are a weather assistant." },
      { role: "user", content: "Weather in Paris and the time in CET?" },
    ];
    const first = await chatStream(messages);
    checkChatStream(first);
    messages.push({
      role: "assistant",
      content: first.content,
      reasoning_content: first.reasoning,
      tool_calls: first.calls.map((c) => ({
        id: c.id,
        type: "function",
        function: { name: c.name, arguments: c.arguments },
      })),
    } as OpenAI.Chat.ChatCompletionAssistantMessageParam);
    for (const call of first.calls)
      messages.push({ role: "tool", tool_call_id: call.id, content: `result of ${call.name}` });
    const second = await chatStream(messages);
    checkChatStream(second);
    expect(second.usage!.prompt_tokens).toBeGreaterThan(first.usage!.prompt_tokens);
  });

  it("answers without streaming with content, reasoning_content and tool_calls", async () => {
    const completion = await client.chat.completions.create({
      model: cluster.modelId,
      messages: [{ role: "user", content: "Weather?" }],
      tools: CHAT_TOOLS,
    });
    expect(completion.object).toBe("chat.completion");
    const choice = completion.choices[0];
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBe(SCRIPTED_REPLY.content);
    expect((choice.message as { reasoning_content?: string }).reasoning_content).toBe(
      SCRIPTED_REPLY.reasoning,
    );
    const calls = (choice.message.tool_calls ?? []) as OpenAI.Chat.ChatCompletionMessageFunctionToolCall[];
    expect(
      calls.map((c) => ({ name: c.function.name, arguments: JSON.parse(c.function.arguments) })),
    ).toEqual(EXPECTED_CALLS);
    expect(completion.usage?.completion_tokens_details?.reasoning_tokens).toBeGreaterThan(0);
  });

  it("ends with finish_reason length when the token budget runs out inside the reasoning", async () => {
    const out = await client.chat.completions.create({
      model: cluster.modelId,
      messages: [{ role: "user", content: "Weather?" }],
      max_tokens: 2,
    });
    expect(out.choices[0].finish_reason).toBe("length");
    expect(out.usage?.completion_tokens).toBe(2);
  });
});

type ResponseEvent = OpenAI.Responses.ResponseStreamEvent;

async function responsesStream(
  input: OpenAI.Responses.ResponseInput | string,
  max = 200,
): Promise<ResponseEvent[]> {
  const stream = await client.responses.create({
    model: cluster.modelId,
    input,
    tools: RESPONSES_TOOLS,
    stream: true,
    store: false,
    max_output_tokens: max,
    reasoning: { effort: "medium", summary: "auto" },
    include: ["reasoning.encrypted_content"],
  });
  const events: ResponseEvent[] = [];
  for await (const event of stream) events.push(event);
  return events;
}

function checkResponsesStream(events: ResponseEvent[]): OpenAI.Responses.Response {
  const types = events.map((e) => e.type);
  expect(types[0]).toBe("response.created");
  expect(types[types.length - 1]).toBe("response.completed");
  for (const e of events) if ("delta" in e) expect(typeof e.delta).toBe("string");
  const at = (type: string, index: number) =>
    events.filter((e) => e.type === type && "output_index" in e && e.output_index === index);
  // 0: reasoning, each piece once as a summary delta (a client appending every reasoning delta it meets shows
  // it once), the full text in the item's content on output_item.done.
  const added0 = at("response.output_item.added", 0)[0] as OpenAI.Responses.ResponseOutputItemAddedEvent;
  expect(added0.item.type).toBe("reasoning");
  expect(at("response.reasoning_summary_part.added", 0)).toHaveLength(1);
  const reasoningDeltas = events
    .filter((e) => e.type.startsWith("response.reasoning") && e.type.endsWith(".delta"))
    .map((e) => (e as { delta: string }).delta)
    .join("");
  expect(reasoningDeltas).toBe(SCRIPTED_REPLY.reasoning);
  expect(at("response.reasoning_text.delta", 0)).toHaveLength(0);
  const done0 = at("response.output_item.done", 0)[0] as OpenAI.Responses.ResponseOutputItemDoneEvent;
  expect(done0.item).toMatchObject({
    type: "reasoning",
    summary: [{ type: "summary_text", text: SCRIPTED_REPLY.reasoning }],
    content: [{ type: "reasoning_text", text: SCRIPTED_REPLY.reasoning }],
  });
  // 1: the message.
  expect(
    (at("response.output_item.added", 1)[0] as OpenAI.Responses.ResponseOutputItemAddedEvent).item.type,
  ).toBe("message");
  expect(at("response.content_part.added", 1)).toHaveLength(1);
  const text = at("response.output_text.delta", 1)
    .map((e) => (e as { delta: string }).delta)
    .join("");
  expect(text).toBe(SCRIPTED_REPLY.content);
  expect(at("response.output_text.done", 1)).toHaveLength(1);
  // 2, 3: the calls, full arguments on .done.
  [2, 3].forEach((index, i) => {
    const added = at("response.output_item.added", index)[0] as OpenAI.Responses.ResponseOutputItemAddedEvent;
    expect(added.item).toMatchObject({ type: "function_call", name: EXPECTED_CALLS[i].name, arguments: "" });
    const done = at(
      "response.function_call_arguments.done",
      index,
    )[0] as OpenAI.Responses.ResponseFunctionCallArgumentsDoneEvent;
    expect(JSON.parse(done.arguments)).toEqual(EXPECTED_CALLS[i].arguments);
    const itemDone = at(
      "response.output_item.done",
      index,
    )[0] as OpenAI.Responses.ResponseOutputItemDoneEvent;
    expect(itemDone.item).toMatchObject({
      type: "function_call",
      status: "completed",
      arguments: done.arguments,
    });
  });
  const completed = events[events.length - 1] as OpenAI.Responses.ResponseCompletedEvent;
  const response = completed.response;
  expect(response.status).toBe("completed");
  expect(response.output.map((o) => o.type)).toEqual([
    "reasoning",
    "message",
    "function_call",
    "function_call",
  ]);
  expect(response.usage?.input_tokens).toBeGreaterThan(0);
  expect(response.usage?.output_tokens_details.reasoning_tokens).toBeGreaterThan(0);
  expect(response.usage?.input_tokens_details.cached_tokens).toBeGreaterThanOrEqual(0);
  expect(JSON.stringify(response.output.filter((o) => o.type === "message"))).not.toMatch(MARKUP);
  return response;
}

describe("responses through the openai SDK", () => {
  it("streams reasoning, message and function calls, then takes the function outputs back", async () => {
    const input: OpenAI.Responses.ResponseInput = [
      {
        type: "message",
        role: "developer",
        content: [{ type: "input_text", text: "You are a weather assistant." }],
      },
      {
        type: "message",
        role: "user",
        content: [{ type: "input_text", text: "Weather in Paris and the time in CET?" }],
      },
    ];
    const first = checkResponsesStream(await responsesStream(input));
    // The round trip OpenClaw does: echo every output item, add one output per call.
    for (const item of first.output) input.push(item as OpenAI.Responses.ResponseInputItem);
    for (const item of first.output)
      if (item.type === "function_call")
        input.push({ type: "function_call_output", call_id: item.call_id, output: `ok ${item.name}` });
    const second = checkResponsesStream(await responsesStream(input));
    expect(second.usage!.input_tokens).toBeGreaterThan(first.usage!.input_tokens);
  });

  it("ends with response.incomplete when max_output_tokens runs out", async () => {
    const events = await responsesStream("Weather?", 3);
    const last = events[events.length - 1] as OpenAI.Responses.ResponseIncompleteEvent;
    expect(last.type).toBe("response.incomplete");
    expect(last.response.incomplete_details?.reason).toBe("max_output_tokens");
    expect(last.response.usage?.output_tokens).toBe(3);
  });

  it("answers without streaming with the same output and usage", async () => {
    const response = await client.responses.create({
      model: cluster.modelId,
      instructions: "You are a weather assistant.",
      input: "Weather in Paris?",
      tools: RESPONSES_TOOLS,
    });
    expect(response.status).toBe("completed");
    expect(response.output_text).toBe(SCRIPTED_REPLY.content);
    const calls = response.output.filter(
      (o): o is OpenAI.Responses.ResponseFunctionToolCall => o.type === "function_call",
    );
    expect(calls.map((c) => ({ name: c.name, arguments: JSON.parse(c.arguments) }))).toEqual(EXPECTED_CALLS);
    expect(response.usage?.total_tokens).toBe(response.usage!.input_tokens + response.usage!.output_tokens);
  });
});

/** `store` is echoed in the response object, a field the SDK's Response type does not declare. */
const storeOf = (response: object) => (response as { store?: unknown }).store;

describe("stored responses (store, GET / DELETE /v1/responses/{id}, previous_response_id)", () => {
  it("stores by default, continues from previous_response_id, and deletes", async () => {
    const first = await client.responses.create({
      model: cluster.modelId,
      input: "Weather in Paris and the time in CET?",
      tools: RESPONSES_TOOLS,
    });
    expect(storeOf(first)).toBe(true);
    const fetched = await client.responses.retrieve(first.id);
    expect(fetched).toMatchObject({ id: first.id, status: "completed", store: true });
    expect(fetched.output).toEqual(first.output);
    // The follow-up sends only the tool outputs: the server puts the first turn's input and output before them.
    const outputs: OpenAI.Responses.ResponseInputItem[] = first.output
      .filter((o): o is OpenAI.Responses.ResponseFunctionToolCall => o.type === "function_call")
      .map((call) => ({ type: "function_call_output", call_id: call.call_id, output: `ok ${call.name}` }));
    const second = await client.responses.create({
      model: cluster.modelId,
      previous_response_id: first.id,
      input: outputs,
      tools: RESPONSES_TOOLS,
    });
    expect(second.previous_response_id).toBe(first.id);
    expect(second.usage!.input_tokens).toBeGreaterThan(
      first.usage!.input_tokens + first.usage!.output_tokens,
    );
    await client.responses.delete(first.id);
    await expect(client.responses.retrieve(first.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.responses.delete(first.id)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const orphan = client.responses.create({
      model: cluster.modelId,
      previous_response_id: first.id,
      input: outputs,
    });
    await expect(orphan).rejects.toMatchObject({ status: 400, param: "previous_response_id" });
  });

  it("a streamed response is stored when it completes; store: false is echoed and not stored", async () => {
    const stored = await client.responses
      .stream({ model: cluster.modelId, input: "Weather?" })
      .finalResponse();
    expect(storeOf(stored)).toBe(true);
    expect((await client.responses.retrieve(stored.id)).status).toBe("completed");
    const events = await responsesStream("Weather?");
    const completed = events[events.length - 1] as OpenAI.Responses.ResponseCompletedEvent;
    expect(storeOf(completed.response)).toBe(false);
    await expect(client.responses.retrieve(completed.response.id)).rejects.toBeInstanceOf(
      OpenAI.NotFoundError,
    );
  });
});

describe("the SDK's stream helpers", () => {
  const question = "Weather in Paris and the time in CET?";

  it("responses.stream().finalResponse() accumulates reasoning, message and calls", async () => {
    const stream = client.responses.stream({
      model: cluster.modelId,
      input: question,
      tools: RESPONSES_TOOLS,
      max_output_tokens: 200,
      reasoning: { effort: "medium", summary: "auto" },
    });
    let reasoningShown = "";
    stream.on("response.reasoning_summary_text.delta", (e) => {
      reasoningShown += e.delta;
    });
    stream.on("response.reasoning_text.delta", (e) => {
      reasoningShown += e.delta;
    });
    const response = (await stream.finalResponse()) as OpenAI.Responses.Response;
    expect(reasoningShown).toBe(SCRIPTED_REPLY.reasoning);
    const reasoning = response.output[0] as OpenAI.Responses.ResponseReasoningItem;
    expect(reasoning.type).toBe("reasoning");
    expect(reasoning.summary).toEqual([{ type: "summary_text", text: SCRIPTED_REPLY.reasoning }]);
    expect(reasoning.content).toEqual([{ type: "reasoning_text", text: SCRIPTED_REPLY.reasoning }]);
    expect(response.output_text).toBe(SCRIPTED_REPLY.content);
    const calls = response.output.filter(
      (o): o is OpenAI.Responses.ResponseFunctionToolCall => o.type === "function_call",
    );
    expect(calls.map((c) => ({ name: c.name, arguments: JSON.parse(c.arguments) }))).toEqual(EXPECTED_CALLS);
  });

  it("chat.completions.stream().finalChatCompletion() accumulates text, reasoning and calls", async () => {
    const stream = client.chat.completions.stream({
      model: cluster.modelId,
      messages: [{ role: "user", content: question }],
      tools: CHAT_TOOLS,
      max_completion_tokens: 200,
      stream_options: { include_usage: true },
    });
    // The SDK's accumulator overwrites fields it does not know (reasoning_content) instead of appending them,
    // so the reasoning is read from the chunks, as clients do.
    let reasoning = "";
    stream.on("chunk", (chunk) => {
      const delta = chunk.choices[0]?.delta as { reasoning_content?: string } | undefined;
      reasoning += delta?.reasoning_content ?? "";
    });
    const completion = await stream.finalChatCompletion();
    const message = completion.choices[0].message;
    expect(message.content).toBe(SCRIPTED_REPLY.content);
    expect(reasoning).toBe(SCRIPTED_REPLY.reasoning);
    const calls = (message.tool_calls ?? []) as OpenAI.Chat.ChatCompletionMessageFunctionToolCall[];
    expect(
      calls.map((c) => ({ name: c.function.name, arguments: JSON.parse(c.function.arguments) })),
    ).toEqual(EXPECTED_CALLS);
    expect(completion.choices[0].finish_reason).toBe("tool_calls");
    expect(completion.usage?.completion_tokens).toBeGreaterThan(0);
  });

  it("runTools calls the tools with the parsed arguments and sends their results back", async () => {
    const seen: unknown[] = [];
    const tool = (name: string) => ({
      type: "function" as const,
      function: {
        name,
        description: `tool ${name}`,
        parameters: CHAT_TOOLS.find((t) => t.function.name === name)!.function.parameters!,
        parse: JSON.parse,
        function: (args: unknown) => {
          seen.push({ name, arguments: args });
          return `result of ${name}`;
        },
      },
    });
    // The scripted model calls both tools on every turn: two completions are one round trip.
    const runner = client.chat.completions.runTools(
      {
        model: cluster.modelId,
        messages: [{ role: "user", content: question }],
        tools: [tool("get_weather"), tool("get_time")],
        max_completion_tokens: 200,
      },
      { maxChatCompletions: 2 },
    );
    await runner.done();
    const completions = runner.allChatCompletions();
    expect(completions).toHaveLength(2);
    expect(seen.slice(0, 2)).toEqual(EXPECTED_CALLS);
    const toolMessages = runner.messages.filter((m) => m.role === "tool");
    expect(toolMessages.map((m) => (m as { content: string }).content).slice(0, 2)).toEqual([
      "result of get_weather",
      "result of get_time",
    ]);
    // The second request carried the results: its prompt is longer than the first's.
    expect(completions[1].usage!.prompt_tokens).toBeGreaterThan(completions[0].usage!.prompt_tokens);
  });
});

describe("stream_options.include_usage", () => {
  async function chunksOf(path: string, body: Record<string, unknown>): Promise<Record<string, unknown>[]> {
    const response = await fetch(`${cluster.baseUrl}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${cluster.apiKey}` },
      body: JSON.stringify({ model: cluster.modelId, stream: true, ...body }),
    });
    expect(response.status).toBe(200);
    const events = await readSse(response);
    expect(events[events.length - 1].data).toBe("[DONE]");
    return events.slice(0, -1).map((e) => JSON.parse(e.data));
  }

  function checkUsageNullExceptLast(chunks: Record<string, unknown>[]): void {
    expect(chunks.length).toBeGreaterThan(2);
    for (const chunk of chunks.slice(0, -1)) expect(chunk).toHaveProperty("usage", null);
    const last = chunks[chunks.length - 1];
    expect(last.choices).toEqual([]);
    expect((last.usage as { total_tokens: number }).total_tokens).toBeGreaterThan(0);
  }

  it('chat chunks carry "usage": null until the usage chunk', async () => {
    checkUsageNullExceptLast(
      await chunksOf("/chat/completions", {
        messages: [{ role: "user", content: "Weather?" }],
        max_tokens: 8,
        stream_options: { include_usage: true },
      }),
    );
  });

  it('completion chunks carry "usage": null until the usage chunk', async () => {
    checkUsageNullExceptLast(
      await chunksOf("/completions", {
        prompt: "Weather",
        max_tokens: 4,
        stream_options: { include_usage: true },
      }),
    );
  });

  it("without include_usage the chunks have no usage field, and the usage chunk still comes", async () => {
    const chunks = await chunksOf("/chat/completions", {
      messages: [{ role: "user", content: "Weather?" }],
      max_tokens: 8,
    });
    for (const chunk of chunks.slice(0, -1)) expect(chunk).not.toHaveProperty("usage");
    expect(chunks[chunks.length - 1].usage).toBeTruthy();
  });
});

describe("models", () => {
  it("lists the served model", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([cluster.modelId]);
  });

  it("advertises the served window and the output limit, in the fields discovering clients read", async () => {
    const window = cluster.scheduler.contextWindow; // 4096 here, not the model's maximum
    const expected = {
      context_length: window,
      context_window: window,
      max_model_len: window,
      max_output_tokens: window / 4,
      max_completion_tokens: window / 4,
    };
    const models = await client.models.list();
    expect(models.data[0]).toMatchObject(expected);
    expect(await client.models.retrieve(cluster.modelId)).toMatchObject(expected);
  });

  it("gives the window as n_ctx at GET /props, under the base URL and at the root, behind the API key", async () => {
    const root = cluster.baseUrl.replace(/\/v1$/, "");
    for (const url of [`${cluster.baseUrl}/props`, `${root}/props`]) {
      const response = await fetch(url, { headers: { authorization: `Bearer ${cluster.apiKey}` } });
      expect(response.status).toBe(200);
      const props = (await response.json()) as {
        n_ctx: number;
        default_generation_settings: { n_ctx: number };
      };
      expect(props.n_ctx).toBe(cluster.scheduler.contextWindow);
      expect(props.default_generation_settings.n_ctx).toBe(cluster.scheduler.contextWindow);
      const denied = await fetch(url);
      expect(denied.status).toBe(401);
      expect(((await denied.json()) as { error: { code: string } }).error.code).toBe("invalid_api_key");
    }
  });
});
