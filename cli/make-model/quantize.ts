// MLX affine quantization: w = scale * q + bias per group of `groupSize` consecutive inputs, q packed
// least-significant-bit first into a continuous bit stream of uint32 words (3, 5, 6 bits cross words).

export const SUPPORTED_BITS = [2, 3, 4, 5, 6, 8] as const;
export const SUPPORTED_GROUP_SIZES = [32, 64, 128] as const;

export interface QuantizedMatrix {
  /** uint32 words, [rows, cols * bits / 32] */
  packed: Uint32Array;
  /** [rows, cols / groupSize], already rounded to the storage dtype */
  scales: Float32Array;
  biases: Float32Array;
}

export function checkQuantShape(cols: number, bits: number, groupSize: number, what: string): void {
  if (!(SUPPORTED_BITS as readonly number[]).includes(bits))
    throw new Error(`${what}: bits must be one of ${SUPPORTED_BITS.join(", ")} (got ${bits})`);
  if (!(SUPPORTED_GROUP_SIZES as readonly number[]).includes(groupSize))
    throw new Error(
      `${what}: group size must be one of ${SUPPORTED_GROUP_SIZES.join(", ")} (got ${groupSize})`,
    );
  if (cols % groupSize !== 0 || (cols * bits) % 32 !== 0)
    throw new Error(`${what}: input width ${cols} is not a multiple of group size ${groupSize}`);
}

/** Packs values (each < 2^bits) LSB-first into uint32 words; values.length * bits must be a multiple of 32. */
export function packBits(values: ArrayLike<number>, bits: number): Uint32Array {
  const words = new Uint32Array((values.length * bits) / 32);
  let bit = 0;
  for (let i = 0; i < values.length; i++, bit += bits) {
    const word = bit >>> 5;
    const shift = bit & 31;
    const v = values[i];
    words[word] = (words[word] | (v << shift)) >>> 0;
    if (shift + bits > 32) words[word + 1] = (words[word + 1] | (v >>> (32 - shift))) >>> 0;
  }
  return words;
}

/**
 * Quantizes a row-major [rows, cols] matrix. scale = (max - min) / (2^bits - 1), bias = min; both are rounded
 * to the storage dtype first (`roundStored`) so that q is chosen against the values the reader will see.
 */
export function quantizeAffine(
  w: Float32Array,
  rows: number,
  cols: number,
  bits: number,
  groupSize: number,
  roundStored: (x: number) => number,
): QuantizedMatrix {
  checkQuantShape(cols, bits, groupSize, "quantize");
  const levels = 2 ** bits - 1;
  const groupsPerRow = cols / groupSize;
  const scales = new Float32Array(rows * groupsPerRow);
  const biases = new Float32Array(rows * groupsPerRow);
  const q = new Uint8Array(rows * cols);
  for (let g = 0; g < rows * groupsPerRow; g++) {
    const start = g * groupSize;
    let lo = Number.POSITIVE_INFINITY;
    let hi = Number.NEGATIVE_INFINITY;
    for (let i = start; i < start + groupSize; i++) {
      lo = Math.min(lo, w[i]);
      hi = Math.max(hi, w[i]);
    }
    const scale = roundStored((hi - lo) / levels);
    const bias = roundStored(lo);
    scales[g] = scale;
    biases[g] = bias;
    for (let i = start; i < start + groupSize; i++) {
      const level = scale > 0 ? Math.round((w[i] - bias) / scale) : 0;
      q[i] = Math.min(levels, Math.max(0, level));
    }
  }
  return { packed: packBits(q, bits), scales, biases };
}
