// Model sizes per preset. tiny: correctness tests (seconds); bench: memory-bound decode (~1.5 GB at 4 bits);
// scripted: small and fast for long prompts, weights arranged to emit a fixed reply (see scripted.ts).
// m2-shapes: MiniMax-M2.1's real tensor shapes (hidden 3072, 48/8 heads of 128, 256 experts top-8 of width 1536,
// the 200,064-id vocabulary) in a few layers, so that kernels are timed on the matrices users run; one layer is
// ~2.06 GB at 4 bits, so the default 2 layers make ~4.8 GB with the embedding and lm_head (`--layers` changes it).
// bench and scripted use a 10k vocabulary: with 8k, our synthetic corpus compresses real English prompts to
// only ~3.44 characters per token; 10k reaches the ~3.5 of a real tokenizer.

export type PresetName = "tiny" | "bench" | "scripted" | "demo" | "scripted-tool" | "m2-shapes";

export interface ModelShape {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
  intermediateSize: number;
  numExperts: number;
  expertsPerToken: number;
  maxPositionEmbeddings: number;
  ropeTheta: number;
  /** vocab_size: the id range of the embedding and lm_head. */
  vocabSize: number;
  /**
   * Size of the trained tokenizer (with added tokens) when it is smaller than vocab_size, which then pads the id
   * range as real checkpoints do; absent: the tokenizer fills vocab_size exactly.
   */
  tokenizerSize?: number;
  /** How many safetensors shards to write. */
  shards: number;
  /** bench writes random packed words directly instead of quantizing generated floats. */
  randomPacked: boolean;
}

const SCRIPTED: ModelShape = {
  hiddenSize: 256,
  numLayers: 2,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 64,
  rotaryDim: 32,
  intermediateSize: 128,
  numExperts: 4,
  expertsPerToken: 2,
  maxPositionEmbeddings: 65_536,
  ropeTheta: 5_000_000,
  vocabSize: 10240,
  shards: 2,
  randomPacked: false,
};

export const PRESETS: Record<PresetName, ModelShape> = {
  tiny: {
    hiddenSize: 128,
    numLayers: 6,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 64,
    rotaryDim: 32,
    intermediateSize: 128,
    numExperts: 8,
    expertsPerToken: 2,
    maxPositionEmbeddings: 8192,
    ropeTheta: 5_000_000,
    vocabSize: 1536,
    shards: 2,
    randomPacked: false,
  },
  bench: {
    hiddenSize: 2048,
    numLayers: 12,
    numHeads: 32,
    numKvHeads: 4,
    headDim: 128,
    rotaryDim: 64,
    intermediateSize: 1024,
    numExperts: 32,
    expertsPerToken: 8,
    maxPositionEmbeddings: 196_608,
    ropeTheta: 5_000_000,
    vocabSize: 10240,
    shards: 4,
    randomPacked: true,
  },
  scripted: SCRIPTED,
  // demo: the scripted shape playing the demo script (reasoning, then text), with the real model's window so
  // that OpenClaw's ~20k-token first prompt fits.
  demo: { ...SCRIPTED, maxPositionEmbeddings: 196_608 },
  // scripted-tool: the scripted shape playing an agent's tool turn (a call to OpenClaw's ls, then an answer).
  "scripted-tool": SCRIPTED,
  // A BPE of 200k merges cannot be trained on our synthetic corpus (nor quickly): the bench tokenizer's 10k
  // tokens, padded to the real id range. Weights are random packed words, like bench.
  "m2-shapes": {
    hiddenSize: 3072,
    numLayers: 2,
    numHeads: 48,
    numKvHeads: 8,
    headDim: 128,
    rotaryDim: 64,
    intermediateSize: 1536,
    numExperts: 256,
    expertsPerToken: 8,
    maxPositionEmbeddings: 196_608,
    ropeTheta: 5_000_000,
    vocabSize: 200_064,
    tokenizerSize: 10240,
    shards: 2,
    randomPacked: true,
  },
};

export const PRESET_NAMES = Object.keys(PRESETS) as PresetName[];

export function isPresetName(name: string): name is PresetName {
  return Object.hasOwn(PRESETS, name);
}
