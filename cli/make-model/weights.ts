// The tensor list of a MiniMax-M2 checkpoint (docs/model.md "Checkpoint layout") and how each tensor's values are
// made: seeded floats quantized with MLX affine rules, or (bench) random packed words with matching scales.
import {
  bf16ToFloat,
  f16ToFloat,
  floatToBf16,
  floatToF16,
  fromFloat32,
  type TensorSpec,
} from "../../common/safetensors.js";
import type { ModelShape } from "./presets.js";
import { checkQuantShape, quantizeAffine } from "./quantize.js";
import { Random } from "./random.js";

export type FloatDtype = "bf16" | "f16" | "f32";

/** Safetensors dtypes that hold float values we write. */
export type StoredFloat = "BF16" | "F16" | "F32";

export const STORED_DTYPE: Record<FloatDtype, StoredFloat> = {
  bf16: "BF16",
  f16: "F16",
  f32: "F32",
};

export interface QuantChoice {
  bits: number;
  groupSize: number;
}

/** One module's weight: a vector, a matrix [out, in] or stacked experts [E, out, in]. */
export interface WeightDef {
  /**
   * Matrices: module path, e.g. "model.layers.0.self_attn.q_proj", stored as `${path}.weight` (+ scales, biases).
   * Vectors (norms, correction bias): the full tensor name.
   */
  path: string;
  kind: "vector" | "matrix";
  /** Logical float shape. */
  shape: number[];
  /** Values: mean + std * normal. */
  mean: number;
  std: number;
  /** Quantization, when this matrix is stored quantized. */
  quant?: QuantChoice;
  /** Storage dtype of plain values (vectors, unquantized matrices). */
  dtype: StoredFloat;
  /** Storage dtype of scales and biases (the router's are F32, as in real MLX files). */
  scaleDtype: StoredFloat;
}

export interface WeightPlan {
  shape: ModelShape;
  /** 0 = unquantized */
  bits: number;
  groupSize: number;
  dtype: FloatDtype;
}

export const ROUTER_QUANT: QuantChoice = { bits: 8, groupSize: 64 };

export function routerPath(layer: number): string {
  return `model.layers.${layer}.block_sparse_moe.gate`;
}

/** Every module of the model, in a fixed order. */
export function weightDefs(plan: WeightPlan): WeightDef[] {
  const s = plan.shape;
  const plain = STORED_DTYPE[plan.dtype];
  const quant = plan.bits > 0 ? { bits: plan.bits, groupSize: plan.groupSize } : undefined;
  const matrix = (
    path: string,
    shape: number[],
    std: number,
    q = quant,
    scaleDtype: StoredFloat = plain,
  ): WeightDef => {
    if (q) checkQuantShape(shape[shape.length - 1], q.bits, q.groupSize, path);
    return { path, kind: "matrix", shape, mean: 0, std, quant: q, dtype: plain, scaleDtype };
  };
  const vector = (
    path: string,
    n: number,
    mean: number,
    std: number,
    dtype: StoredFloat = plain,
  ): WeightDef => ({
    path,
    kind: "vector",
    shape: [n],
    mean,
    std,
    dtype,
    scaleDtype: dtype,
  });
  const h = s.hiddenSize;
  const qWidth = s.numHeads * s.headDim;
  const kvWidth = s.numKvHeads * s.headDim;
  const inv = (n: number) => 1 / Math.sqrt(n);
  const defs: WeightDef[] = [
    matrix("model.embed_tokens", [s.vocabSize, h], 1),
    vector("model.norm.weight", h, 1, 0.05),
    matrix("lm_head", [s.vocabSize, h], 1.5 * inv(h)),
  ];
  for (let l = 0; l < s.numLayers; l++) {
    const p = `model.layers.${l}`;
    const moe = `${p}.block_sparse_moe`;
    const e = s.numExperts;
    const ffn = s.intermediateSize;
    defs.push(
      vector(`${p}.input_layernorm.weight`, h, 1, 0.05),
      vector(`${p}.post_attention_layernorm.weight`, h, 1, 0.05),
      matrix(`${p}.self_attn.q_proj`, [qWidth, h], inv(h)),
      matrix(`${p}.self_attn.k_proj`, [kvWidth, h], inv(h)),
      matrix(`${p}.self_attn.v_proj`, [kvWidth, h], inv(h)),
      matrix(`${p}.self_attn.o_proj`, [h, qWidth], 0.5 * inv(qWidth)),
      vector(`${p}.self_attn.q_norm.weight`, qWidth, 1, 0.05),
      vector(`${p}.self_attn.k_norm.weight`, kvWidth, 1, 0.05),
      matrix(routerPath(l), [e, h], inv(h), quant ? ROUTER_QUANT : undefined, quant ? "F32" : plain),
      vector(`${moe}.e_score_correction_bias`, e, 0, 0.05, "F32"),
      matrix(`${moe}.switch_mlp.gate_proj`, [e, ffn, h], inv(h)),
      matrix(`${moe}.switch_mlp.up_proj`, [e, ffn, h], inv(h)),
      matrix(`${moe}.switch_mlp.down_proj`, [e, h, ffn], 0.5 * inv(ffn)),
    );
  }
  return defs;
}

