// `makeModel`: writes a complete MiniMax-M2 checkpoint in the MLX layout (config, tokenizer, chat template,
// sharded safetensors + index) for one of the presets. Used by `cluster make-model` and by tests.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type TensorSpec, tensorBytes, writeSafetensorsFile } from "../../common/safetensors.js";
import { BOS_TOKEN, CHAT_TEMPLATE, EOS_TOKEN, SPECIAL_TOKENS } from "./chat-template.js";
import { generateCorpus } from "./corpus.js";
import { isPresetName, type ModelShape, PRESET_NAMES, PRESETS, type PresetName } from "./presets.js";
import { SUPPORTED_BITS, SUPPORTED_GROUP_SIZES } from "./quantize.js";
import { isScripted, scriptAddedTokens, scriptedValues } from "./scripted.js";
import { type AddedToken, type TrainedBpe, tokenizerJson, trainBpe } from "./tokenizer-trainer.js";
import {
  encodeModule,
  type FloatDtype,
  ROUTER_QUANT,
  randomPackedModule,
  routerPath,
  seededValues,
  tensorSpecs,
  type WeightDef,
  weightDefs,
} from "./weights.js";

export type { PresetName } from "./presets.js";

export interface MakeModelOptions {
  dir: string;
  preset: PresetName;
  /** default 4; 0 = unquantized */
  bits?: number;
  /** default 64 */
  groupSize?: number;
  /** dtype of unquantized tensors (norms, plain matrices, scales/biases); default bf16 */
  dtype?: FloatDtype;
  /** default 0 */
  seed?: number;
  /** Number of transformer layers; default: the preset's. */
  layers?: number;
  onProgress?: (done: number, total: number) => void;
}

interface ResolvedOptions {
  dir: string;
  preset: PresetName;
  bits: number;
  groupSize: number;
  dtype: FloatDtype;
  seed: number;
  layers: number;
}

/** Most layers `--layers` accepts (MiniMax-M2.1 has 62). */
export const MAX_LAYERS = 256;

export function resolveOptions(opts: MakeModelOptions): ResolvedOptions {
  const bits = opts.bits ?? 4;
  const groupSize = opts.groupSize ?? 64;
  const dtype = opts.dtype ?? "bf16";
  const seed = opts.seed ?? 0;
  if (!isPresetName(opts.preset))
    throw new Error(`make-model: unknown preset "${opts.preset}" (use ${PRESET_NAMES.join(", ")})`);
  if (bits !== 0 && !(SUPPORTED_BITS as readonly number[]).includes(bits))
    throw new Error(
      `make-model: --bits must be 0 (unquantized) or one of ${SUPPORTED_BITS.join(", ")} (got ${bits})`,
    );
  if (!(SUPPORTED_GROUP_SIZES as readonly number[]).includes(groupSize))
    throw new Error(
      `make-model: --group-size must be one of ${SUPPORTED_GROUP_SIZES.join(", ")} (got ${groupSize})`,
    );
  if (!["bf16", "f16", "f32"].includes(dtype))
    throw new Error(`make-model: --dtype must be bf16, f16 or f32 (got ${dtype})`);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff)
    throw new Error(`make-model: --seed must be an integer in 0..4294967295 (got ${seed})`);
  const layers = opts.layers ?? PRESETS[opts.preset].numLayers;
  if (!Number.isInteger(layers) || layers < 1 || layers > MAX_LAYERS)
    throw new Error(`make-model: --layers must be an integer in 1..${MAX_LAYERS} (got ${layers})`);
  return { dir: opts.dir, preset: opts.preset, bits, groupSize, dtype, seed, layers };
}

/** Tokenizer corpus size: enough text that every merge up to the target vocabulary has real support. */
function corpusChars(tokenizerSize: number): number {
  return tokenizerSize <= 2048 ? 400_000 : 2_500_000;
}

/** Tokens the trained tokenizer holds (added tokens included). */
function tokenizerSizeOf(shape: ModelShape): number {
  return shape.tokenizerSize ?? shape.vocabSize;
}

function addedTokens(preset: PresetName): AddedToken[] {
  const special = SPECIAL_TOKENS.map((content) => ({ content, special: true }));
  return isScripted(preset) ? [...special, ...scriptAddedTokens(preset)] : special;
}

