import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { appleChipBandwidthBps, effectiveBandwidthBps } from "../../common/chip-bandwidth.js";
import { ClusterError } from "../../common/errors.js";
import { writeSafetensorsFile } from "../../common/safetensors.js";
import {
  kvBytesPerTokenPerLayer,
  type ModelFootprint,
  readModelFootprint,
} from "../../coordinator/model-footprint.js";
import { type Plan, type PlannerNode, planLayers } from "../../coordinator/planner.js";

const GB = 1e9;
const GIB = 1024 ** 3;

// MiniMax M2.1 4-bit (docs/model.md "Sizes"): 62 layers, 128.7 GB of files, 5.89 GB read per token, 8 kv heads x 128.
// Embedding and lm_head: 200,064 x 3,072 at 4 bits + bf16 scales and biases per group of 64.
const embedBytes = 200_064 * 3072 * 0.5 + 2 * (200_064 * (3072 / 64) * 2);
const m21: ModelFootprint = {
  numLayers: 62,
  layerBytes: new Array(62).fill((128.7 * GB - 2 * embedBytes) / 62),
  layerReadBytes: new Array(62).fill((5.89 * GB - embedBytes) / 62),
  embedBytes,
  headBytes: embedBytes + 3072 * 2,
  numKvHeads: 8,
  headDim: 128,
};

function mac(nodeId: string, chip: string, memoryGB: number, extra: Partial<PlannerNode> = {}): PlannerNode {
  return {
    nodeId,
    name: `studio-${nodeId}`,
    address: `10.0.0.${nodeId.charCodeAt(0) % 200}:7100`,
    memoryTotalBytes: memoryGB * GIB,
    // A freshly booted Mac Studio: about 8 GB in use by the system.
    memoryAvailableBytes: (memoryGB - 8) * GIB,
    memoryBandwidthBps: 0,
    chip,
    backends: ["cpu", "mlx"],
    ...extra,
  };
}

function layersOf(plan: Plan): number[] {
  return plan.stages.map((s) => s.layerEnd - s.layerStart);
}

function expectWellFormed(plan: Plan, model: ModelFootprint): void {
  expect(plan.stages.length).toBeGreaterThan(0);
  expect(plan.stages[0].layerStart).toBe(0);
  expect(plan.stages[plan.stages.length - 1].layerEnd).toBe(model.numLayers);
  plan.stages.forEach((stage, i) => {
    expect(stage.layerEnd).toBeGreaterThan(stage.layerStart);
    if (i > 0) expect(stage.layerStart).toBe(plan.stages[i - 1].layerEnd);
    expect(stage.embed).toBe(i === 0);
    expect(stage.head).toBe(i === plan.stages.length - 1);
    expect(stage.needBytes).toBeLessThanOrEqual(stage.availableBytes);
  });
}

describe("KV and bandwidth figures", () => {
  it("KV bytes per token per layer: 2 * kv_heads * head_dim * dtype bytes", () => {
    expect(kvBytesPerTokenPerLayer(m21, "mlx")).toBe(4096); // docs/model.md: 4,096 B per token per layer in bf16
    expect(kvBytesPerTokenPerLayer(m21, "cpu")).toBe(8192);
    expect(kvBytesPerTokenPerLayer(m21, "cpu", "f16")).toBe(4096); // cluster up --kv-dtype f16
    expect(kvBytesPerTokenPerLayer(m21, "mlx", "f16")).toBe(4096); // mlx caches bf16 whatever the cpu option
  });

  it("looks up Apple chips by name, longest name first", () => {
    expect(appleChipBandwidthBps("Apple M2 Ultra")).toBe(800 * GB);
    expect(appleChipBandwidthBps("Apple M2")).toBe(100 * GB);
    expect(appleChipBandwidthBps("Apple M3 Max")).toBe(400 * GB);
    expect(appleChipBandwidthBps("Apple M3 Ultra")).toBe(819 * GB);
    expect(appleChipBandwidthBps("Apple M4 Max")).toBe(546 * GB);
    expect(appleChipBandwidthBps("Apple M1 Pro")).toBe(200 * GB);
    expect(appleChipBandwidthBps("Intel(R) Xeon(R) CPU @ 2.20GHz")).toBeUndefined();
    expect(effectiveBandwidthBps(123 * GB, "Apple M2 Ultra")).toBe(123 * GB);
    expect(effectiveBandwidthBps(0, "Apple M2 Ultra")).toBe(800 * GB);
  });
});

