// The contract of the shard engine (native/). The addon implements it; node-agent, tests and benches use it.
// One engine holds a contiguous layer range of one model, plus the embedding (first stage) and the final
// norm + lm_head (last stage). Every call that touches engine state runs on the engine's own thread.

import type { ToolConstraintSpec } from "./tool-grammar.js";

export type BackendChoice = "auto" | "cpu" | "mlx";
export type BackendName = "cpu" | "mlx";
/** The cpu backend's precision modes (OpenOptions.matmulInputs). */
export const MATMUL_INPUTS = ["default", "int8"] as const;
export type MatmulInputs = (typeof MATMUL_INPUTS)[number];
export function isMatmulInputs(value: unknown): value is MatmulInputs {
  return MATMUL_INPUTS.includes(value as MatmulInputs);
}
/** What the cpu backend's KV cache stores (OpenOptions.kvDtype). */
export const KV_DTYPES = ["f32", "f16"] as const;
export type KvDtype = (typeof KV_DTYPES)[number];
export function isKvDtype(value: unknown): value is KvDtype {
  return KV_DTYPES.includes(value as KvDtype);
}
/** Bytes of one cached key or value element: bf16 on mlx; on cpu f32, or f16 where the node caches that. */
export function kvElementBytes(backend: BackendName, cpuKvDtype: KvDtype = "f32"): number {
  return backend === "cpu" && cpuKvDtype === "f32" ? 4 : 2;
}
/** Activations cross stages in the backend's compute dtype: f32 on cpu, bf16 on mlx. */
export type ActivationDtype = "f32" | "bf16";

export interface OpenOptions {
  modelDir: string;
  /** First layer held (inclusive). */
  layerStart: number;
  /** One past the last layer held. */
  layerEnd: number;
  /** Holds model.embed_tokens: this is the first stage and takes token ids. */
  embed: boolean;
  /** Holds model.norm + lm_head: this is the last stage and returns sampled tokens. */
  head: boolean;
  backend?: BackendChoice;
  /** Worker threads of the cpu backend (default: all cores). */
  threads?: number;
  /**
   * The cpu backend's precision mode. "default": 4/8-bit matmuls take int16 inputs per group (x86) or f32, within
   * 1e-3 of the reference. "int8": 4-bit matmuls take int8 inputs per group, as llama.cpp's Q8 inputs, ~1.3x
   * faster prefill and coarser (native/README.md, "Precision modes of the cpu backend"); x86 with AVX2 and aarch64
   * with the dot-product extension, elsewhere the default path. The router always stays f32; the mlx backend
   * ignores it.
   */
  matmulInputs?: MatmulInputs;
  /**
   * What the cpu backend's KV cache stores. "f32" (default): keys and values as computed. "f16": rounded to
   * f16, half the bytes per cached position (RAM, prefix-cache blocks on disk), outputs within ~1e-3 of f32
   * (native/README.md, "The KV cache's element type"). The mlx backend ignores it (its cache is bf16).
   */
  kvDtype?: KvDtype;
  /** Bytes read so far of the bytes this shard must read; called on the JS thread. */
  onProgress?: (bytesRead: number, bytesTotal: number) => void;
}

export interface SamplingParams {
  /** 0 (or absent) means greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  /** Sampling is a pure function of (seed, position, logits): batching and splits never change it. */
  seed?: number;
  /** Return this many top log-probabilities with the sampled token. */
  topLogprobs?: number;
  /** Added to the logits before sampling. */
  logitBias?: Array<[token: number, bias: number]>;
  /**
   * The reply's tool-call constraint (common/tool-grammar.ts). It travels with the other parameters to the last
   * stage, which keeps one state machine per sequence and turns it into allowTokens / banTokens for each token;
   * the engine ignores it.
   */
  constraint?: ToolConstraintSpec;
  /** This token only: when given, only these ids may be drawn (a constraint's mask, after logitBias). */
  allowTokens?: Int32Array;
  /** This token only: these ids are never drawn. */
  banTokens?: Int32Array;
}