interface BuiltTokenizer {
  bpe: TrainedBpe;
  added: AddedToken[];
  json: Record<string, unknown>;
  size: number;
  idOf: (content: string) => number;
}

export function buildTokenizer(preset: PresetName, seed: number): BuiltTokenizer {
  const shape = PRESETS[preset];
  const added = addedTokens(preset);
  const size = tokenizerSizeOf(shape);
  const bpe = trainBpe(generateCorpus(seed, corpusChars(size)), size - 256 - added.length);
  const idOf = (content: string) => {
    const i = added.findIndex((t) => t.content === content);
    if (i >= 0) return bpe.vocab.size + i;
    const id = bpe.vocab.get(content);
    if (id === undefined) throw new Error(`tokenizer: no token "${content}"`);
    return id;
  };
  return { bpe, added, json: tokenizerJson(bpe, added), size: bpe.vocab.size + added.length, idOf };
}

function quantizationBlock(o: ResolvedOptions, shape: ModelShape): Record<string, unknown> {
  const block: Record<string, unknown> = { group_size: o.groupSize, bits: o.bits, mode: "affine" };
  for (let l = 0; l < shape.numLayers; l++)
    block[routerPath(l)] = { group_size: ROUTER_QUANT.groupSize, bits: ROUTER_QUANT.bits };
  return block;
}

function configJson(
  o: ResolvedOptions,
  shape: ModelShape,
  bos: number,
  eos: number,
): Record<string, unknown> {
  const config: Record<string, unknown> = {
    architectures: ["MiniMaxM2ForCausalLM"],
    model_type: "minimax_m2",
    hidden_size: shape.hiddenSize,
    num_hidden_layers: shape.numLayers,
    num_attention_heads: shape.numHeads,
    num_key_value_heads: shape.numKvHeads,
    head_dim: shape.headDim,
    rotary_dim: shape.rotaryDim,
    partial_rotary_factor: shape.rotaryDim / shape.headDim,
    rope_theta: shape.ropeTheta,
    rms_norm_eps: 1e-6,
    intermediate_size: shape.intermediateSize,
    num_local_experts: shape.numExperts,
    num_experts_per_tok: shape.expertsPerToken,
    scoring_func: "sigmoid",
    use_routing_bias: true,
    use_qk_norm: true,
    qk_norm_type: "per_layer",
    shared_intermediate_size: 0,
    tie_word_embeddings: false,
    max_position_embeddings: shape.maxPositionEmbeddings,
    vocab_size: shape.vocabSize,
    bos_token_id: bos,
    eos_token_id: eos,
    hidden_act: "silu",
    attention_dropout: 0,
    use_mtp: false,
    torch_dtype: o.dtype === "f32" ? "float32" : o.dtype === "f16" ? "float16" : "bfloat16",
  };
  if (o.bits > 0) {
    config.quantization = quantizationBlock(o, shape);
    config.quantization_config = quantizationBlock(o, shape);
  }
  return config;
}

function writeJson(file: string, value: unknown): void {
  writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
}

function writeTokenizerFiles(dir: string, tok: BuiltTokenizer, shape: ModelShape): void {
  writeJson(join(dir, "tokenizer.json"), tok.json);
  writeJson(join(dir, "tokenizer_config.json"), {
    tokenizer_class: "GPT2Tokenizer",
    bos_token: BOS_TOKEN,
    eos_token: EOS_TOKEN,
    unk_token: null,
    pad_token: null,
    add_bos_token: false,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: shape.maxPositionEmbeddings,
    additional_special_tokens: SPECIAL_TOKENS.slice(3),
    chat_template: CHAT_TEMPLATE,
  });
  writeFileSync(join(dir, "chat_template.jinja"), CHAT_TEMPLATE);
}

/** Splits modules into `count` contiguous groups of about equal bytes (a module never straddles shards). */
function assignShards(defs: WeightDef[], count: number): WeightDef[][] {
  const sorted = [...defs].sort((a, b) => (a.path < b.path ? -1 : 1));
  const bytesOf = (d: WeightDef) => tensorSpecs(d).reduce((n, s) => n + tensorBytes(s), 0);
  const total = sorted.reduce((n, d) => n + bytesOf(d), 0);
  const shards: WeightDef[][] = [[]];
  let acc = 0;
  for (const [i, def] of sorted.entries()) {
    const left = sorted.length - i;
    const needMore = count - shards.length;
    const current = shards[shards.length - 1];
    if (current.length > 0 && needMore > 0 && (acc >= (total * shards.length) / count || left <= needMore))
      shards.push([]);
    shards[shards.length - 1].push(def);
    acc += bytesOf(def);
  }
  return shards;
}

