// Replays the exact bodies OpenClaw 2026.9.6 sent (shared/fixtures/openclaw) against a real cluster serving the
// scripted model: each must be accepted, rendered through the model's template and answered with a stream
// that satisfies docs/api.md.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { fromChatCompletions, fromResponses } from "../../chat/conversation.js";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";

const FIXTURES = join(process.cwd(), "..", "shared", "fixtures", "openclaw");
const files = existsSync(FIXTURES)
  ? readdirSync(FIXTURES)
      .filter((f) => f.endsWith(".json"))
      .sort()
  : [];
if (files.length === 0) console.warn(`openclaw-replay: skipping, no recorded requests in ${FIXTURES}`);

let cluster: ApiCluster;

beforeAll(async () => {
  if (files.length === 0) return;
  // The recorded bodies name "minimax-m2.1": serve under that id so they go in byte for byte.
  cluster = await startApiCluster({
    preset: "scripted",
    stages: 2,
    contextWindow: 65_536,
    modelId: "minimax-m2.1",
  });
}, 300_000);
afterAll(async () => {
  await cluster?.stop();
});

type Json = Record<string, unknown>;

function post(path: string, body: string): Promise<Response> {
  // OpenClaw's SDK sends these headers; no Accept: text/event-stream is required.
  return fetch(`${cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${cluster.apiKey}`, "content-type": "application/json" },
    body,
  });
}

/**
 * The recorded body plus the two functions the scripted model calls: only declared functions can be called
 * (docs/api.md "Tool choice"), and OpenClaw's own tools do not include them. Everything else goes in as recorded.
 */
function withScriptedTools(body: Json): Json {
  const fns = [
    { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } },
    {
      name: "get_time",
      parameters: {
        type: "object",
        properties: { zone: { type: "string" }, utc_offset: { type: "integer" } },
      },
    },
  ];
  const extra = body.messages
    ? fns.map((f) => ({ type: "function", function: f }))
    : fns.map((f) => ({ type: "function", ...f }));
  return { ...body, tools: [...((body.tools as unknown[] | undefined) ?? []), ...extra] };
}

function promptTokensOf(body: Json): number {
  const formatter = ChatFormatter.forModelDir(cluster.modelDir);
  const conversation = body.messages
    ? fromChatCompletions(body.messages, body.tools)
    : fromResponses(body.instructions, body.input, body.tools);
  return formatter.encode(formatter.render(conversation)).length;
}

function checkChat(events: Array<{ data: string }>, promptTokens: number): void {
  expect(events[events.length - 1].data).toBe("[DONE]");
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data) as Json);
  const choices = (c: Json) => c.choices as Array<{ delta: Json; finish_reason: string | null }>;
  expect(choices(chunks[0])[0].delta.role).toBe("assistant");
  let reasoning = "";
  let content = "";
  const names: string[] = [];
  for (const chunk of chunks) {
    const choice = choices(chunk)[0];
    if (!choice) continue;
    if (typeof choice.delta.reasoning_content === "string") reasoning += choice.delta.reasoning_content;
    if (typeof choice.delta.content === "string") content += choice.delta.content;
    for (const call of (choice.delta.tool_calls as Array<{
      id?: string;
      function: { name?: string; arguments: string };
    }>) ?? []) {
      expect(call.id).toMatch(/^call_/);
      names.push(call.function.name!);
      expect(typeof JSON.parse(call.function.arguments)).toBe("object");
    }
  }
  expect(reasoning).toBe(SCRIPTED_REPLY.reasoning);
  expect(content).toBe(SCRIPTED_REPLY.content);
  expect(names).toEqual(SCRIPTED_REPLY.toolCalls.map((c) => c.name));
  expect(choices(chunks[chunks.length - 2])[0].finish_reason).toBe("tool_calls");
  const usage = chunks[chunks.length - 1].usage as Json;
  expect(choices(chunks[chunks.length - 1])).toEqual([]);
  expect(usage.prompt_tokens).toBe(promptTokens);
  expect((usage.prompt_tokens_details as Json).cached_tokens).toBeGreaterThanOrEqual(0);
}

function checkResponses(events: Array<{ event?: string; data: string }>, promptTokens: number): void {
  const parsed = events.map((e) => ({ name: e.event, body: JSON.parse(e.data) as Json }));
  for (const e of parsed) {
    expect(e.body.type).toBe(e.name); // SSE event: line = the JSON type
    if ("delta" in e.body) expect(typeof e.body.delta).toBe("string");
  }
  expect(parsed[0].name).toBe("response.created");
  const last = parsed[parsed.length - 1];
  expect(last.name).toBe("response.completed");
  const response = last.body.response as { output: Json[]; usage: Json };
  expect(response.output.map((o) => o.type)).toEqual([
    "reasoning",
    "message",
    "function_call",
    "function_call",
  ]);
  for (const item of response.output.filter((o) => o.type === "function_call"))
    expect(typeof JSON.parse(item.arguments as string)).toBe("object");
  expect(response.usage.input_tokens).toBe(promptTokens);
  expect(parsed.some((e) => e.name === "response.reasoning_summary_text.delta")).toBe(true);
  // Each piece of reasoning once (OpenClaw appends summary and reasoning_text deltas alike), the full text
  // in the reasoning item's content.
  expect(parsed.some((e) => e.name === "response.reasoning_text.delta")).toBe(false);
  const reasoning = response.output[0] as { summary: Json[]; content: Json[] };
  expect(reasoning.content[0].text).toBe(reasoning.summary[0].text);
}

describe.skipIf(files.length === 0)("OpenClaw's recorded requests", () => {
  for (const file of files) {
    it(`answers ${file} with a stream that satisfies docs/api.md`, async () => {
      const body = withScriptedTools(JSON.parse(readFileSync(join(FIXTURES, file), "utf8")) as Json);
      const path = body.messages ? "/chat/completions" : "/responses";
      const response = await post(path, JSON.stringify(body));
      expect(response.status).toBe(200);
      expect(response.headers.get("content-type")).toMatch(/text\/event-stream/);
      // The first event must come while the ~17k-token prompt is still in prefill: the request is in flight
      // and the stream holds no generated text yet.
      const reader = response.body!.getReader();
      const decoder = new TextDecoder();
      let text = decoder.decode((await reader.read()).value, { stream: true });
      expect(cluster.scheduler.inFlight).toBe(1);
      expect(text).toMatch(path === "/responses" ? /^event: response\.created\n/ : /"role":"assistant"/);
      expect(text).not.toMatch(/reasoning_content|reasoning_text\.delta/);
      for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read())
        text += decoder.decode(chunk.value, { stream: true });
      const events = await readSse(new Response(text));
      const promptTokens = promptTokensOf(body);
      expect(promptTokens).toBeGreaterThan(10_000); // the ~49k-character system prompt really went in
      if (path === "/chat/completions") checkChat(events, promptTokens);
      else checkResponses(events, promptTokens);
    });
  }
});
