// tool_choice and parallel_tool_calls are obeyed on both APIs, by masks on the last stage (docs/api.md "Tool
// choice"). Two real clusters: the scripted model (two stages), which calls get_weather and get_time in every
// reply unless a mask stops it, and the random tiny model, which never calls a tool by itself, so only a mask
// can make it call the named or a required function; many seeds, so nothing passes by luck.
import { Ajv } from "ajv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelTokenizer } from "../../chat/tokenizer.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";

interface Call {
  name: string;
  arguments: string;
}
interface Reply {
  content: string;
  calls: Call[];
  finish: string;
}

const WEATHER = {
  name: "get_weather",
  description: "Weather for a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};
const TIME = {
  name: "get_time",
  description: "Time in a zone",
  parameters: {
    type: "object",
    properties: { zone: { type: "string" }, utc_offset: { type: "integer" } },
    required: ["zone"],
  },
};
const LS = { name: "ls", description: "List files", parameters: { type: "object", properties: {} } };
const PWD = { name: "pwd", description: "Current folder", parameters: { type: "object", properties: {} } };
type Fn = typeof WEATHER | typeof LS;

async function post(cluster: ApiCluster, path: string, body: unknown): Promise<Response> {
  return fetch(`${cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${cluster.apiKey}` },
    body: JSON.stringify(body),
  });
}

/** Chat Completions, streamed or not, read into content + calls. */
async function chat(cluster: ApiCluster, body: Record<string, unknown>, stream = false): Promise<Reply> {
  const tools = (body.tools as Fn[] | undefined)?.map((f) => ({ type: "function", function: f }));
  const response = await post(cluster, "/chat/completions", { ...body, tools, stream });
  expect(response.status).toBe(200);
  if (!stream) {
    const json = (await response.json()) as {
      choices: Array<{
        message: { content: string | null; tool_calls?: Array<{ function: Call }> };
        finish_reason: string;
      }>;
    };
    const choice = json.choices[0];
    return {
      content: choice.message.content ?? "",
      calls: (choice.message.tool_calls ?? []).map((c) => c.function),
      finish: choice.finish_reason,
    };
  }
  const reply: Reply = { content: "", calls: [], finish: "" };
  for (const event of await readSse(response)) {
    if (event.data === "[DONE]") continue;
    const chunk = JSON.parse(event.data) as {
      choices: Array<{
        delta: { content?: string; tool_calls?: Array<{ function: Call }> };
        finish_reason: string | null;
      }>;
    };
    for (const choice of chunk.choices) {
      reply.content += choice.delta.content ?? "";
      for (const c of choice.delta.tool_calls ?? []) reply.calls.push(c.function);
      if (choice.finish_reason) reply.finish = choice.finish_reason;
    }
  }
  return reply;
}

/** The Responses API, streamed or not, read into content + calls. */
async function responses(cluster: ApiCluster, body: Record<string, unknown>, stream = false): Promise<Reply> {
  const { messages, max_tokens, ...rest } = body;
  const tools = (body.tools as Fn[] | undefined)?.map((f) => ({ type: "function", ...f }));
  const response = await post(cluster, "/responses", {
    ...rest,
    input: messages,
    max_output_tokens: max_tokens,
    tools,
    stream,
    store: false,
  });
  expect(response.status).toBe(200);
  let final: { output: Array<Record<string, unknown>>; status: string } | undefined;
  if (!stream) final = (await response.json()) as typeof final;
  else
    for (const event of await readSse(response)) {
      const data = JSON.parse(event.data) as { type: string; response?: typeof final };
      if (data.type === "response.completed" || data.type === "response.incomplete") final = data.response;
    }
  if (!final) throw new Error("no terminal event");
  const reply: Reply = { content: "", calls: [], finish: final.status };
  for (const item of final.output) {
    if (item.type === "function_call")
      reply.calls.push({ name: String(item.name), arguments: String(item.arguments) });
    if (item.type === "message")
      for (const part of item.content as Array<{ text: string }>) reply.content += part.text;
  }
  return reply;
}

const APIS = [
  ["chat completions", chat],
  ["responses", responses],
] as const;
const USER = [{ role: "user", content: "What is the weather in Paris?" }];