/** Shards stay under this many bytes (real MLX conversions write ~5 GB shards). */
const MAX_SHARD_BYTES = 4e9;

/** What a checkpoint will hold, decided before any weight is made: options, shape, tokenizer, config, modules. */
export interface CheckpointPlan {
  options: ResolvedOptions;
  shape: ModelShape;
  tokenizer: BuiltTokenizer;
  config: Record<string, unknown>;
  defs: WeightDef[];
  /** Bytes of all tensors. */
  totalBytes: number;
  shards: number;
}

export function planCheckpoint(opts: MakeModelOptions): CheckpointPlan {
  const o = resolveOptions(opts);
  const tok = buildTokenizer(o.preset, o.seed);
  const preset = PRESETS[o.preset];
  // A preset without its own tokenizer size takes the trained tokenizer's (it may end a few merges short).
  const vocabSize = preset.tokenizerSize === undefined ? tok.size : preset.vocabSize;
  const shape: ModelShape = { ...preset, vocabSize, numLayers: o.layers };
  const config = configJson(o, shape, tok.idOf(BOS_TOKEN), tok.idOf(EOS_TOKEN));
  const defs = weightDefs({ shape, bits: o.bits, groupSize: o.groupSize, dtype: o.dtype });
  const totalBytes = defs.flatMap((d) => tensorSpecs(d)).reduce((n, s) => n + tensorBytes(s), 0);
  const shards = Math.max(shape.shards, Math.ceil(totalBytes / MAX_SHARD_BYTES));
  return { options: o, shape, tokenizer: tok, config, defs, totalBytes, shards };
}

export async function makeModel(opts: MakeModelOptions): Promise<void> {
  const {
    options: o,
    shape,
    tokenizer: tok,
    config,
    defs,
    totalBytes: total,
    shards: shardCount,
  } = planCheckpoint(opts);
  mkdirSync(o.dir, { recursive: true });
  writeJson(join(o.dir, "config.json"), config);
  writeJson(join(o.dir, "generation_config.json"), {
    bos_token_id: config.bos_token_id,
    eos_token_id: config.eos_token_id,
    do_sample: false,
  });
  writeTokenizerFiles(o.dir, tok, shape);

  const valuesOf = isScripted(o.preset)
    ? scriptedValues(shape, o.seed, (t) => tok.idOf(t), tok.bpe, o.preset)
    : (def: WeightDef) => seededValues(def, o.seed);
  const encode = (def: WeightDef) =>
    shape.randomPacked ? randomPackedModule(def, o.seed) : encodeModule(def, valuesOf(def));
  const shards = assignShards(defs, shardCount);
  const specsOf = (group: WeightDef[]) => group.flatMap((d) => tensorSpecs(d));
  const weightMap: Record<string, string> = {};
  let done = 0;
  opts.onProgress?.(0, total);
  for (const [i, group] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`;
    const owner = new Map<string, WeightDef>();
    for (const def of group) for (const spec of tensorSpecs(def)) owner.set(spec.name, def);
    let cached: { path: string; tensors: Map<string, Buffer> } | undefined;
    const produce = (spec: TensorSpec): Buffer => {
      const def = owner.get(spec.name)!;
      if (cached?.path !== def.path) cached = { path: def.path, tensors: encode(def) };
      const bytes = cached.tensors.get(spec.name)!;
      done += bytes.byteLength;
      opts.onProgress?.(done, total);
      return bytes;
    };
    await writeSafetensorsFile(join(o.dir, file), specsOf(group), produce, { format: "mlx" });
    for (const spec of specsOf(group)) weightMap[spec.name] = file;
  }
  const sortedMap = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : 1)));
  writeJson(join(o.dir, "model.safetensors.index.json"), {
    metadata: { total_size: total },
    weight_map: sortedMap,
  });
}
