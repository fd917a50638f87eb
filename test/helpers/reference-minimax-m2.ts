// Reference MiniMax-M2 forward pass: plain TypeScript, float32 storage, slow and obvious, written straight
// from docs/model.md's pseudocode. Independent of the engine: it has its own dequantization and KV cache. Tests
// compare the engine's logits against it. With `int8Inputs` it also rounds the inputs of every 4-bit matrix but
// the router to int8 levels per group, as the engine's int8 precision mode specifies (native/README.md,
// "Precision modes"), so that mode is checked against the same independent arithmetic; with `kvF16` it keeps its
// cached keys and values rounded to f16 (ties to even, clamped to the largest finite f16), as an f16 KV cache does.
import { join } from "node:path";
import { type ModelConfig, quantFor, readModelConfig } from "../../common/model-config.js";
import { readAllHeaders, readTensor, type SafetensorsHeader, toFloat32 } from "../../common/safetensors.js";

/** Unpacks `count` unsigned `bits`-wide values stored LSB-first in a continuous stream of uint32 words. */
export function unpackBits(words: Uint32Array, count: number, bits: number, wordOffset = 0): Uint32Array {
  const out = new Uint32Array(count);
  const mask = bits === 32 ? 0xffffffff : (1 << bits) - 1;
  for (let k = 0; k < count; k++) {
    const bit = k * bits;
    const word = wordOffset + (bit >>> 5);
    const shift = bit & 31;
    let v = words[word] >>> shift;
    if (shift + bits > 32) v |= words[word + 1] << (32 - shift);
    out[k] = (v & mask) >>> 0;
  }
  return out;
}

/** MLX affine dequantization of a [rows, cols] matrix: w = scale * q + bias per group along each row. */
export function dequantize(
  words: Uint32Array,
  scales: Float32Array,
  biases: Float32Array,
  rows: number,
  cols: number,
  bits: number,
  groupSize: number,
): Float32Array {
  const out = new Float32Array(rows * cols);
  const wordsPerRow = (cols * bits) / 32;
  const groupsPerRow = cols / groupSize;
  for (let r = 0; r < rows; r++) {
    const q = unpackBits(words, cols, bits, r * wordsPerRow);
    for (let c = 0; c < cols; c++) {
      const g = r * groupsPerRow + Math.floor(c / groupSize);
      out[r * cols + c] = scales[g] * q[c] + biases[g];
    }
  }
  return out;
}

/** rms(x, w) = w * x / sqrt(mean(x^2) + eps) */
export function rmsNorm(x: Float32Array, w: Float32Array, eps: number): Float32Array {
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += x[i] * x[i];
  const inv = 1 / Math.sqrt(sum / x.length + eps);
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = w[i] * (x[i] * inv);
  return out;
}

/**
 * Rotary embedding in place on one head vector at `offset` (length headDim): dims 0..rotaryDim-1 rotate with
 * half-split pairing (j, j + rotaryDim/2), the rest stay as they are.
 */
export function ropeInPlace(
  x: Float32Array,
  offset: number,
  rotaryDim: number,
  position: number,
  theta: number,
): void {
  const half = rotaryDim / 2;
  for (let j = 0; j < half; j++) {
    const angle = position * theta ** (-j / half);
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    const a = x[offset + j];
    const b = x[offset + j + half];
    x[offset + j] = a * cos - b * sin;
    x[offset + j + half] = b * cos + a * sin;
  }
}

/** Round half to even, as C's nearbyint in the default rounding mode. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * x with each group of `group` inputs rounded to int8 levels: step = max|x_g| / 127 (f32), q = round(x * (127 /
 * max|x_g|)) in f32 arithmetic, x' = q * step.
 */
function roundInputsInt8(x: Float32Array, group: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let g = 0; g < x.length; g += group) {
    let max = 0;
    for (let k = g; k < g + group; k++) max = Math.max(max, Math.abs(x[k]));
    const step = Math.fround(max / 127);
    const inv = max > 0 ? Math.fround(127 / max) : 0;
    for (let k = g; k < g + group; k++) out[k] = roundHalfEven(Math.fround(x[k] * inv)) * step;
  }
  return out;
}

/** y = W x for W row-major [rows, cols] starting at row `rowOffset`. */
function matVec(w: Float32Array, x: Float32Array, rows: number, rowOffset = 0): Float32Array {
  const cols = x.length;
  const out = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = (rowOffset + r) * cols;
    let s = 0;
    for (let c = 0; c < cols; c++) s += w[base + c] * x[c];
    out[r] = s;
  }
  return out;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const silu = (x: number) => x / (1 + Math.exp(-x));