describe("cpu stages with an f16 KV cache (--kv-dtype f16)", () => {
  // Two 96 GB Linux boxes on the cpu backend (88.3 GB usable each after headroom): 128.7 GB of weights, and a
  // 128k-token KV reserve of 8,192 B per token per layer in f32 (66.6 GB), 4,096 in f16 (33.3 GB).
  const linux = (nodeId: string, extra: Partial<PlannerNode> = {}): PlannerNode => ({
    ...mac(nodeId, "AMD EPYC", 96),
    backends: ["cpu"],
    memoryBandwidthBps: 200 * GB,
    ...extra,
  });
  const context = 131_072;

  it("reserves half the KV bytes on a node that caches f16, and a plan that did not fit in f32 fits", () => {
    expect(() => planLayers(m21, [linux("a"), linux("b")], { contextTokens: context })).toThrow(
      /does not fit on 2 node\(s\)/,
    );
    const plan = planLayers(m21, [linux("a", { cpuKvDtype: "f16" }), linux("b", { cpuKvDtype: "f16" })], {
      contextTokens: context,
    });
    expectWellFormed(plan, m21);
    expect(plan.backend).toBe("cpu");
    for (const s of plan.stages) expect(s.kvReserveBytes).toBe(4096 * context * (s.layerEnd - s.layerStart));
  });

  it("sizes each node's reserve by its own cache: an f32 node beside an f16 one", () => {
    const plan = planLayers(m21, [linux("a", { cpuKvDtype: "f16" }), linux("b")], { contextTokens: 16_384 });
    const [a, b] = plan.stages;
    expect(a.kvReserveBytes).toBe(4096 * 16_384 * (a.layerEnd - a.layerStart));
    expect(b.kvReserveBytes).toBe(8192 * 16_384 * (b.layerEnd - b.layerStart));
  });
});

