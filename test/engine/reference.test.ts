// The reference forward pass and its building blocks: bit packing, affine (de)quantization, rms norm, rope,
// KV-cache consistency, quantized vs unquantized agreement, and the scripted model's greedy reply.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateCorpus } from "../../cli/make-model/corpus.js";
import { makeModel } from "../../cli/make-model/index.js";
import { PRESETS } from "../../cli/make-model/presets.js";
import { packBits, quantizeAffine } from "../../cli/make-model/quantize.js";
import { Random } from "../../cli/make-model/random.js";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { seededValues, weightDefs } from "../../cli/make-model/weights.js";
import { readModelConfig } from "../../common/model-config.js";
import { bf16ToFloat, floatToBf16, readAllHeaders } from "../../common/safetensors.js";
import {
  dequantize,
  loadWeight,
  ReferenceModel,
  rmsNorm,
  ropeInPlace,
  unpackBits,
} from "../helpers/reference-minimax-m2.js";

const work = mkdtempSync(join(tmpdir(), "h2-reference-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("bit packing (LSB first, continuous bit stream)", () => {
  // Hand-computed words: each case puts a value where it is easy to follow, including across word boundaries.
  const cases: { bits: number; values: number[]; words: number[] }[] = [
    { bits: 2, values: [3, 0, 1, 2, ...new Array(12).fill(0)], words: [0x93] },
    { bits: 4, values: [1, 2, 3, 4, 5, 6, 7, 8], words: [0x87654321] },
    { bits: 8, values: [1, 2, 3, 0xff], words: [0xff030201] },
    // value 10 sits at bits 30..32: low two bits end word 0, the high bit starts word 1
    { bits: 3, values: Array.from({ length: 32 }, (_, i) => (i === 10 ? 5 : 0)), words: [0x40000000, 1, 0] },
    // value 6 sits at bits 30..34
    {
      bits: 5,
      values: Array.from({ length: 32 }, (_, i) => (i === 6 ? 31 : 0)),
      words: [0xc0000000, 7, 0, 0, 0],
    },
    // value 5 sits at bits 30..35: 42 = 0b101010 -> low "10" in word 0, high "1010" in word 1
    {
      bits: 6,
      values: Array.from({ length: 16 }, (_, i) => (i === 5 ? 42 : 0)),
      words: [0x80000000, 0xa, 0],
    },
  ];
  for (const c of cases) {
    it(`${c.bits}-bit: pack gives the hand-computed words and unpack gives the values back`, () => {
      expect(Array.from(packBits(c.values, c.bits))).toEqual(c.words);
      expect(Array.from(unpackBits(Uint32Array.from(c.words), c.values.length, c.bits))).toEqual(c.values);
    });
  }

  it("round-trips random values for every supported width", () => {
    const rng = new Random(7);
    for (const bits of [2, 3, 4, 5, 6, 8]) {
      const values = Array.from({ length: 320 }, () => rng.int(2 ** bits));
      expect(Array.from(unpackBits(packBits(values, bits), values.length, bits))).toEqual(values);
    }
  });
});

describe("affine quantization", () => {
  const bf16 = (x: number) => bf16ToFloat(floatToBf16(x));
  for (const bits of [2, 3, 4, 5, 6, 8])
    for (const gs of [32, 64, 128]) {
      it(`${bits}-bit group ${gs}: dequantized values stay within half a step of the originals`, () => {
        const rng = new Random(bits * 1000 + gs);
        const rows = 4;
        const cols = 256;
        const w = Float32Array.from({ length: rows * cols }, () => rng.normal() * 0.05);
        const q = quantizeAffine(w, rows, cols, bits, gs, bf16);
        const back = dequantize(q.packed, q.scales, q.biases, rows, cols, bits, gs);
        for (let i = 0; i < w.length; i++) {
          const g = Math.floor(i / gs);
          // half a step, plus what rounding scale and bias to bf16 can add at the ends of the range
          const bound = 0.5 * q.scales[g] + 2 ** -8 * (Math.abs(q.biases[g]) + (2 ** bits - 1) * q.scales[g]);
          expect(Math.abs(back[i] - w[i])).toBeLessThanOrEqual(bound + 1e-7);
        }
      });
    }

  it("more bits give smaller errors", () => {
    const rng = new Random(3);
    const w = Float32Array.from({ length: 64 * 128 }, () => rng.normal());
    const err = (bits: number) => {
      const q = quantizeAffine(w, 64, 128, bits, 64, Math.fround);
      const back = dequantize(q.packed, q.scales, q.biases, 64, 128, bits, 64);
      return w.reduce((s, x, i) => s + Math.abs(x - back[i]), 0) / w.length;
    };
    const errors = [2, 3, 4, 5, 6, 8].map(err);
    for (let i = 1; i < errors.length; i++) expect(errors[i]).toBeLessThan(errors[i - 1]);
  });
});

