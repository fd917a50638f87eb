// 200 seeded random JSON schemas through the server (issue 14's proof of constrained decoding): each goes to a
// real one-stage cluster of the random tiny model as a json_schema response format, half on Chat Completions and
// half on Responses, and every reply must parse and validate against its schema (ajv as the judge). The model
// follows no schema by itself: only the mask on the last stage makes its replies valid.
import { Ajv } from "ajv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelTokenizer } from "../../chat/tokenizer.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { objectSchema, rng } from "../helpers/random-schema.js";

const SCHEMAS = 200;
let cluster: ApiCluster;
let thinkClose = 0;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 1, contextWindow: 2048 });
  [thinkClose] = ModelTokenizer.fromModelDir(cluster.modelDir).encode("</think>");
}, 180_000);
afterAll(async () => {
  await cluster?.stop();
});

async function post(path: string, body: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(`${cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${cluster.apiKey}` },
    body: JSON.stringify(body),
  });
  const json = (await response.json()) as Record<string, unknown>;
  expect(response.status, JSON.stringify(json)).toBe(200);
  return json;
}

/** The reply's text and how it finished, on either API. */
async function reply(seed: number, schema: object): Promise<{ text: string; finish: string }> {
  // The bias only ends the reasoning at once (a random model rarely does); what follows is up to the mask.
  const sampling = { temperature: 1, seed, logit_bias: { [thinkClose]: 100 } };
  const input = [{ role: "user", content: `Answer in JSON (case ${seed}).` }];
  if (seed % 2 === 0) {
    const format = { type: "json_schema", json_schema: { name: `case_${seed}`, schema, strict: true } };
    const json = await post("/chat/completions", {
      messages: input,
      max_tokens: 600,
      response_format: format,
      ...sampling,
    });
    const choice = (json.choices as Array<{ message: { content: string | null }; finish_reason: string }>)[0];
    return { text: choice.message.content ?? "", finish: choice.finish_reason };
  }
  const format = { type: "json_schema", name: `case_${seed}`, schema, strict: true };
  const json = await post("/responses", { input, max_output_tokens: 600, text: { format }, ...sampling });
  const output = json.output as Array<{ type: string; content?: Array<{ type: string; text: string }> }>;
  const message = output.find((item) => item.type === "message");
  return { text: message?.content?.[0]?.text ?? "", finish: String(json.status) };
}

describe("json_schema response formats through the server", () => {
  it(`${SCHEMAS} seeded random schemas: every reply parses and validates`, async () => {
    const ajv = new Ajv({ strict: false });
    const finishes = new Map<string, number>();
    for (let seed = 1; seed <= SCHEMAS; seed++) {
      const schema = objectSchema(rng(seed));
      const { text, finish } = await reply(seed, schema);
      finishes.set(finish, (finishes.get(finish) ?? 0) + 1);
      const where = `seed ${seed}, schema ${JSON.stringify(schema)}, reply ${JSON.stringify(text)}`;
      expect(["stop", "completed"], where).toContain(finish);
      let value: unknown;
      expect(() => {
        value = JSON.parse(text);
      }, where).not.toThrow();
      expect(ajv.validate(schema, value), `${where}: ${ajv.errorsText()}`).toBe(true);
    }
    console.log(
      `json_schema through the server: ${SCHEMAS} schemas, finishes ${JSON.stringify([...finishes])}`,
    );
  });
});