/** The safetensors tensors a module is stored as. */
export function tensorSpecs(def: WeightDef): TensorSpec[] {
  if (def.kind === "vector") return [{ name: def.path, dtype: def.dtype, shape: def.shape }];
  if (!def.quant) return [{ name: `${def.path}.weight`, dtype: def.dtype, shape: def.shape }];
  const lead = def.shape.slice(0, -1);
  const cols = def.shape[def.shape.length - 1];
  const { bits, groupSize } = def.quant;
  return [
    { name: `${def.path}.biases`, dtype: def.scaleDtype, shape: [...lead, cols / groupSize] },
    { name: `${def.path}.scales`, dtype: def.scaleDtype, shape: [...lead, cols / groupSize] },
    { name: `${def.path}.weight`, dtype: "U32", shape: [...lead, (cols * bits) / 32] },
  ];
}

/** Seeded float values of a module (the default source; the scripted preset supplies its own). */
export function seededValues(def: WeightDef, seed: number): Float32Array {
  const rng = new Random(seed, def.path);
  const n = def.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = def.mean + def.std * rng.normal();
  return out;
}

function roundTo(dtype: StoredFloat): (x: number) => number {
  if (dtype === "BF16") return (x) => bf16ToFloat(floatToBf16(x));
  if (dtype === "F16") return (x) => f16ToFloat(floatToF16(x));
  return Math.fround;
}

/** Stored bytes of every tensor of a module: name -> bytes. */
export function encodeModule(def: WeightDef, values: Float32Array): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  if (def.kind === "vector" || !def.quant) {
    const name = def.kind === "vector" ? def.path : `${def.path}.weight`;
    out.set(name, fromFloat32(values, def.dtype));
    return out;
  }
  const cols = def.shape[def.shape.length - 1];
  const rows = values.length / cols;
  const q = quantizeAffine(values, rows, cols, def.quant.bits, def.quant.groupSize, roundTo(def.scaleDtype));
  out.set(`${def.path}.biases`, fromFloat32(q.biases, def.scaleDtype));
  out.set(`${def.path}.scales`, fromFloat32(q.scales, def.scaleDtype));
  out.set(`${def.path}.weight`, Buffer.from(q.packed.buffer, q.packed.byteOffset, q.packed.byteLength));
  return out;
}

/**
 * Random packed words and per-group scales/biases chosen so that the dequantized values have mean ~0 and
 * standard deviation ~def.std: fast for big benchmark checkpoints, where values need only be plausible.
 */
export function randomPackedModule(def: WeightDef, seed: number): Map<string, Buffer> {
  if (!def.quant) return encodeModule(def, seededValues(def, seed));
  const rng = new Random(seed, def.path);
  const cols = def.shape[def.shape.length - 1];
  const rows = def.shape.reduce((a, b) => a * b, 1) / cols;
  const { bits, groupSize } = def.quant;
  const levels = 2 ** bits - 1;
  const words = new Uint32Array((rows * cols * bits) / 32);
  for (let i = 0; i < words.length; i++) words[i] = rng.nextU32();
  const groups = (rows * cols) / groupSize;
  const scales = new Float32Array(groups);
  const biases = new Float32Array(groups);
  // uniform levels 0..L have standard deviation ~L/sqrt(12)
  const baseScale = (def.std * Math.sqrt(12)) / levels;
  for (let g = 0; g < groups; g++) {
    const scale = baseScale * (0.8 + 0.4 * rng.next());
    scales[g] = scale;
    biases[g] = -scale * (levels / 2) + def.std * 0.1 * rng.normal();
  }
  return new Map([
    [`${def.path}.biases`, fromFloat32(biases, def.scaleDtype)],
    [`${def.path}.scales`, fromFloat32(scales, def.scaleDtype)],
    [`${def.path}.weight`, Buffer.from(words.buffer)],
  ]);
}