export interface ForwardItem {
  /** Sequence id, chosen by the caller (uint32). A new id starts a new KV cache. */
  seq: number;
  /** Position of the first token of this item; must equal the sequence's current KV length. */
  position: number;
  /** First stage: the token ids to run. */
  tokens?: Int32Array;
  /** Other stages: activations [n, hidden] as raw bytes in the engine's activation dtype. */
  hidden?: Uint8Array;
  /** Last stage: how to pick the next token from the last position's logits. */
  sampling?: SamplingParams;
  /** Last stage: also return the last position's logits (f32). */
  returnLogits?: boolean;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
}

export interface ForwardOutput {
  seq: number;
  /** Non-last stage: activations [n, hidden] as raw bytes in the activation dtype. */
  hidden?: Uint8Array;
  /** Last stage: the sampled token. */
  token?: number;
  logprob?: number;
  topLogprobs?: TokenLogprob[];
  logits?: Float32Array;
}

/** Positions [start, start + length) of a sequence, kept as prefix-cache block `id`. */
export interface KvBlockSlice {
  id: string;
  start: number;
  length: number;
}

/** The first `take` positions of prefix-cache block `id`. */
export interface KvBlockTake {
  id: string;
  take: number;
}

export interface EngineStats {
  backend: BackendName;
  activationDtype: ActivationDtype;
  threads: number;
  /** The precision mode in effect: "int8" only where asked, on the cpu backend of a build with its kernels. */
  matmulInputs: MatmulInputs;
  /** What the KV caches store: "f32" or "f16" on cpu, the compute dtype ("bf16", or "f32" checking) on mlx. */
  kvDtype: KvDtype | "bf16";
  layerStart: number;
  layerEnd: number;
  embed: boolean;
  head: boolean;
  hiddenSize: number;
  vocabSize: number;
  /** Bytes of weights this shard maps. */
  weightBytes: number;
  /** Bytes held by KV caches of all live sequences. */
  kvBytes: number;
  /** KV bytes one token costs on this shard. */
  kvBytesPerToken: number;
  /** Bytes one position of one layer takes in exportBlock's layout (the cache dtype's share of kvBytesPerToken). */
  kvBytesPerPositionPerLayer: number;
  sequences: number;
  /** Bytes held by prefix-cache blocks, and how many there are. */
  blockBytes: number;
  blocks: number;
  /** Bytes the backend keeps wired for its buffers (mlx on Metal: MLX's wired limit); 0 where none is set. */
  wiredLimitBytes: number;
  /** Seconds the load-time warm-up step took (mlx); 0 where the backend needs none. */
  warmupSeconds: number;
}

export interface Engine {
  /** Runs one batch (several sequences, each a prefill chunk or a decode step) and resolves with one output per item, in order. */
  forward(batch: ForwardItem[]): Promise<ForwardOutput[]>;
  /** Frees a sequence's KV cache. Unknown ids are ignored. */
  release(seq: number): Promise<void>;
  /** Makes newSeq a sequence whose cache holds the first prefixLength positions of seq. */
  fork(seq: number, newSeq: number, prefixLength: number): Promise<void>;
  /**
   * Prefix-cache blocks: KV of position runs kept apart from any sequence under the caller's ids, so sequences
   * that share a prompt prefix share its blocks. Copies positions of seq into new blocks (ids already held are
   * left as they are).
   */
  stashBlocks(seq: number, blocks: KvBlockSlice[]): Promise<void>;
  /** Makes newSeq a sequence holding, in order, the first `take` positions of each block. */
  assemble(newSeq: number, blocks: KvBlockTake[]): Promise<void>;
  /** Frees blocks; unknown ids are ignored. */
  dropBlocks(ids: string[]): Promise<void>;
  /**
   * A block's KV, one array per layer of the shard, position-major: each position's keys then its values in the
   * cache dtype (f32 on cpu, bf16 on mlx), kvBytesPerPositionPerLayer bytes per position.
   */
  exportBlock(id: string): Promise<Uint8Array[]>;
  /** Makes block `id` of `length` positions from exportBlock's arrays (an id already held is left as it is). */
  importBlock(id: string, length: number, layers: Uint8Array[]): Promise<void>;
  stats(): EngineStats;
  /** Finishes queued work, frees everything; later calls reject. */
  close(): Promise<void>;
}