describe("planLayers with MiniMax M2.1 4-bit sizes", () => {
  const context = 196_608;

  it("fits on two 192 GB M2 Ultras, half the layers each, embedding first and head last", () => {
    const plan = planLayers(m21, [mac("b", "Apple M2 Ultra", 192), mac("a", "Apple M2 Ultra", 192)], {
      contextTokens: context,
    });
    expectWellFormed(plan, m21);
    expect(plan.stages.map((s) => s.nodeId)).toEqual(["a", "b"]); // order by node id
    const [first, second] = layersOf(plan);
    expect(first + second).toBe(62);
    // lm_head is read in full for every token, so the last stage holds a few layers less; stage times match
    // within one layer's time.
    expect(second).toBeLessThan(first);
    expect(first - second).toBeLessThanOrEqual(6);
    const oneLayer = m21.layerReadBytes[0] / (800 * GB);
    expect(Math.abs(plan.stages[0].secondsPerToken - plan.stages[1].secondsPerToken)).toBeLessThan(oneLayer);
    expect(plan.backend).toBe("mlx");
    // KV reserve: 4096 B per token per layer for the whole context.
    expect(plan.stages[0].kvReserveBytes).toBe(4096 * context * first);
    expect(plan.idle).toEqual([]);
  });

  it("does not fit on two 64 GB machines and says how many bytes are needed and available", () => {
    const nodes = [mac("a", "Apple M2 Max", 64), mac("b", "Apple M2 Max", 64)];
    let error: unknown;
    try {
      planLayers(m21, nodes, { contextTokens: context });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ClusterError);
    const { code, message } = error as ClusterError;
    expect(code).toBe("cluster_not_ready");
    const weights = 128.7 * GB + 3072 * 2;
    const kv = 4096 * context * 62;
    expect(message).toContain(`${Math.round(weights + kv)} B`);
    expect(message).toContain(`weights 128.7 GB`);
    expect(message).toContain(`${Math.round(56 * GIB)} B`); // each node's available bytes
    expect(message).toContain("studio-a (a)");
    expect(message).toContain("studio-b (b)");
  });

  it("fits on two 64 GB machines with a 128 GB one added, the big one taking most layers", () => {
    const plan = planLayers(
      m21,
      [mac("a", "Apple M2 Max", 64), mac("b", "Apple M2 Max", 64), mac("c", "Apple M2 Max", 128)],
      { contextTokens: context },
    );
    expectWellFormed(plan, m21);
    const layers = layersOf(plan);
    expect(layers.reduce((x, y) => x + y, 0)).toBe(62);
    // Same bandwidth everywhere, so memory (weights + 805 MB of KV per layer) is what limits the 64 GB machines.
    expect(layers[2]).toBeGreaterThan(layers[0]);
    expect(layers[2]).toBeGreaterThan(layers[1]);
    // Both small machines are full: one more layer would not fit.
    const layerCost = m21.layerBytes[0] + 4096 * context;
    for (const stage of plan.stages.slice(0, 2))
      expect(stage.needBytes + layerCost).toBeGreaterThan(stage.availableBytes);
  });

  it("gives layers in proportion to bandwidth when memory is plentiful", () => {
    const fast = mac("a", "Apple M3 Ultra", 512, { memoryBandwidthBps: 800 * GB });
    const slow = mac("b", "Apple M2 Max", 512, { memoryBandwidthBps: 400 * GB });
    const plan = planLayers(m21, [fast, slow], { contextTokens: 8192 });
    expectWellFormed(plan, m21);
    const [a, b] = layersOf(plan);
    expect(a + b).toBe(62);
    expect(a / b).toBeGreaterThan(1.7);
    expect(a / b).toBeLessThan(2.5);
    // Stage times within one layer's time of each other: balanced.
    const oneLayer = m21.layerReadBytes[0] / (400 * GB);
    expect(Math.abs(plan.stages[0].secondsPerToken - plan.stages[1].secondsPerToken)).toBeLessThan(oneLayer);
  });

  it("caps a fast node by its memory and moves the rest to the others", () => {
    const fastSmall = mac("a", "Apple M4 Max", 48, { memoryBandwidthBps: 546 * GB });
    const slowBig = mac("b", "Apple M2 Ultra", 192, { memoryBandwidthBps: 100 * GB });
    const plan = planLayers(m21, [fastSmall, slowBig], { contextTokens: 4096 });
    expectWellFormed(plan, m21);
    const [a, b] = layersOf(plan);
    // Bandwidth alone would give the fast node ~84%; 40 GB of room holds far fewer than 52 layers.
    const perLayer = m21.layerBytes[0] + 4096 * 4096;
    expect(a).toBeLessThanOrEqual(Math.floor((40 * GIB - GIB - 0.05 * 48 * GIB - embedBytes) / perLayer));
    expect(a + b).toBe(62);
    expect(plan.stages[0].needBytes).toBeLessThanOrEqual(plan.stages[0].availableBytes);
  });

  it("leaves a node with too little memory idle when the others can hold the model", () => {
    const plan = planLayers(
      m21,
      [mac("a", "Apple M2 Ultra", 192), mac("b", "Apple M1", 8, { memoryAvailableBytes: GIB })],
      { contextTokens: 8192 },
    );
    expectWellFormed(plan, m21);
    expect(plan.stages.map((s) => s.nodeId)).toEqual(["a"]);
    expect(plan.idle).toEqual([{ nodeId: "b", name: "studio-b" }]);
  });

  it("is deterministic: the same members in any order give the same plan", () => {
    const nodes = [
      mac("c", "Apple M2 Ultra", 192),
      mac("a", "Apple M3 Ultra", 256),
      mac("b", "Apple M2 Max", 96),
    ];
    const plans = [nodes, [...nodes].reverse(), [nodes[1], nodes[2], nodes[0]]].map((order) =>
      planLayers(m21, order, { contextTokens: 32768, planId: "p" }),
    );
    expect(plans[1]).toEqual(plans[0]);
    expect(plans[2]).toEqual(plans[0]);
    expect(plans[0].stages.map((s) => s.nodeId)).toEqual(["a", "b", "c"]);
  });

  it("uses cpu for the whole pipeline when one node has no mlx", () => {
    const plan = planLayers(
      m21,
      [mac("a", "Apple M2 Ultra", 192), mac("b", "Apple M2 Ultra", 192, { backends: ["cpu"] })],
      { contextTokens: 4096 },
    );
    expect(plan.backend).toBe("cpu");
    expect(plan.stages[0].kvReserveBytes).toBe(
      8192 * 4096 * (plan.stages[0].layerEnd - plan.stages[0].layerStart),
    );
  });

  it("splits six equal layers over three equal nodes two by two", () => {
    const small: ModelFootprint = {
      numLayers: 6,
      layerBytes: new Array(6).fill(1_000_000),
      layerReadBytes: new Array(6).fill(1_000_000),
      embedBytes: 0,
      headBytes: 0,
      numKvHeads: 2,
      headDim: 64,
    };
    const nodes = ["n1", "n2", "n3"].map((id) => mac(id, "cpu", 16, { memoryBandwidthBps: 10 * GB }));
    const plan = planLayers(small, nodes, { contextTokens: 8192 });
    expect(layersOf(plan)).toEqual([2, 2, 2]);
  });

  it("rejects a bad context and an empty member list with clear errors", () => {
    expect(() => planLayers(m21, [], { contextTokens: 10 })).toThrow(/no live nodes/);
    expect(() => planLayers(m21, [mac("a", "Apple M2 Ultra", 192)], { contextTokens: 0 })).toThrow(
      /context must be a positive integer/,
    );
  });
});

