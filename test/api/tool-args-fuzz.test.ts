// Seeded random tool lists through the server (issue 14: tool arguments that match each tool's JSON schema): each
// case declares one to three tools with random parameter schemas (strings with a maxLength, integers, booleans,
// string enums, nulls, arrays and nested objects; some parameters optional) on a real one-stage cluster of the
// random tiny model, asks for a call ("required" or a named tool), in turn on Chat Completions and Responses,
// and every call's arguments must validate against its tool's schema (ajv as the judge). The model follows no
// schema by itself: only the masks on the last stage make its calls valid. (Anthropic Messages shares the
// constraint, chat/constraints.ts, but takes no seed nor logit_bias, which a random model needs to end its
// reasoning; anthropic-sdk.test.ts calls tools through it on the scripted model.)
import { Ajv } from "ajv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelTokenizer } from "../../chat/tokenizer.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { randomSchema, rng } from "../helpers/random-schema.js";

const CASES = 40;
let cluster: ApiCluster;
let thinkClose = 0;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 1, contextWindow: 4096 });
  [thinkClose] = ModelTokenizer.fromModelDir(cluster.modelDir).encode("</think>");
}, 180_000);
afterAll(async () => {
  await cluster?.stop();
});

interface Tool {
  name: string;
  parameters: Record<string, unknown>;
}
interface Call {
  name: string;
  args: unknown;
}

/** One to three tools, each with one to four parameters of random schemas, a random part of them required. */
function randomTools(rand: () => number): Tool[] {
  const tools: Tool[] = [];
  const count = 1 + Math.floor(rand() * 3);
  for (let t = 0; t < count; t++) {
    const properties: Record<string, unknown> = {};
    const required: string[] = [];
    const params = 1 + Math.floor(rand() * 4);
    for (let p = 0; p < params; p++) {
      properties[`p${p}`] = randomSchema(rand, 1);
      if (rand() < 0.7) required.push(`p${p}`);
    }
    tools.push({
      name: `tool_${t}`,
      parameters: { type: "object", properties, required, additionalProperties: false },
    });
  }
  return tools;
}

async function post(path: string, body: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(`${cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${cluster.apiKey}` },
    body: JSON.stringify({ model: cluster.modelId, ...(body as object) }),
  });
  const json = (await response.json()) as Record<string, unknown>;
  expect(response.status, JSON.stringify(json)).toBe(200);
  return json;
}

/** The calls of one reply and how it finished, on the API the case number picks. */
async function calls(
  seed: number,
  tools: Tool[],
  named: string | undefined,
  parallel: boolean,
): Promise<{ api: string; calls: Call[]; finish: string }> {
  // The bias only ends the reasoning at once (a random model rarely does); the call is up to the masks.
  const sampling = { temperature: 1, seed, logit_bias: { [thinkClose]: 100 } };
  const messages = [{ role: "user", content: `Call a tool (case ${seed}).` }];
  const api = seed % 2 === 0 ? "chat" : "responses";
  if (api === "chat") {
    const json = await post("/chat/completions", {
      messages,
      max_tokens: 1000,
      tools: tools.map((t) => ({ type: "function", function: t })),
      tool_choice: named ? { type: "function", function: { name: named } } : "required",
      parallel_tool_calls: parallel,
      ...sampling,
    });
    const choice = (
      json.choices as Array<{
        message: { tool_calls?: Array<{ function: { name: string; arguments: string } }> };
        finish_reason: string;
      }>
    )[0];
    const list = (choice.message.tool_calls ?? []).map((c) => ({
      name: c.function.name,
      args: JSON.parse(c.function.arguments) as unknown,
    }));
    return { api, calls: list, finish: choice.finish_reason };
  }
  if (api === "responses") {
    const json = await post("/responses", {
      input: messages,
      max_output_tokens: 1000,
      tools: tools.map((t) => ({ type: "function", ...t })),
      tool_choice: named ? { type: "function", name: named } : "required",
      parallel_tool_calls: parallel,
      ...sampling,
    });
    const output = json.output as Array<{ type: string; name?: string; arguments?: string }>;
    const list = output
      .filter((item) => item.type === "function_call")
      .map((item) => ({ name: String(item.name), args: JSON.parse(String(item.arguments)) as unknown }));
    return { api, calls: list, finish: String(json.status) };
  }
  throw new Error(`no API ${api}`);
}

describe("tool arguments through the server", () => {
  it(`${CASES} seeded random tool lists: every call's arguments validate against its tool's schema`, async () => {
    const ajv = new Ajv({ strict: false });
    const finishes = new Map<string, number>();
    let total = 0;
    for (let seed = 1; seed <= CASES; seed++) {
      const rand = rng(seed * 7919);
      const tools = randomTools(rand);
      const named = rand() < 0.5 ? tools[Math.floor(rand() * tools.length)].name : undefined;
      const parallel = rand() < 0.5;
      const reply = await calls(seed, tools, named, parallel);
      const key = `${reply.api}:${reply.finish}`;
      finishes.set(key, (finishes.get(key) ?? 0) + 1);
      const where = `seed ${seed} (${reply.api}), tools ${JSON.stringify(tools)}, named ${named}, calls ${JSON.stringify(reply.calls)}`;
      expect(["tool_calls", "completed", "tool_use"], where).toContain(reply.finish);
      expect(reply.calls.length, where).toBeGreaterThan(0);
      if (!parallel) expect(reply.calls.length, where).toBe(1);
      for (const call of reply.calls) {
        const tool = tools.find((t) => t.name === call.name);
        expect(tool, where).toBeDefined();
        if (named) expect(call.name, where).toBe(named);
        expect(ajv.validate(tool?.parameters ?? {}, call.args), `${where}: ${ajv.errorsText()}`).toBe(true);
        total++;
      }
    }
    console.log(
      `tool arguments through the server: ${CASES} cases, ${total} calls, finishes ${JSON.stringify([...finishes])}`,
    );
  }, 120_000);
});