interface LayerWeights {
  inputNorm: Float32Array;
  postNorm: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  qNorm: Float32Array;
  kNorm: Float32Array;
  router: Float32Array;
  correction: Float32Array;
  /** experts stacked [E, out, in] */
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

/** Which experts a token goes to and with what weight (exposed for tests and engine comparisons). */
export interface Routing {
  experts: number[];
  weights: number[];
}

/**
 * x rounded to the nearest f16 value, ties to even, clamped to +-65504. Computed in doubles, where dividing by
 * the quantum (a power of two) is exact, so this is the IEEE rounding without any f16 type.
 */
export function roundToF16(x: number): number {
  if (Number.isNaN(x) || x === 0) return x;
  const a = Math.min(Math.abs(x), 65504);
  let exponent = Math.floor(Math.log2(a));
  if (2 ** exponent > a) exponent--; // log2 may round up just below a power of two
  if (2 ** (exponent + 1) <= a) exponent++;
  const quantum = 2 ** (Math.max(exponent, -14) - 10); // 10 mantissa bits; subnormals below 2^-14
  const steps = a / quantum;
  let rounded = Math.round(steps);
  if (rounded - steps === 0.5 && rounded % 2 === 1) rounded--; // a tie goes to the even neighbour
  return Math.sign(x) * rounded * quantum;
}

export class ReferenceModel {
  /** Per layer: cached keys and values, one Float32Array per position. */
  private keys: Float32Array[][];
  private values: Float32Array[][];
  /** Set: 4-bit matrices (not the router) take their inputs rounded to int8 levels per group. */
  int8Inputs = false;
  /** Set: cached keys and values are rounded to f16, as the cpu backend's kvDtype "f16" stores them. */
  kvF16 = false;

  private constructor(
    readonly config: ModelConfig,
    private readonly embed: Float32Array,
    private readonly finalNorm: Float32Array,
    private readonly lmHead: Float32Array,
    private readonly layers: LayerWeights[],
    /** The group size of each 4-bit weight, for int8Inputs. */
    private readonly fourBitGroups: WeakMap<Float32Array, number>,
  ) {
    this.keys = layers.map(() => []);
    this.values = layers.map(() => []);
  }

  static async load(dir: string): Promise<ReferenceModel> {
    const config = readModelConfig(dir);
    const headers = readAllHeaders(dir);
    const fourBitGroups = new WeakMap<Float32Array, number>();
    const weight = (path: string) => {
      const w = loadWeight(config, headers, path);
      const quant = quantFor(config, path);
      if (headers.has(`${path}.scales`) && quant?.bits === 4) fourBitGroups.set(w, quant.groupSize);
      return w;
    };
    const vector = (name: string) => {
      const header = headers.get(name);
      if (!header) throw new Error(`${join(dir, "model.safetensors.index.json")}: no tensor "${name}"`);
      return toFloat32(readTensor(header, name), name);
    };
    const layers: LayerWeights[] = [];
    for (let l = 0; l < config.numLayers; l++) {
      const p = `model.layers.${l}`;
      layers.push({
        inputNorm: vector(`${p}.input_layernorm.weight`),
        postNorm: vector(`${p}.post_attention_layernorm.weight`),
        q: weight(`${p}.self_attn.q_proj`),
        k: weight(`${p}.self_attn.k_proj`),
        v: weight(`${p}.self_attn.v_proj`),
        o: weight(`${p}.self_attn.o_proj`),
        qNorm: vector(`${p}.self_attn.q_norm.weight`),
        kNorm: vector(`${p}.self_attn.k_norm.weight`),
        router: weight(`${p}.block_sparse_moe.gate`),
        correction: vector(`${p}.block_sparse_moe.e_score_correction_bias`),
        gate: weight(`${p}.block_sparse_moe.switch_mlp.gate_proj`),
        up: weight(`${p}.block_sparse_moe.switch_mlp.up_proj`),
        down: weight(`${p}.block_sparse_moe.switch_mlp.down_proj`),
      });
    }
    return new ReferenceModel(
      config,
      weight("model.embed_tokens"),
      vector("model.norm.weight"),
      weight("lm_head"),
      layers,
      fourBitGroups,
    );
  }