describe("readModelFootprint", () => {
  const dir = mkdtempSync(join(tmpdir(), "footprint-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("sums real tensor bytes per layer from the safetensors headers, experts read at k/E", async () => {
    writeFileSync(
      join(dir, "config.json"),
      JSON.stringify({
        model_type: "minimax_m2",
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 4,
        rotary_dim: 2,
        intermediate_size: 4,
        num_local_experts: 4,
        num_experts_per_tok: 1,
        vocab_size: 16,
        max_position_embeddings: 64,
      }),
    );
    const zeros = (spec: { shape: number[] }, bytes: number) =>
      Buffer.alloc(spec.shape.reduce((a, b) => a * b, 1) * bytes);
    await writeSafetensorsFile(
      join(dir, "model-00001-of-00002.safetensors"),
      [
        { name: "model.embed_tokens.weight", dtype: "BF16", shape: [16, 8] },
        { name: "model.layers.0.self_attn.q_proj.weight", dtype: "BF16", shape: [8, 8] },
        {
          name: "model.layers.0.block_sparse_moe.switch_mlp.up_proj.weight",
          dtype: "BF16",
          shape: [4, 4, 8],
        },
      ],
      (s) => zeros(s, 2),
    );
    await writeSafetensorsFile(
      join(dir, "model-00002-of-00002.safetensors"),
      [
        { name: "model.layers.1.self_attn.q_proj.weight", dtype: "F32", shape: [8, 8] },
        { name: "model.norm.weight", dtype: "BF16", shape: [8] },
        { name: "lm_head.weight", dtype: "BF16", shape: [16, 8] },
      ],
      (s) => zeros(s, s.shape.length === 1 ? 2 : s.shape[0] === 16 ? 2 : 4),
    );
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({
        metadata: {},
        weight_map: {
          "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
          "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
          "model.layers.0.block_sparse_moe.switch_mlp.up_proj.weight": "model-00001-of-00002.safetensors",
          "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
          "model.norm.weight": "model-00002-of-00002.safetensors",
          "lm_head.weight": "model-00002-of-00002.safetensors",
        },
      }),
    );
    const fp = readModelFootprint(dir);
    expect(fp.numLayers).toBe(2);
    expect(fp.layerBytes).toEqual([8 * 8 * 2 + 4 * 4 * 8 * 2, 8 * 8 * 4]);
    expect(fp.layerReadBytes).toEqual([8 * 8 * 2 + (4 * 4 * 8 * 2) / 4, 8 * 8 * 4]);
    expect(fp.embedBytes).toBe(16 * 8 * 2);
    expect(fp.headBytes).toBe(8 * 2 + 16 * 8 * 2);
    expect(kvBytesPerTokenPerLayer(fp, "cpu")).toBe(2 * 1 * 4 * 4);
  });
});
