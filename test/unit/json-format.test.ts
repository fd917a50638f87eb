// Response formats (node-agent/json-format.ts, xgrammar over the real tokenizer of a generated model): random
// walks that only pick tokens the masks allow, over 200 seeded random JSON schemas, always end in JSON that
// parses and that ajv validates against its schema; json_object gives a JSON object.
import { Ajv } from "ajv";
import { beforeAll, describe, expect, it } from "vitest";
import { jsonSchemaProblem } from "../../common/json-schema-check.js";
import { loadVocabulary, type TokenVocabulary } from "../../common/token-vocabulary.js";
import { JsonFormat } from "../../node-agent/json-format.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";
import { objectSchema, rng } from "../helpers/random-schema.js";

let vocab: TokenVocabulary;
beforeAll(async () => {
  vocab = loadVocabulary(await ensureModel("tiny-4bit", "tiny"));
}, 120_000);

/** Picks among the allowed ids (half the time among those holding JSON punctuation, so values end). */
async function walk(format: JsonFormat, rand: () => number, steps = 300): Promise<string | undefined> {
  const punct = /["{}[\],:]/;
  let text = "";
  for (let n = 0; n < steps; n++) {
    const allowed = [...(await format.allowed())];
    expect(allowed.length).toBeGreaterThan(0);
    const favoured = allowed.filter((id) => punct.test(vocab.bytes[id]) || vocab.stopIds.includes(id));
    const pool = favoured.length > 0 && rand() < 0.5 ? favoured : allowed;
    const token = pool[Math.floor(rand() * pool.length)];
    format.accept(token);
    if (vocab.stopIds.includes(token)) return Buffer.from(text, "latin1").toString("utf8");
    text += vocab.bytes[token];
  }
  return undefined;
}

describe("response formats through xgrammar", () => {
  it("json_schema: 200 random schemas, every finished output parses and validates", async () => {
    const ajv = new Ajv({ strict: false });
    let finished = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const rand = rng(seed);
      const schema = objectSchema(rand);
      const format = new JsonFormat(vocab, { type: "json_schema", schema });
      const text = await walk(format, rand);
      format.dispose();
      if (text === undefined) continue;
      finished++;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (err) {
        throw new Error(`seed ${seed}: ${JSON.stringify(text)}: ${(err as Error).message}`);
      }
      const valid = ajv.validate(schema, value);
      if (!valid)
        throw new Error(`seed ${seed}: ${text} fails ${JSON.stringify(schema)}: ${ajv.errorsText()}`);
    }
    expect(finished).toBeGreaterThan(150);
  }, 300_000);

  it("json_object: a JSON object", async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const format = new JsonFormat(vocab, { type: "json_object" });
      const text = await walk(format, rng(seed), 400);
      format.dispose();
      if (text === undefined) continue;
      expect(JSON.parse(text)).toBeTypeOf("object");
    }
  }, 120_000);

  it("a schema xgrammar cannot compile fails its sequence with xgrammar's reason, as often as it comes", async () => {
    // Each of these used to abort xgrammar in this process; a couple of dozen aborts broke it for every schema.
    const bad = ["(?<=a)b", "(?=a)b", "\\bword\\b", "(a)\\1", "\\p{L}+", "a++"];
    for (let i = 0; i < 30; i++) {
      const pattern = `${bad[i % bad.length]}x{${i + 1}}`;
      expect(await jsonSchemaProblem({ type: "string", pattern })).toMatch(/not supported|not allowed/);
      const format = new JsonFormat(vocab, { type: "json_schema", schema: { type: "string", pattern } });
      await expect(format.allowed()).rejects.toThrow(/cannot compile the JSON schema: Regex parsing error/);
      format.dispose();
    }
    const schema = { type: "string", pattern: "^[a-c]{2}$" };
    expect(await jsonSchemaProblem(schema)).toBeUndefined();
    const format = new JsonFormat(vocab, { type: "json_schema", schema });
    const text = await walk(format, rng(7), 40);
    format.dispose();
    expect(text).toMatch(/^"[a-c]{2}"$/);
  }, 120_000);
});