describe("rms norm and rope", () => {
  it("rms norm of [3, 4] with unit weight is [3, 4] / sqrt(12.5)", () => {
    const out = rmsNorm(Float32Array.from([3, 4]), Float32Array.from([1, 1]), 0);
    expect(out[0]).toBeCloseTo(3 / Math.sqrt(12.5), 6);
    expect(out[1]).toBeCloseTo(4 / Math.sqrt(12.5), 6);
    const weighted = rmsNorm(Float32Array.from([3, 4]), Float32Array.from([2, 0.5]), 0);
    expect(weighted[0]).toBeCloseTo(6 / Math.sqrt(12.5), 6);
    expect(weighted[1]).toBeCloseTo(2 / Math.sqrt(12.5), 6);
  });

  it("rope at position 0 is the identity", () => {
    const x = Float32Array.from({ length: 8 }, (_, i) => i + 1);
    const y = Float32Array.from(x);
    ropeInPlace(y, 0, 4, 0, 10000);
    expect(Array.from(y)).toEqual(Array.from(x));
  });

  it("rope pairs dim j with dim j + rotary/2 and leaves dims past rotary_dim alone", () => {
    // head_dim 8, rotary_dim 4: pairs (0,2) at frequency 1 and (1,3) at theta^(-1/2)
    const x = Float32Array.from([1, 0, 0, 0, 5, 6, 7, 8]);
    ropeInPlace(x, 0, 4, 3, 100);
    expect(x[0]).toBeCloseTo(Math.cos(3), 6);
    expect(x[2]).toBeCloseTo(Math.sin(3), 6);
    expect(x[1]).toBeCloseTo(0, 6);
    expect(x[3]).toBeCloseTo(0, 6);
    expect(Array.from(x.slice(4))).toEqual([5, 6, 7, 8]);
    const y = Float32Array.from([0, 1, 0, 0]);
    ropeInPlace(y, 0, 4, 2, 100);
    expect(y[1]).toBeCloseTo(Math.cos(2 / 10), 6);
    expect(y[3]).toBeCloseTo(Math.sin(2 / 10), 6);
  });

  it("rope applies to the head at the given offset only", () => {
    const x = Float32Array.from([1, 0, 0, 0, 1, 0, 0, 0]);
    ropeInPlace(x, 4, 4, 1, 100);
    expect(Array.from(x.slice(0, 4))).toEqual([1, 0, 0, 0]);
    expect(x[4]).toBeCloseTo(Math.cos(1), 6);
    expect(x[6]).toBeCloseTo(Math.sin(1), 6);
  });
});