  /** W x, with x rounded to int8 levels first where int8Inputs asks it for this matrix. */
  private mv(w: Float32Array, x: Float32Array, rows: number, rowOffset = 0): Float32Array {
    const group = this.int8Inputs ? this.fourBitGroups.get(w) : undefined;
    return matVec(w, group ? roundInputsInt8(x, group) : x, rows, rowOffset);
  }

  /** Number of positions in the KV cache. */
  get cacheLength(): number {
    return this.keys[0]?.length ?? 0;
  }

  /** Drops cached positions from `length` on (0 = forget everything). */
  truncate(length: number): void {
    for (let l = 0; l < this.layers.length; l++) {
      this.keys[l].length = Math.min(this.keys[l].length, length);
      this.values[l].length = Math.min(this.values[l].length, length);
    }
  }

  /** Logits for every new position. `startPos` must equal the cache length (earlier positions are reused). */
  forward(tokens: number[], startPos: number): Float32Array[] {
    return this.forwardHidden(tokens, startPos).map((h) => this.logits(h));
  }

  /** Logits of the last new position only (a long prompt needs just that one). */
  forwardLast(tokens: number[], startPos: number): Float32Array {
    const hidden = this.forwardHidden(tokens, startPos);
    return this.logits(hidden[hidden.length - 1]);
  }

  /** Residual stream after the last layer, one row per new position. */
  forwardHidden(tokens: number[], startPos: number): Float32Array[] {
    if (startPos > this.cacheLength)
      throw new Error(`reference: startPos ${startPos} is past the cache (${this.cacheLength} positions)`);
    this.truncate(startPos);
    let hidden = this.embedTokens(tokens);
    for (let l = 0; l < this.layers.length; l++) hidden = this.layerForward(l, hidden, startPos);
    return hidden;
  }

  /** h = embed[ids] (no scaling). */
  embedTokens(tokens: number[]): Float32Array[] {
    const h = this.config.hiddenSize;
    return tokens.map((t) => {
      if (!Number.isInteger(t) || t < 0 || t >= this.config.vocabSize)
        throw new Error(
          `reference: token id ${t} is outside the vocabulary (0..${this.config.vocabSize - 1})`,
        );
      return this.embed.slice(t * h, (t + 1) * h);
    });
  }

  /** One decoder layer over new positions startPos.. (appends to this layer's KV cache). */
  layerForward(layer: number, hidden: Float32Array[], startPos: number): Float32Array[] {
    const w = this.layers[layer];
    const c = this.config;
    const out = hidden.map((h) => Float32Array.from(h));
    const queries: Float32Array[] = [];
    for (let t = 0; t < hidden.length; t++) {
      const x = rmsNorm(hidden[t], w.inputNorm, c.rmsNormEps);
      const q = rmsNorm(this.mv(w.q, x, c.numHeads * c.headDim), w.qNorm, c.rmsNormEps);
      const k = rmsNorm(this.mv(w.k, x, c.numKvHeads * c.headDim), w.kNorm, c.rmsNormEps);
      const v = this.mv(w.v, x, c.numKvHeads * c.headDim);
      const pos = startPos + t;
      for (let i = 0; i < c.numHeads; i++) ropeInPlace(q, i * c.headDim, c.rotaryDim, pos, c.ropeTheta);
      for (let i = 0; i < c.numKvHeads; i++) ropeInPlace(k, i * c.headDim, c.rotaryDim, pos, c.ropeTheta);
      this.keys[layer].push(this.kvF16 ? k.map(roundToF16) : k);
      this.values[layer].push(this.kvF16 ? v.map(roundToF16) : v);
      queries.push(q);
    }
    for (let t = 0; t < hidden.length; t++) {
      const attn = this.attend(layer, queries[t], startPos + t);
      const o = this.mv(w.o, attn, c.hiddenSize);
      for (let i = 0; i < c.hiddenSize; i++) out[t][i] += o[i];
      const x = rmsNorm(out[t], w.postNorm, c.rmsNormEps);
      const moe = this.moe(layer, x);
      for (let i = 0; i < c.hiddenSize; i++) out[t][i] += moe[i];
    }
    return out;
  }

