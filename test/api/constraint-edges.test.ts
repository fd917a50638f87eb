// Edges of constrained decoding, through a real two-stage cluster of the scripted model (which writes its tool
// tag as two tokens, "<minimax:to" + "ol_call>...", and calls get_weather and get_time in every reply):
// - a reply that may not call its tools (tool_choice none, no tools, or tools that are not its own, as Claude
//   Code sends) leaves no piece of the tool markup in the visible text, on all three APIs, streamed or not;
// - a json_schema that xgrammar cannot compile (a regex pattern with a lookbehind) is refused with a 400 that
//   names the param, as often as it is sent, and the cluster still serves a valid json_schema afterwards.
import { Ajv } from "ajv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";

let cluster: ApiCluster;
beforeAll(async () => {
  cluster = await startApiCluster({ preset: "scripted", stages: 2, contextWindow: 4096 });
}, 300_000);
afterAll(async () => {
  await cluster?.stop();
});

type Json = Record<string, unknown>;

async function post(path: string, body: Json): Promise<Response> {
  return fetch(`${cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${cluster.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ ...body, model: cluster.modelId }),
  });
}

interface Fn {
  name: string;
  description: string;
  parameters: Record<string, unknown>;
}

interface Reply {
  text: string;
  calls: string[];
}

const LS: Fn = {
  name: "ls",
  description: "List files",
  parameters: { type: "object", properties: { path: { type: "string" } } },
};
const WEATHER: Fn = {
  name: "get_weather",
  description: "Weather for a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};
const USER = [{ role: "user", content: "What is the weather in Paris?" }];

/** One request on one API, streamed or not, read into its visible text and the names of its calls. */
async function ask(
  api: "chat" | "responses" | "messages",
  tools: Fn[],
  choice: "auto" | "none",
  stream: boolean,
): Promise<Reply> {
  const reply: Reply = { text: "", calls: [] };
  if (api === "chat") {
    const response = await post("/chat/completions", {
      messages: USER,
      max_tokens: 80,
      stream,
      ...(tools.length > 0
        ? { tools: tools.map((f) => ({ type: "function", function: f })), tool_choice: choice }
        : {}),
    });
    expect(response.status).toBe(200);
    type Message = { content?: string | null; tool_calls?: Array<{ function: { name: string } }> };
    const messages: Message[] = stream
      ? (await readSse(response))
          .filter((e) => e.data !== "[DONE]")
          .flatMap((e) => (JSON.parse(e.data) as { choices: Array<{ delta: Message }> }).choices)
          .map((c) => c.delta)
      : ((await response.json()) as { choices: Array<{ message: Message }> }).choices.map((c) => c.message);
    for (const m of messages) {
      reply.text += m.content ?? "";
      for (const c of m.tool_calls ?? []) reply.calls.push(c.function.name);
    }
    return reply;
  }
  if (api === "responses") {
    const response = await post("/responses", {
      input: USER,
      max_output_tokens: 80,
      stream,
      store: false,
      ...(tools.length > 0
        ? { tools: tools.map((f) => ({ type: "function", ...f })), tool_choice: choice }
        : {}),
    });
    expect(response.status).toBe(200);
    type Final = { output: Array<{ type: string; name?: string; content?: Array<{ text: string }> }> };
    const final = stream
      ? (await readSse(response))
          .map((e) => JSON.parse(e.data) as { type: string; response?: Final })
          .find((e) => e.type === "response.completed" || e.type === "response.incomplete")?.response
      : ((await response.json()) as Final);
    for (const item of final?.output ?? []) {
      if (item.type === "function_call") reply.calls.push(String(item.name));
      if (item.type === "message") for (const part of item.content ?? []) reply.text += part.text;
    }
    return reply;
  }
  const response = await post("/messages", {
    messages: USER,
    max_tokens: 80,
    stream,
    ...(tools.length > 0
      ? {
          tools: tools.map((f) => ({ name: f.name, description: f.description, input_schema: f.parameters })),
          tool_choice: { type: choice },
        }
      : {}),
  });
  expect(response.status).toBe(200);
  if (!stream) {
    const json = (await response.json()) as {
      content: Array<{ type: string; text?: string; name?: string }>;
    };
    for (const block of json.content) {
      if (block.type === "text") reply.text += block.text;
      if (block.type === "tool_use") reply.calls.push(String(block.name));
    }
    return reply;
  }
  for (const event of await readSse(response)) {
    const data = JSON.parse(event.data) as {
      type: string;
      delta?: { type: string; text?: string };
      content_block?: { type: string; name?: string };
    };
    if (data.type === "content_block_delta" && data.delta?.type === "text_delta")
      reply.text += data.delta.text;
    if (data.type === "content_block_start" && data.content_block?.type === "tool_use")
      reply.calls.push(String(data.content_block.name));
  }
  return reply;
}

const MARKUP = /<\/?(minimax|invoke|parameter|think)|minimax:|<m$/;

describe("a reply that may not make the calls it wants leaves no tool markup in its text", () => {
  for (const api of ["chat", "responses", "messages"] as const) {
    it(`${api}: tool_choice none, no tools, or only tools that are not its own`, async () => {
      for (const stream of [false, true]) {
        const none = await ask(api, [WEATHER], "none", stream);
        const bare = await ask(api, [], "auto", stream);
        // The cut tag ends the reply: its text is the script's, and nothing else.
        for (const reply of [none, bare]) {
          expect(reply.calls).toEqual([]);
          expect(reply.text, JSON.stringify(reply.text)).not.toMatch(MARKUP);
          expect(reply.text).toBe(SCRIPTED_REPLY.content);
        }
        // Tools that are not its own (Claude Code's): its tag may open only for them.
        const other = await ask(api, [LS], "auto", stream);
        expect(other.text, JSON.stringify(other.text)).not.toMatch(MARKUP);
        expect(other.text).toContain(SCRIPTED_REPLY.content);
        for (const name of other.calls) expect(name).toBe("ls");
      }
    });
  }
});

describe("a json_schema that the grammar engine cannot compile", () => {
  const schema = (pattern: string) => ({
    type: "object",
    properties: { code: { type: "string", pattern } },
    required: ["code"],
    additionalProperties: false,
  });

  it("is refused with a 400 naming the param, on both APIs, every time, and valid ones still work", async () => {
    // More than the couple of dozen aborts that used to break xgrammar's copy for good.
    for (let i = 0; i < 30; i++) {
      const pattern = `(?<=a)b{${i + 1}}`;
      const chat = await post("/chat/completions", {
        messages: USER,
        max_tokens: 40,
        response_format: { type: "json_schema", json_schema: { name: "code", schema: schema(pattern) } },
      });
      const error = ((await chat.json()) as { error: { type: string; param: string; message: string } })
        .error;
      expect(chat.status).toBe(400);
      expect(error).toMatchObject({
        type: "invalid_request_error",
        param: "response_format.json_schema.schema",
      });
      expect(error.message).toMatch(/Lookbehind is not supported/);
    }
    const responses = await post("/responses", {
      input: USER,
      max_output_tokens: 40,
      store: false,
      text: { format: { type: "json_schema", name: "code", schema: schema("\\bword\\b") } },
    });
    expect(responses.status).toBe(400);
    expect(((await responses.json()) as { error: { param: string } }).error.param).toBe("text.format.schema");

    const valid = {
      type: "object",
      properties: { ok: { type: "boolean" }, code: { type: "string", pattern: "^[a-z]{1,3}$" } },
      required: ["ok", "code"],
      additionalProperties: false,
    };
    const response = await post("/chat/completions", {
      messages: USER,
      max_tokens: 60,
      response_format: { type: "json_schema", json_schema: { name: "ok", schema: valid } },
    });
    expect(response.status).toBe(200);
    const choice = ((await response.json()) as { choices: Array<{ message: { content: string } }> })
      .choices[0];
    const ajv = new Ajv({ strict: false });
    expect(ajv.validate(valid, JSON.parse(choice.message.content)), choice.message.content).toBe(true);
  });
});