describe("reference forward on the tiny preset", () => {
  const tinyDir = join(work, "tiny");
  const f32Dir = join(work, "tiny-f32");
  let model: ReferenceModel;
  beforeAll(async () => {
    await makeModel({ dir: tinyDir, preset: "tiny" });
    await makeModel({ dir: f32Dir, preset: "tiny", bits: 0, dtype: "f32" });
    model = await ReferenceModel.load(tinyDir);
  });

  const tokens = [5, 300, 17, 1200, 42, 999, 7, 512];

  it("gives finite logits that differ between tokens", () => {
    const logits = model.forward(tokens, 0);
    expect(logits).toHaveLength(tokens.length);
    for (const row of logits) {
      expect(row).toHaveLength(model.config.vocabSize);
      expect(row.every(Number.isFinite)).toBe(true);
    }
    const spread = (row: Float32Array) => Math.max(...row) - Math.min(...row);
    expect(spread(logits[0])).toBeGreaterThan(1);
    expect(logits[0].some((v, i) => Math.abs(v - logits[1][i]) > 0.1)).toBe(true);
  });

  it("decoding token by token with the KV cache equals one prefill", () => {
    const all = model.forward(tokens, 0);
    model.truncate(0);
    const first = model.forward(tokens.slice(0, 3), 0);
    const rest = tokens.slice(3).map((t, i) => model.forward([t], 3 + i)[0]);
    const stepwise = [...first, ...rest];
    for (let p = 0; p < tokens.length; p++)
      for (let i = 0; i < all[p].length; i++) expect(Math.abs(stepwise[p][i] - all[p][i])).toBeLessThan(1e-3);
  });

  it("restarting at an earlier position recomputes from the cached prefix", () => {
    const all = model.forward(tokens, 0);
    const again = model.forward(tokens.slice(5), 5);
    for (let p = 0; p < again.length; p++)
      for (let i = 0; i < again[p].length; i++)
        expect(Math.abs(again[p][i] - all[5 + p][i])).toBeLessThan(1e-3);
    expect(() => model.forward([1], model.cacheLength + 1)).toThrow(/past the cache/);
    expect(() => model.forward([model.config.vocabSize], 0)).toThrow(/outside the vocabulary/);
  });

  it("routes each token to k distinct experts with weights summing to 1", () => {
    const x = model.embedTokens([9])[0];
    const r = model.route(0, x);
    expect(r.experts).toHaveLength(model.config.expertsPerToken);
    expect(new Set(r.experts).size).toBe(r.experts.length);
    expect(r.weights.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    expect(r.weights.every((w) => w > 0)).toBe(true);
  });

  it("dequantized checkpoint weights match the generator's float weights", () => {
    const config = readModelConfig(tinyDir);
    const headers = readAllHeaders(tinyDir);
    const defs = weightDefs({
      shape: { ...PRESETS.tiny, vocabSize: config.vocabSize },
      bits: 4,
      groupSize: 64,
      dtype: "bf16",
    });
    for (const path of [
      "model.layers.0.self_attn.q_proj",
      "model.layers.2.block_sparse_moe.switch_mlp.down_proj",
      "model.layers.1.block_sparse_moe.gate",
    ]) {
      const def = defs.find((d) => d.path === path)!;
      const original = seededValues(def, 0);
      const loaded = loadWeight(config, headers, path);
      expect(loaded.length).toBe(original.length);
      let err = 0;
      let mag = 0;
      for (let i = 0; i < original.length; i++) {
        err += Math.abs(loaded[i] - original[i]);
        mag += Math.abs(original[i]);
      }
      // 4-bit (router 8-bit) affine quantization of normal values: mean error well under 10% of mean magnitude
      expect(err / mag).toBeLessThan(0.1);
    }
  });

  it("an unquantized f32 checkpoint stores the generator's floats exactly", () => {
    const config = readModelConfig(f32Dir);
    expect(config.quantization).toBeUndefined();
    const headers = readAllHeaders(f32Dir);
    const defs = weightDefs({
      shape: { ...PRESETS.tiny, vocabSize: config.vocabSize },
      bits: 0,
      groupSize: 64,
      dtype: "f32",
    });
    const def = defs.find((d) => d.path === "model.layers.3.self_attn.k_proj")!;
    expect(Array.from(loadWeight(config, headers, def.path))).toEqual(
      Array.from(seededValues(def, 0).map(Math.fround)),
    );
  });

  it("quantized checkpoints approach the unquantized model's logits as bits grow", async () => {
    const exact = await ReferenceModel.load(f32Dir);
    const want = exact.forward(tokens, 0);
    const distance = async (bits: number, groupSize: number) => {
      const dir = join(work, `tiny-${bits}-${groupSize}`);
      await makeModel({ dir, preset: "tiny", bits, groupSize });
      const got = (await ReferenceModel.load(dir)).forward(tokens, 0);
      let num = 0;
      let den = 0;
      for (let p = 0; p < got.length; p++)
        for (let i = 0; i < got[p].length; i++) {
          num += (got[p][i] - want[p][i]) ** 2;
          den += want[p][i] ** 2;
        }
      return Math.sqrt(num / den);
    };
    const d3 = await distance(3, 32);
    const d6 = await distance(6, 128);
    const d8 = await distance(8, 64);
    console.log(
      `relative logit distance to f32: 3-bit/32 ${d3.toFixed(3)}, 6-bit/128 ${d6.toFixed(3)}, 8-bit/64 ${d8.toFixed(3)}`,
    );
    expect(d8).toBeLessThan(0.15);
    expect(d8).toBeLessThan(d6);
    expect(d6).toBeLessThan(d3);
    expect(d3).toBeLessThan(1);
  });
});

describe("scripted preset", () => {
  const dir = join(work, "scripted");
  let model: ReferenceModel;
  let tokenizer: Tokenizer;
  let template: Template;
  beforeAll(async () => {
    await makeModel({ dir, preset: "scripted" });
    model = await ReferenceModel.load(dir);
    tokenizer = new Tokenizer(
      JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")),
      JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")),
    );
    template = new Template(readFileSync(join(dir, "chat_template.jinja"), "utf8"));
  });

  const greedy = (prompt: number[]) => {
    const out: number[] = [];
    let logits = model.forwardLast(prompt, 0);
    let pos = prompt.length;
    while (out.length < 64) {
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
      out.push(best);
      if (best === model.config.eosTokenId) break;
      logits = model.forwardLast([best], pos++);
    }
    return out;
  };

  const check = (content: string) => {
    const prompt = template.render({
      messages: [
        { role: "system", content: "You are a test model." },
        { role: "user", content },
      ],
      add_generation_prompt: true,
    });
    const ids = tokenizer.encode(prompt, { add_special_tokens: false }).ids;
    const out = greedy(ids);
    expect(out[out.length - 1]).toBe(model.config.eosTokenId);
    expect(tokenizer.decode(out.slice(0, -1), { skip_special_tokens: false })).toBe(SCRIPTED_REPLY.text);
    return ids.length;
  };

  it("greedily emits the script, then EOS, after a short prompt", () => {
    check("What is the weather in Paris?");
  });

  it("greedily emits the script after a ~2k-token prompt", () => {
    const length = check(generateCorpus(11, 8000));
    expect(length).toBeGreaterThan(1500);
  });
});