  /** Causal attention of one query (all heads) over cache positions 0..pos. */
  private attend(layer: number, q: Float32Array, pos: number): Float32Array {
    const c = this.config;
    const d = c.headDim;
    const group = c.numHeads / c.numKvHeads;
    const scale = 1 / Math.sqrt(d);
    const out = new Float32Array(c.numHeads * d);
    const keys = this.keys[layer];
    const values = this.values[layer];
    const scores = new Float64Array(pos + 1);
    for (let head = 0; head < c.numHeads; head++) {
      const kv = Math.floor(head / group) * d;
      const qo = head * d;
      let max = Number.NEGATIVE_INFINITY;
      for (let p = 0; p <= pos; p++) {
        let s = 0;
        for (let i = 0; i < d; i++) s += q[qo + i] * keys[p][kv + i];
        scores[p] = s * scale;
        max = Math.max(max, scores[p]);
      }
      let sum = 0;
      for (let p = 0; p <= pos; p++) {
        scores[p] = Math.exp(scores[p] - max);
        sum += scores[p];
      }
      for (let p = 0; p <= pos; p++) {
        const a = scores[p] / sum;
        for (let i = 0; i < d; i++) out[qo + i] += a * values[p][kv + i];
      }
    }
    return out;
  }

  /** Sigmoid router; the correction bias picks the experts but does not weight them. */
  route(layer: number, x: Float32Array): Routing {
    const w = this.layers[layer];
    const c = this.config;
    const s = Array.from(matVec(w.router, x, c.numExperts), sigmoid);
    const order = s
      .map((_, e) => e)
      .sort((a, b) => s[b] + w.correction[b] - (s[a] + w.correction[a]) || a - b);
    const experts = order.slice(0, c.expertsPerToken);
    const total = experts.reduce((sum, e) => sum + s[e], 0);
    return { experts, weights: experts.map((e) => s[e] / (total + 1e-20)) };
  }

  private moe(layer: number, x: Float32Array): Float32Array {
    const w = this.layers[layer];
    const c = this.config;
    const ffn = c.intermediateSize;
    const out = new Float32Array(c.hiddenSize);
    const { experts, weights } = this.route(layer, x);
    experts.forEach((e, j) => {
      const gate = this.mv(w.gate, x, ffn, e * ffn);
      const up = this.mv(w.up, x, ffn, e * ffn);
      const act = new Float32Array(ffn);
      for (let i = 0; i < ffn; i++) act[i] = silu(gate[i]) * up[i];
      const down = this.mv(w.down, act, c.hiddenSize, e * c.hiddenSize);
      for (let i = 0; i < c.hiddenSize; i++) out[i] += weights[j] * down[i];
    });
    return out;
  }

  /** logits = rms(h, model.norm) lm_head^T */
  logits(h: Float32Array): Float32Array {
    const x = rmsNorm(h, this.finalNorm, this.config.rmsNormEps);
    return this.mv(this.lmHead, x, this.config.vocabSize);
  }
}

/** A module's weight as float32 [..., out, in]: dequantized when it has scales, else converted as stored. */
export function loadWeight(
  config: ModelConfig,
  headers: Map<string, SafetensorsHeader>,
  path: string,
): Float32Array {
  const header = (name: string) => {
    const h = headers.get(name);
    if (!h) throw new Error(`checkpoint: no tensor "${name}"`);
    return h;
  };
  const weightName = `${path}.weight`;
  const weight = readTensor(header(weightName), weightName);
  if (!headers.has(`${path}.scales`)) return toFloat32(weight, weightName);
  const quant = quantFor(config, path);
  if (!quant) throw new Error(`checkpoint: "${path}" has scales but config.json has no quantization`);
  if (weight.dtype !== "U32")
    throw new Error(`checkpoint: quantized "${weightName}" must be U32, is ${weight.dtype}`);
  const scales = toFloat32(readTensor(header(`${path}.scales`), `${path}.scales`), `${path}.scales`);
  const biases = toFloat32(readTensor(header(`${path}.biases`), `${path}.biases`), `${path}.biases`);
  const packedCols = weight.shape[weight.shape.length - 1];
  const cols = (packedCols * 32) / quant.bits;
  const rows = weight.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  if (scales.length !== (rows * cols) / quant.groupSize)
    throw new Error(
      `checkpoint: "${path}.scales" has ${scales.length} values, expected ${(rows * cols) / quant.groupSize} for ${quant.bits}-bit group ${quant.groupSize}`,
    );
  const words = new Uint32Array(
    weight.data.buffer.slice(weight.data.byteOffset, weight.data.byteOffset + weight.data.byteLength),
  );
  return dequantize(words, scales, biases, rows, cols, quant.bits, quant.groupSize);
}
