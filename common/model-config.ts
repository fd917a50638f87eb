// config.json of a MiniMax-M2 checkpoint, read once and typed. Sizes always come from here, never constants.
import { existsSync, readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";

export interface QuantSpec {
  bits: number;
  groupSize: number;
}

export interface ModelConfig {
  modelType: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  intermediateSize: number;
  numExperts: number;
  expertsPerToken: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  bosTokenId: number;
  eosTokenId: number;
  /** Global quantization (absent for plain bf16/fp16/fp32 checkpoints). */
  quantization?: QuantSpec;
  /** Per-module overrides keyed by module path, e.g. "model.layers.0.block_sparse_moe.gate". */
  quantOverrides: Record<string, QuantSpec>;
}

type Json = Record<string, unknown>;

function num(raw: Json, key: string, file: string, fallback?: number): number {
  const v = raw[key];
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (v === undefined && fallback !== undefined) return fallback;
  throw new Error(`${file}: field "${key}" must be a number (got ${JSON.stringify(v)})`);
}

const MAX_DIMENSION = 2 ** 24;

function positiveInt(raw: Json, key: string, file: string, fallback?: number): number {
  const v = num(raw, key, file, fallback);
  if (!Number.isInteger(v) || v <= 0)
    throw new Error(`${file}: field "${key}" must be a positive integer (got ${v})`);
  // Sizes beyond 2^24 (16M) are no real model's: refuse them here rather than size buffers from them.
  if (v > MAX_DIMENSION)
    throw new Error(
      `${file}: field "${key}" is ${v}, beyond any real model's size (at most ${MAX_DIMENSION})`,
    );
  return v;
}

function parseQuant(raw: unknown, where: string): QuantSpec {
  const q = raw as Json;
  const bits = q?.bits;
  const groupSize = q?.group_size;
  if (![2, 3, 4, 5, 6, 8].includes(bits as number))
    throw new Error(`${where}: quantization bits must be one of 2,3,4,5,6,8 (got ${JSON.stringify(bits)})`);
  if (![32, 64, 128].includes(groupSize as number))
    throw new Error(
      `${where}: quantization group_size must be 32, 64 or 128 (got ${JSON.stringify(groupSize)})`,
    );
  return { bits: bits as number, groupSize: groupSize as number };
}

export function parseModelConfig(raw: unknown, file = "config.json"): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new Error(`${file}: not a JSON object`);
  const c = raw as Json;
  const headDim = positiveInt(c, "head_dim", file);
  const rotaryDim =
    typeof c.rotary_dim === "number"
      ? positiveInt(c, "rotary_dim", file)
      : Math.round(headDim * num(c, "partial_rotary_factor", file, 1));
  if (rotaryDim % 2 !== 0 || rotaryDim > headDim)
    throw new Error(`${file}: rotary_dim ${rotaryDim} must be even and at most head_dim ${headDim}`);
  const quantBlock = (c.quantization ?? c.quantization_config) as Json | undefined;
  const quantOverrides: Record<string, QuantSpec> = {};
  let quantization: QuantSpec | undefined;
  if (quantBlock && typeof quantBlock === "object") {
    quantization = parseQuant(quantBlock, `${file}: quantization`);
    for (const [key, value] of Object.entries(quantBlock)) {
      if (typeof value === "object" && value !== null)
        quantOverrides[key] = parseQuant(value, `${file}: quantization.${key}`);
    }
  }
  const config: ModelConfig = {
    modelType: String(c.model_type ?? ""),
    hiddenSize: positiveInt(c, "hidden_size", file),
    numLayers: positiveInt(c, "num_hidden_layers", file),
    numHeads: positiveInt(c, "num_attention_heads", file),
    numKvHeads: positiveInt(c, "num_key_value_heads", file),
    headDim,
    rotaryDim,
    ropeTheta: num(c, "rope_theta", file, 10000),
    rmsNormEps: num(c, "rms_norm_eps", file, 1e-6),
    intermediateSize: positiveInt(c, "intermediate_size", file),
    numExperts: positiveInt(c, "num_local_experts", file),
    expertsPerToken: positiveInt(c, "num_experts_per_tok", file),
    vocabSize: positiveInt(c, "vocab_size", file),
    maxPositionEmbeddings: positiveInt(c, "max_position_embeddings", file),
    bosTokenId: num(c, "bos_token_id", file, 0),
    eosTokenId: num(c, "eos_token_id", file, 0),
    quantization,
    quantOverrides,
  };
  if (config.modelType !== "minimax_m2" && config.modelType !== "minimax")
    throw new Error(`${file}: model_type "${config.modelType}" is not minimax_m2`);
  if (config.numHeads % config.numKvHeads !== 0)
    throw new Error(
      `${file}: num_attention_heads ${config.numHeads} is not a multiple of num_key_value_heads ${config.numKvHeads}`,
    );
  if (config.expertsPerToken > config.numExperts)
    throw new Error(`${file}: num_experts_per_tok exceeds num_local_experts`);
  return config;
}

export function readModelConfig(modelDir: string): ModelConfig {
  const file = join(modelDir, "config.json");
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`${file}: cannot read (${(err as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: invalid JSON (${(err as Error).message})`);
  }
  return parseModelConfig(raw, file);
}

/** Quantization of the module at `path` (e.g. "model.layers.3.self_attn.q_proj"): override, else global. */
export function quantFor(config: ModelConfig, path: string): QuantSpec | undefined {
  return config.quantOverrides[path] ?? config.quantization;
}

/**
 * Model id as the cluster compares it: the checkpoint folder's name, or the repository's name for a Hugging Face
 * cache snapshot (models--org--name/snapshots/<commit>) and for a partial checkpoint (its manifest says).
 */
export function modelIdOf(modelDir: string): string {
  const dir = resolve(modelDir);
  const snapshot = /[\\/]models--[^\\/]+?--([^\\/]+)[\\/]snapshots[\\/][^\\/]+$/.exec(dir);
  if (snapshot) return snapshot[1];
  const manifest = join(dir, "manifest.json");
  if (existsSync(manifest)) {
    const id = (JSON.parse(readFileSync(manifest, "utf8")) as { modelId?: unknown }).modelId;
    if (typeof id === "string" && id) return id;
  }
  return basename(dir);
}

/**
 * The longest reply a client should plan for, advertised by GET /v1/models and written by `cluster
 * openclaw-config`: 32,768 tokens, and never more than a quarter of the window, so a reply cannot take the
 * whole window from the conversation it answers.
 */
export function replyTokenLimit(contextWindow: number): number {
  return Math.max(1, Math.min(32_768, Math.floor(contextWindow / 4)));
}