describe("the scripted model (which calls get_weather and get_time by itself)", () => {
  let cluster: ApiCluster;
  beforeAll(async () => {
    cluster = await startApiCluster({ preset: "scripted", stages: 2, contextWindow: 4096 });
  }, 180_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  for (const [api, call] of APIS) {
    it(`${api}: auto still gets both calls (the grammar lets a valid reply through)`, async () => {
      const reply = await call(cluster, { messages: USER, tools: [WEATHER, TIME], max_tokens: 200 });
      expect(reply.calls.map((c) => c.name)).toEqual(["get_weather", "get_time"]);
    });

    it(`${api}: tool_choice none gets no tool call, streamed or not`, async () => {
      for (const stream of [false, true]) {
        const reply = await call(
          cluster,
          { messages: USER, tools: [WEATHER, TIME], tool_choice: "none", max_tokens: 60 },
          stream,
        );
        expect(reply.calls).toEqual([]);
        expect(reply.content).toContain("Checking both now");
      }
    });

    it(`${api}: without tools, or with only one declared, no undeclared function comes back`, async () => {
      expect((await call(cluster, { messages: USER, max_tokens: 60 })).calls).toEqual([]);
      const one = await call(cluster, { messages: USER, tools: [WEATHER], max_tokens: 120 });
      expect(one.calls.length).toBeGreaterThan(0);
      for (const c of one.calls) expect(c.name).toBe("get_weather");
    });

    it(`${api}: parallel_tool_calls false gets exactly one call`, async () => {
      const reply = await call(cluster, {
        messages: USER,
        tools: [WEATHER, TIME],
        parallel_tool_calls: false,
        max_tokens: 200,
      });
      expect(reply.calls).toEqual([{ name: "get_weather", arguments: '{"city":"Paris"}' }]);
    });
  }
});

describe("the random tiny model (which calls no tool by itself)", () => {
  let cluster: ApiCluster;
  let thinkClose = 0;
  beforeAll(async () => {
    cluster = await startApiCluster({ preset: "tiny", stages: 2, contextWindow: 2048 });
    const tokenizer = ModelTokenizer.fromModelDir(cluster.modelDir);
    [thinkClose] = tokenizer.encode("</think>");
  }, 180_000);
  afterAll(async () => {
    await cluster?.stop();
  });
  /** The bias only ends the reasoning at once; what follows it is up to the mask. */
  const sampled = (seed: number) => ({ temperature: 1, seed, logit_bias: { [thinkClose]: 100 } });

  it("unconstrained, it calls nothing (so the calls below are the mask's doing)", async () => {
    for (let seed = 1; seed <= 6; seed++) {
      const reply = await chat(cluster, {
        messages: USER,
        tools: [LS, PWD],
        max_tokens: 40,
        ...sampled(seed),
      });
      expect(reply.calls).toEqual([]);
    }
  });

  for (const [api, call] of APIS) {
    it(`${api}: a named function is called, once, with parallel_tool_calls false, at every seed`, async () => {
      for (let seed = 1; seed <= 8; seed++) {
        const body = {
          messages: USER,
          tools: [LS, PWD],
          tool_choice:
            api === "responses"
              ? { type: "function", name: "pwd" }
              : { type: "function", function: { name: "pwd" } },
          parallel_tool_calls: false,
          max_tokens: 300,
          ...sampled(seed),
        };
        const reply = await call(cluster, body, seed % 2 === 0);
        expect(reply.calls).toEqual([{ name: "pwd", arguments: "{}" }]);
        expect(reply.finish).toBe(api === "responses" ? "completed" : "tool_calls");
      }
    });

    it(`${api}: required gets at least one call of a declared function, at every seed`, async () => {
      for (let seed = 11; seed <= 18; seed++) {
        const reply = await call(cluster, {
          messages: USER,
          tools: [LS, PWD],
          tool_choice: "required",
          max_tokens: 400,
          ...sampled(seed),
        });
        expect(reply.calls.length).toBeGreaterThan(0);
        for (const c of reply.calls) {
          expect(["ls", "pwd"]).toContain(c.name);
          expect(c.arguments).toBe("{}");
        }
      }
    });
  }

  const SCHEMA = {
    type: "object",
    properties: {
      city: { type: "string", maxLength: 8 },
      days: { type: "integer", minimum: 1, maximum: 7 },
      sunny: { type: "boolean" },
    },
    required: ["city", "days", "sunny"],
    additionalProperties: false,
  };

  for (const [api, call] of APIS) {
    it(`${api}: a json_schema response format gives JSON that validates, at every seed`, async () => {
      const ajv = new Ajv({ strict: false });
      const format =
        api === "responses"
          ? { text: { format: { type: "json_schema", name: "weather", schema: SCHEMA, strict: true } } }
          : {
              response_format: {
                type: "json_schema",
                json_schema: { name: "weather", schema: SCHEMA, strict: true },
              },
            };
      for (let seed = 21; seed <= 26; seed++) {
        const reply = await call(
          cluster,
          { messages: USER, max_tokens: 400, ...format, ...sampled(seed) },
          seed % 2 === 0,
        );
        expect(reply.calls).toEqual([]);
        expect(reply.finish).toBe(api === "responses" ? "completed" : "stop");
        const value = JSON.parse(reply.content) as unknown;
        expect(ajv.validate(SCHEMA, value), `${reply.content}: ${ajv.errorsText()}`).toBe(true);
      }
    });
  }

  it("json_object gives a JSON object", async () => {
    for (let seed = 31; seed <= 34; seed++) {
      const reply = await chat(cluster, {
        messages: USER,
        max_tokens: 400,
        response_format: { type: "json_object" },
        ...sampled(seed),
      });
      if (reply.finish === "stop") expect(JSON.parse(reply.content)).toBeTypeOf("object");
    }
  });

  it("the same seed gives the same constrained reply", async () => {
    const body = {
      messages: USER,
      tools: [LS, PWD],
      tool_choice: "required",
      max_tokens: 300,
      ...sampled(5),
    };
    const a = await chat(cluster, body);
    const b = await chat(cluster, body, true);
    expect(b).toEqual(a);
  });

  it("refuses required without tools", async () => {
    const response = await post(cluster, "/chat/completions", { messages: USER, tool_choice: "required" });
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { param: string } }).error.param).toBe("tool_choice");
  });
});
