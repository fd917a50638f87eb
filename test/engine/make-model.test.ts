// The checkpoint generator: MLX layout (config, shards, index), tensor names/shapes/dtypes, determinism,
// unquantized variants, option errors, and the `cluster make-model` command.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { register } from "../../cli/commands/make-model.js";
import { buildTokenizer, makeModel, planCheckpoint } from "../../cli/make-model/index.js";
import { PRESETS } from "../../cli/make-model/presets.js";
import { randomPackedModule, tensorSpecs, weightDefs } from "../../cli/make-model/weights.js";
import { readModelConfig } from "../../common/model-config.js";
import {
  readIndex,
  readSafetensorsHeader,
  type SafetensorsHeader,
  tensorBytes,
  toFloat32,
} from "../../common/safetensors.js";
import { dequantize } from "../helpers/reference-minimax-m2.js";

const work = mkdtempSync(join(tmpdir(), "h2-make-model-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function shardHeaders(dir: string): Map<string, SafetensorsHeader> {
  const files = readdirSync(dir).filter((f) => f.endsWith(".safetensors"));
  return new Map(files.map((f) => [f, readSafetensorsHeader(join(dir, f))]));
}

describe("tiny checkpoint (4-bit, group 64)", () => {
  const dir = join(work, "tiny");
  let config: Record<string, unknown>;
  let headers: Map<string, SafetensorsHeader>;
  beforeAll(async () => {
    const progress: number[] = [];
    await makeModel({ dir, preset: "tiny", onProgress: (done) => progress.push(done) });
    expect(progress.length).toBeGreaterThan(10);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    headers = shardHeaders(dir);
  });

  it("writes the files of an MLX MiniMax-M2 conversion", () => {
    for (const file of [
      "config.json",
      "tokenizer.json",
      "tokenizer_config.json",
      "chat_template.jinja",
      "model.safetensors.index.json",
    ])
      expect(existsSync(join(dir, file)), file).toBe(true);
    expect([...headers.keys()].sort()).toEqual([
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
    ]);
  });

  it("has every config.json field of docs/model.md with the preset's sizes", () => {
    const t = PRESETS.tiny;
    expect(config).toMatchObject({
      architectures: ["MiniMaxM2ForCausalLM"],
      model_type: "minimax_m2",
      hidden_size: t.hiddenSize,
      num_hidden_layers: t.numLayers,
      num_attention_heads: t.numHeads,
      num_key_value_heads: t.numKvHeads,
      head_dim: t.headDim,
      rotary_dim: t.rotaryDim,
      partial_rotary_factor: t.rotaryDim / t.headDim,
      rope_theta: t.ropeTheta,
      rms_norm_eps: 1e-6,
      intermediate_size: t.intermediateSize,
      num_local_experts: t.numExperts,
      num_experts_per_tok: t.expertsPerToken,
      scoring_func: "sigmoid",
      use_routing_bias: true,
      use_qk_norm: true,
      qk_norm_type: "per_layer",
      shared_intermediate_size: 0,
      tie_word_embeddings: false,
      max_position_embeddings: t.maxPositionEmbeddings,
      vocab_size: t.vocabSize,
    });
    const parsed = readModelConfig(dir);
    expect(parsed.quantization).toEqual({ bits: 4, groupSize: 64 });
    expect(config.quantization_config).toEqual(config.quantization);
    const quant = config.quantization as Record<string, unknown>;
    expect(quant.mode).toBe("affine");
    for (let l = 0; l < t.numLayers; l++)
      expect(parsed.quantOverrides[`model.layers.${l}.block_sparse_moe.gate`]).toEqual({
        bits: 8,
        groupSize: 64,
      });
  });

  it("names bos/eos as the tokenizer's ]~!b[ and [e~[", () => {
    const tokenizer = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
    const idOf = (content: string) =>
      tokenizer.added_tokens.find((t: { content: string }) => t.content === content).id;
    expect(config.bos_token_id).toBe(idOf("]~!b["));
    expect(config.eos_token_id).toBe(idOf("[e~["));
    const tc = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
    expect(tc).toMatchObject({ bos_token: "]~!b[", eos_token: "[e~[" });
    expect(tc.chat_template).toBe(readFileSync(join(dir, "chat_template.jinja"), "utf8"));
  });

  it("writes shards with mlx metadata, name-sorted tensors and an 8-byte aligned header", () => {
    for (const [file, header] of headers) {
      expect(header.metadata).toEqual({ format: "mlx" });
      expect(header.dataStart % 8, file).toBe(0);
      const tensors = [...header.tensors.values()];
      const byOffset = [...tensors].sort((a, b) => a.byteOffset - b.byteOffset).map((t) => t.name);
      expect(byOffset).toEqual(tensors.map((t) => t.name).sort());
      expect(tensors.length).toBeGreaterThan(10);
    }
  });

  it("indexes every tensor in the shard that holds it, with the total size", () => {
    const index = readIndex(dir);
    let total = 0;
    let count = 0;
    for (const [file, header] of headers)
      for (const info of header.tensors.values()) {
        expect(index.weightMap[info.name]).toBe(file);
        total += info.byteLength;
        count++;
      }
    expect(Object.keys(index.weightMap)).toHaveLength(count);
    expect(index.totalSize).toBe(total);
  });

  it("stores every tensor of docs/model.md with the MLX shapes and dtypes", () => {
    const all = new Map([...headers.values()].flatMap((h) => [...h.tensors.entries()]));
    const t = PRESETS.tiny;
    const v = t.vocabSize;
    const h = t.hiddenSize;
    const q = t.numHeads * t.headDim;
    const kv = t.numKvHeads * t.headDim;
    const e = t.numExperts;
    const f = t.intermediateSize;
    const expectTensor = (name: string, dtype: string, shape: number[]) => {
      const info = all.get(name);
      expect(info, name).toBeDefined();
      expect([info?.dtype, info?.shape], name).toEqual([dtype, shape]);
    };
    const quantized = (
      path: string,
      lead: number[],
      cols: number,
      bits = 4,
      gs = 64,
      scaleDtype = "BF16",
    ) => {
      expectTensor(`${path}.weight`, "U32", [...lead, (cols * bits) / 32]);
      expectTensor(`${path}.scales`, scaleDtype, [...lead, cols / gs]);
      expectTensor(`${path}.biases`, scaleDtype, [...lead, cols / gs]);
    };
    quantized("model.embed_tokens", [v], h);
    quantized("lm_head", [v], h);
    expectTensor("model.norm.weight", "BF16", [h]);
    for (let l = 0; l < t.numLayers; l++) {
      const p = `model.layers.${l}`;
      expectTensor(`${p}.input_layernorm.weight`, "BF16", [h]);
      expectTensor(`${p}.post_attention_layernorm.weight`, "BF16", [h]);
      quantized(`${p}.self_attn.q_proj`, [q], h);
      quantized(`${p}.self_attn.k_proj`, [kv], h);
      quantized(`${p}.self_attn.v_proj`, [kv], h);
      quantized(`${p}.self_attn.o_proj`, [h], q);
      expectTensor(`${p}.self_attn.q_norm.weight`, "BF16", [q]);
      expectTensor(`${p}.self_attn.k_norm.weight`, "BF16", [kv]);
      quantized(`${p}.block_sparse_moe.gate`, [e], h, 8, 64, "F32");
      expectTensor(`${p}.block_sparse_moe.e_score_correction_bias`, "F32", [e]);
      quantized(`${p}.block_sparse_moe.switch_mlp.gate_proj`, [e, f], h);
      quantized(`${p}.block_sparse_moe.switch_mlp.up_proj`, [e, f], h);
      quantized(`${p}.block_sparse_moe.switch_mlp.down_proj`, [e, h], f);
    }
    expect(all.size).toBe(7 + t.numLayers * 29);
  });

  it("gives the same bytes for the same seed and different weights for another seed", async () => {
    const again = join(work, "tiny-again");
    const other = join(work, "tiny-seed-5");
    await makeModel({ dir: again, preset: "tiny" });
    await makeModel({ dir: other, preset: "tiny", seed: 5 });
    for (const file of headers.keys()) {
      expect(readFileSync(join(again, file)).equals(readFileSync(join(dir, file))), file).toBe(true);
      expect(readFileSync(join(other, file)).equals(readFileSync(join(dir, file))), file).toBe(false);
    }
  });
});

describe("variants", () => {
  it("bits 0 writes every matrix plain in the chosen dtype and no quantization block", async () => {
    const dir = join(work, "tiny-f16");
    await makeModel({ dir, preset: "tiny", bits: 0, dtype: "f16" });
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    expect(config.quantization).toBeUndefined();
    expect(config.quantization_config).toBeUndefined();
    const all = new Map([...shardHeaders(dir).values()].flatMap((h) => [...h.tensors.entries()]));
    expect([...all.keys()].some((n) => n.endsWith(".scales"))).toBe(false);
    expect(all.get("model.layers.0.self_attn.q_proj.weight")).toMatchObject({
      dtype: "F16",
      shape: [256, 128],
    });
    expect(all.get("model.layers.0.block_sparse_moe.switch_mlp.down_proj.weight")).toMatchObject({
      dtype: "F16",
      shape: [8, 128, 128],
    });
    expect(all.get("model.layers.0.block_sparse_moe.e_score_correction_bias")?.dtype).toBe("F32");
  });

  it("3-bit group 32 packs 3 words per 32 inputs", async () => {
    const dir = join(work, "tiny-3-32");
    await makeModel({ dir, preset: "tiny", bits: 3, groupSize: 32 });
    const all = new Map([...shardHeaders(dir).values()].flatMap((h) => [...h.tensors.entries()]));
    expect(all.get("model.layers.0.self_attn.q_proj.weight")?.shape).toEqual([256, 12]);
    expect(all.get("model.layers.0.self_attn.q_proj.scales")?.shape).toEqual([256, 4]);
    expect(readModelConfig(dir).quantization).toEqual({ bits: 3, groupSize: 32 });
  });

  it("refuses bad options with a message naming the option", async () => {
    const dir = join(work, "never");
    await expect(makeModel({ dir, preset: "tiny", bits: 7 })).rejects.toThrow(/--bits/);
    await expect(makeModel({ dir, preset: "tiny", groupSize: 48 })).rejects.toThrow(/--group-size/);
    await expect(makeModel({ dir, preset: "tiny", dtype: "f64" as "f32" })).rejects.toThrow(/--dtype/);
    await expect(makeModel({ dir, preset: "huge" as "tiny" })).rejects.toThrow(/preset "huge"/);
    await expect(makeModel({ dir, preset: "tiny", seed: -1 })).rejects.toThrow(/--seed/);
    expect(existsSync(dir)).toBe(false);
  });
});

describe("bench preset", () => {
  it("plans roughly 1-2 GB of 4-bit weights", () => {
    const shape = { ...PRESETS.bench };
    const bytes = weightDefs({ shape, bits: 4, groupSize: 64, dtype: "bf16" })
      .flatMap((d) => tensorSpecs(d))
      .reduce((n, s) => n + tensorBytes(s), 0);
    console.log(`bench preset: ${(bytes / 1e9).toFixed(2)} GB at 4 bits, group 64`);
    expect(bytes).toBeGreaterThan(1e9);
    expect(bytes).toBeLessThan(2e9);
  });

  it("random packed weights dequantize to about the intended spread", () => {
    const shape = { ...PRESETS.tiny };
    for (const bits of [3, 4, 8]) {
      const def = weightDefs({ shape, bits, groupSize: 64, dtype: "bf16" }).find(
        (d) => d.path === "model.layers.0.self_attn.q_proj",
      )!;
      const tensors = randomPackedModule(def, 1);
      const weight = tensors.get(`${def.path}.weight`)!;
      const words = new Uint32Array(weight.buffer, weight.byteOffset, weight.byteLength / 4);
      const scale = (name: string) => toFloat32({ dtype: "BF16", shape: [], data: tensors.get(name)! });
      const [rows, cols] = def.shape;
      const w = dequantize(
        words,
        scale(`${def.path}.scales`),
        scale(`${def.path}.biases`),
        rows,
        cols,
        bits,
        64,
      );
      const mean = w.reduce((a, b) => a + b, 0) / w.length;
      const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
      expect(Math.abs(mean)).toBeLessThan(def.std * 0.2);
      expect(std / def.std).toBeGreaterThan(0.8);
      expect(std / def.std).toBeLessThan(1.25);
    }
  });
});

describe("m2-shapes preset (planned only: its 4.8 GB of weights are made by bench:engine)", () => {
  let plan: ReturnType<typeof planCheckpoint>;
  beforeAll(() => {
    plan = planCheckpoint({ dir: join(work, "never-m2"), preset: "m2-shapes" });
  });
  const shapeOf = (path: string) => plan.defs.find((d) => d.path === path)?.shape;

  it("has MiniMax-M2.1's sizes in config.json, 2 layers by default, the router at 8 bits", () => {
    expect(plan.config).toMatchObject({
      model_type: "minimax_m2",
      hidden_size: 3072,
      num_hidden_layers: 2,
      num_attention_heads: 48,
      num_key_value_heads: 8,
      head_dim: 128,
      rotary_dim: 64,
      partial_rotary_factor: 0.5,
      intermediate_size: 1536,
      num_local_experts: 256,
      num_experts_per_tok: 8,
      vocab_size: 200_064,
      max_position_embeddings: 196_608,
    });
    const quant = plan.config.quantization as Record<string, unknown>;
    expect(quant).toMatchObject({ bits: 4, group_size: 64 });
    for (const l of [0, 1])
      expect(quant[`model.layers.${l}.block_sparse_moe.gate`]).toEqual({ bits: 8, group_size: 64 });
    expect(quant["model.layers.2.block_sparse_moe.gate"]).toBeUndefined();
  });

  it("plans the real tensor shapes", () => {
    expect(shapeOf("model.embed_tokens")).toEqual([200_064, 3072]);
    expect(shapeOf("lm_head")).toEqual([200_064, 3072]);
    expect(shapeOf("model.layers.1.self_attn.q_proj")).toEqual([6144, 3072]);
    expect(shapeOf("model.layers.1.self_attn.k_proj")).toEqual([1024, 3072]);
    expect(shapeOf("model.layers.1.self_attn.o_proj")).toEqual([3072, 6144]);
    expect(shapeOf("model.layers.1.block_sparse_moe.gate")).toEqual([256, 3072]);
    expect(shapeOf("model.layers.1.block_sparse_moe.switch_mlp.gate_proj")).toEqual([256, 1536, 3072]);
    expect(shapeOf("model.layers.1.block_sparse_moe.switch_mlp.down_proj")).toEqual([256, 3072, 1536]);
    expect(shapeOf("model.layers.2.self_attn.q_proj")).toBeUndefined();
  });

  it("pads the 10k bench tokenizer to the 200,064-id vocabulary", () => {
    expect(plan.tokenizer.size).toBe(PRESETS["m2-shapes"].tokenizerSize);
    expect(plan.tokenizer.size).toBeLessThan(200_064);
    expect(plan.config.eos_token_id as number).toBeLessThan(plan.tokenizer.size);
  });

  it("costs ~2.06 GB per 4-bit layer, shards under 4 GB; --layers changes the count", () => {
    const three = planCheckpoint({ dir: join(work, "never-m2"), preset: "m2-shapes", layers: 3 });
    expect(three.config.num_hidden_layers).toBe(3);
    const perLayer = three.totalBytes - plan.totalBytes;
    expect(perLayer / 1e9).toBeCloseTo(2.06, 2);
    expect(plan.totalBytes / 1e9).toBeCloseTo(4.82, 2);
    expect(plan.shards).toBe(2);
    expect(three.shards).toBe(2);
    expect(planCheckpoint({ dir: "x", preset: "m2-shapes", layers: 4 }).shards).toBe(3);
  });
});

describe("--layers", () => {
  it("writes a checkpoint with that many layers and refuses counts out of range", async () => {
    const dir = join(work, "tiny-2-layers");
    await makeModel({ dir, preset: "tiny", layers: 2 });
    expect(readModelConfig(dir).numLayers).toBe(2);
    const names = [...shardHeaders(dir).values()].flatMap((h) => [...h.tensors.keys()]);
    expect(names.filter((n) => n.endsWith("q_proj.weight")).sort()).toEqual([
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.1.self_attn.q_proj.weight",
    ]);
    for (const layers of [0, 1.5, 1000])
      await expect(makeModel({ dir: join(work, "never"), preset: "tiny", layers })).rejects.toThrow(
        /--layers must be an integer in 1\.\.256/,
      );
  });
});

describe("cluster make-model", () => {
  const runCli = async (...args: string[]) => {
    const program = new Command().exitOverride();
    register(program);
    const errors: string[] = [];
    const spy = vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      errors.push(String(chunk));
      return true;
    });
    const before = process.exitCode;
    try {
      await program.parseAsync(["node", "cluster", "make-model", ...args]);
      return { code: process.exitCode ?? 0, stderr: errors.join("") };
    } finally {
      spy.mockRestore();
      process.exitCode = before;
    }
  };

  it("writes a checkpoint and refuses a non-empty directory without --force", async () => {
    const dir = join(work, "cli");
    const ok = await runCli(dir, "--preset", "tiny", "--bits", "8", "--group-size", "32");
    expect(ok.code).toBe(0);
    expect(readModelConfig(dir).quantization).toEqual({ bits: 8, groupSize: 32 });
    const refused = await runCli(dir, "--preset", "tiny");
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/not empty.*--force/);
    const forced = await runCli(dir, "--preset", "tiny", "--force");
    expect(forced.code).toBe(0);
    expect(readModelConfig(dir).quantization).toEqual({ bits: 4, groupSize: 64 });
  });

  it("explains bad flags", async () => {
    expect((await runCli(join(work, "cli-bad-2"), "--bits", "four")).stderr).toMatch(
      /--bits must be a whole number/,
    );
    expect((await runCli(join(work, "cli-bad-3"), "--group-size", "100")).stderr).toMatch(
      /--group-size must be one of/,
    );
    expect((await runCli(join(work, "cli-bad-4"), "--preset", "giant")).stderr).toMatch(
      /unknown preset "giant" \(use tiny, bench, scripted, demo, scripted-tool, m2-shapes\)/,
    );
    expect((await runCli(join(work, "cli-bad-5"), "--layers", "two")).stderr).toMatch(
      /--layers must be a whole number/,
    );
  });

  it("keeps the tokenizer's vocabulary equal to vocab_size", () => {
    expect(buildTokenizer("tiny", 3).size).toBe(PRESETS.tiny.vocabSize);
  });
});
