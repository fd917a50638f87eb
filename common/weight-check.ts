// Checks a checkpoint cannot pass silently: float tensors holding NaN or infinity (a damaged file, or a
// conversion that overflowed) and a config.json naming fewer layers than the checkpoint holds (the extra layers
// would be dropped without a word). Both are refused with the tensor, file or field named.
import { open } from "node:fs/promises";
import { join } from "node:path";
import { partOf } from "./model-table.js";
import { readAllHeaders, type SafetensorsDtype } from "./safetensors.js";

const CHUNK_BYTES = 8 * 1024 * 1024;

/** The exponent bits that mark NaN and infinity, per float dtype (all ones). */
const specialExponent: Partial<Record<SafetensorsDtype, { bytes: 2 | 4; mask: number }>> = {
  F32: { bytes: 4, mask: 0x7f800000 },
  BF16: { bytes: 2, mask: 0x7f80 },
  F16: { bytes: 2, mask: 0x7c00 },
};

/** Index of the first NaN or infinity in little-endian `bytes` of `dtype`, or -1. */
export function firstNonFinite(bytes: Uint8Array, dtype: SafetensorsDtype): number {
  const kind = specialExponent[dtype];
  if (!kind) return -1;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = Math.floor(bytes.byteLength / kind.bytes);
  for (let i = 0; i < count; i++) {
    const bits = kind.bytes === 4 ? view.getUint32(i * 4, true) : view.getUint16(i * 2, true);
    if ((bits & kind.mask) === kind.mask) return i;
  }
  return -1;
}

/**
 * The first float tensor among `names` (in this checkpoint folder) that holds a NaN or an infinity, described for
 * an error message, or undefined when all are finite. Reads only float tensors (norms, scales, biases, bf16
 * matrices), in chunks, so the event loop keeps turning.
 */
export async function findNonFiniteTensor(
  modelDir: string,
  names: Iterable<string>,
): Promise<string | undefined> {
  const headers = readAllHeaders(modelDir);
  for (const name of names) {
    const header = headers.get(name);
    const info = header?.tensors.get(name);
    if (!header || !info || !specialExponent[info.dtype]) continue;
    const bad = await scanTensor(header.file, info.byteOffset, info.byteLength, info.dtype);
    if (bad >= 0)
      return `${header.file}: tensor ${name} (${info.dtype}) holds NaN or infinity at element ${bad}`;
  }
  return undefined;
}

async function scanTensor(
  file: string,
  offset: number,
  length: number,
  dtype: SafetensorsDtype,
): Promise<number> {
  const elementBytes = specialExponent[dtype]?.bytes ?? 4;
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(Math.min(CHUNK_BYTES, length));
    for (let done = 0; done < length; ) {
      const want = Math.min(buffer.length, length - done);
      const { bytesRead } = await handle.read(buffer, 0, want, offset + done);
      if (bytesRead <= 0) break;
      const bad = firstNonFinite(buffer.subarray(0, bytesRead), dtype);
      if (bad >= 0) return done / elementBytes + bad;
      done += bytesRead;
    }
    return -1;
  } finally {
    await handle.close();
  }
}

/** Throws when the checkpoint holds a layer at or past config.json's num_hidden_layers. */
export function checkLayerCount(modelDir: string, numLayers: number, tensorNames: Iterable<string>): void {
  let highest = -1;
  for (const name of tensorNames) {
    const part = partOf(name);
    if (typeof part === "number" && part > highest) highest = part;
  }
  if (highest >= numLayers)
    throw new Error(
      `${join(modelDir, "config.json")}: num_hidden_layers is ${numLayers} but the checkpoint holds layers 0..${highest}: ` +
        "refusing to serve it with layers silently dropped (fix num_hidden_layers, or use the checkpoint it belongs to)",
    );
}
