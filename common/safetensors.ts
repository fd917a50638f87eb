// Safetensors files: header reader (validated), tensor reader, streaming writer, and the shard index.
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, __metadata__},
// then the data; offsets are relative to the first byte after the header.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import { join } from "node:path";

export type SafetensorsDtype =
  | "BOOL"
  | "U8"
  | "I8"
  | "U16"
  | "I16"
  | "F16"
  | "BF16"
  | "U32"
  | "I32"
  | "F32"
  | "U64"
  | "I64"
  | "F64"
  | "F8_E4M3"
  | "F8_E5M2";

const dtypeBytes: Record<SafetensorsDtype, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};

export function bytesPerElement(dtype: SafetensorsDtype): number {
  return dtypeBytes[dtype];
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the tensor's first byte in the file. */
  byteOffset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  file: string;
  /** Absolute offset of the data section (8 + header length). */
  dataStart: number;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
}

export interface Tensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Buffer;
}

function isDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === "string" && Object.hasOwn(dtypeBytes, value);
}

export function elementCount(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function parseTensorEntry(file: string, name: string, raw: unknown, dataLength: number): TensorInfo {
  const where = `${file}: tensor "${name}"`;
  if (typeof raw !== "object" || raw === null) throw new Error(`${where}: entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (!isDtype(dtype)) throw new Error(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0))
    throw new Error(`${where}: shape must be a list of non-negative integers (got ${JSON.stringify(shape)})`);
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => Number.isInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  )
    throw new Error(`${where}: data_offsets must be [begin, end] (got ${JSON.stringify(offsets)})`);
  const [begin, end] = offsets as [number, number];
  if (end > dataLength)
    throw new Error(
      `${where}: data_offsets [${begin}, ${end}] run past the data section (${dataLength} bytes)`,
    );
  const expected = elementCount(shape) * dtypeBytes[dtype];
  if (end - begin !== expected)
    throw new Error(
      `${where}: ${end - begin} bytes of data but ${dtype}${JSON.stringify(shape)} needs ${expected}`,
    );
  return { name, dtype, shape: shape as number[], byteOffset: begin, byteLength: end - begin };
}

/** Reads and validates the header of one .safetensors file; errors name the file and the tensor at fault. */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  const fd = openSync(file, "r");
  try {
    const fileSize = fstatSync(fd).size;
    if (fileSize < 8) throw new Error(`${file}: too short for a safetensors file (${fileSize} bytes)`);
    const lengthBytes = Buffer.alloc(8);
    readSync(fd, lengthBytes, 0, 8, 0);
    const headerLength = headerLengthOf(file, lengthBytes, fileSize);
    const headerBytes = Buffer.alloc(headerLength);
    readSync(fd, headerBytes, 0, headerLength, 8);
    return parseSafetensorsHeader(file, headerBytes, fileSize);
  } finally {
    closeSync(fd);
  }
}

/** The header length the first 8 bytes announce, checked against the file's size. */
export function headerLengthOf(file: string, first8: Uint8Array, fileSize: number): number {
  const headerLength = Number(Buffer.from(first8.buffer, first8.byteOffset, 8).readBigUInt64LE(0));
  if (headerLength > fileSize - 8 || headerLength > 100_000_000)
    throw new Error(`${file}: header length ${headerLength} does not fit in a ${fileSize}-byte file`);
  return headerLength;
}

/** Validates a header's JSON bytes (the N bytes after the length) for a file of fileSize bytes. */
export function parseSafetensorsHeader(
  file: string,
  headerBytes: Uint8Array,
  fileSize: number,
): SafetensorsHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(
      Buffer.from(headerBytes.buffer, headerBytes.byteOffset, headerBytes.byteLength).toString("utf8"),
    );
  } catch (err) {
    throw new Error(`${file}: header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new Error(`${file}: header is not a JSON object`);
  const dataStart = 8 + headerBytes.byteLength;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(raw)) {
    if (name === "__metadata__") {
      metadata = entry as Record<string, string>;
      continue;
    }
    const info = parseTensorEntry(file, name, entry, fileSize - dataStart);
    tensors.set(name, { ...info, byteOffset: dataStart + info.byteOffset });
  }
  return { file, dataStart, metadata, tensors };
}

/** Reads one tensor's bytes (copied out of the file). */
export function readTensor(header: SafetensorsHeader, name: string): Tensor {
  const info = header.tensors.get(name);
  if (!info) throw new Error(`${header.file}: no tensor named "${name}"`);
  const data = Buffer.alloc(info.byteLength);
  const fd = openSync(header.file, "r");
  try {
    let done = 0;
    while (done < info.byteLength) {
      const n = readSync(fd, data, done, info.byteLength - done, info.byteOffset + done);
      if (n === 0) throw new Error(`${header.file}: tensor "${name}" is truncated`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return { dtype: info.dtype, shape: info.shape, data };
}

// ---- float conversions (bf16 / f16 <-> f32) ----

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16ToFloat(bits: number): number {
  u32[0] = bits << 16;
  return f32[0];
}

/** Rounds to nearest even, like MLX and PyTorch casts; NaN stays NaN. */
export function floatToBf16(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export function floatToF16(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) return sign | Math.round(a * 2 ** 24); // subnormal (rounds up into the normal range fine)
  let exp = Math.floor(Math.log2(a));
  let mant = Math.round((a / 2 ** exp - 1) * 1024);
  if (mant === 1024) {
    mant = 0;
    exp += 1;
  }
  return sign | ((exp + 15) << 10) | mant;
}

/** Converts a floating-point tensor (F32, F16, BF16) to float32 values. */
export function toFloat32(tensor: Tensor, what = "tensor"): Float32Array {
  const { data, dtype } = tensor;
  const n = data.length / bytesPerElement(dtype);
  const out = new Float32Array(n);
  if (dtype === "F32") {
    for (let i = 0; i < n; i++) out[i] = data.readFloatLE(i * 4);
  } else if (dtype === "BF16") {
    for (let i = 0; i < n; i++) out[i] = bf16ToFloat(data.readUInt16LE(i * 2));
  } else if (dtype === "F16") {
    for (let i = 0; i < n; i++) out[i] = f16ToFloat(data.readUInt16LE(i * 2));
  } else {
    throw new Error(`${what}: dtype ${dtype} is not a float type`);
  }
  return out;
}

/** Encodes float values in F32, F16 or BF16 (little-endian). */
export function fromFloat32(values: ArrayLike<number>, dtype: "F32" | "F16" | "BF16"): Buffer {
  const out = Buffer.alloc(values.length * bytesPerElement(dtype));
  for (let i = 0; i < values.length; i++) {
    if (dtype === "F32") out.writeFloatLE(values[i], i * 4);
    else out.writeUInt16LE(dtype === "BF16" ? floatToBf16(values[i]) : floatToF16(values[i]), i * 2);
  }
  return out;
}

// ---- writer ----

export interface TensorSpec {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
}

export function tensorBytes(spec: TensorSpec): number {
  return elementCount(spec.shape) * bytesPerElement(spec.dtype);
}

/**
 * Writes one safetensors file, tensors sorted by name, producing each tensor's bytes only when it is written
 * so that a large file never sits in memory. The header is padded with spaces to a multiple of 8 bytes.
 */
export async function writeSafetensorsFile(
  file: string,
  specs: TensorSpec[],
  produce: (spec: TensorSpec) => Buffer | Uint8Array | Promise<Buffer | Uint8Array>,
  metadata: Record<string, string> = {},
): Promise<number> {
  const sorted = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const spec of sorted) {
    const size = tensorBytes(spec);
    header[spec.name] = { dtype: spec.dtype, shape: spec.shape, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, "utf8");
  const lengthBytes = Buffer.alloc(8);
  lengthBytes.writeBigUInt64LE(BigInt(headerBytes.length));
  const fd = openSync(file, "w");
  try {
    writeAll(fd, lengthBytes);
    writeAll(fd, headerBytes);
    for (const spec of sorted) {
      const bytes = await produce(spec);
      if (bytes.byteLength !== tensorBytes(spec))
        throw new Error(
          `${file}: tensor "${spec.name}" produced ${bytes.byteLength} bytes, expected ${tensorBytes(spec)}`,
        );
      writeAll(fd, bytes);
    }
  } finally {
    closeSync(fd);
  }
  return 8 + headerBytes.length + offset;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, bytes.byteLength - done);
}

// ---- index ----

export interface SafetensorsIndex {
  totalSize: number;
  /** tensor name -> shard file name (relative to the model directory) */
  weightMap: Record<string, string>;
}

/**
 * Reads model.safetensors.index.json; a single-file checkpoint (model.safetensors, no index) gets an index
 * built from its header.
 */
export function readIndex(modelDir: string): SafetensorsIndex {
  const indexFile = join(modelDir, "model.safetensors.index.json");
  if (!existsSync(indexFile)) {
    const single = join(modelDir, "model.safetensors");
    if (!existsSync(single))
      throw new Error(`${modelDir}: neither model.safetensors.index.json nor model.safetensors exists`);
    const header = readSafetensorsHeader(single);
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    for (const info of header.tensors.values()) {
      weightMap[info.name] = "model.safetensors";
      totalSize += info.byteLength;
    }
    return { totalSize, weightMap };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(indexFile, "utf8"));
  } catch (err) {
    throw new Error(`${indexFile}: cannot read as JSON (${(err as Error).message})`);
  }
  const weightMap = (raw as { weight_map?: unknown })?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap))
    throw new Error(`${indexFile}: "weight_map" must be an object of tensor name -> file`);
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\"))
      throw new Error(`${indexFile}: tensor "${name}" maps to an invalid file ${JSON.stringify(shard)}`);
  }
  const total = (raw as { metadata?: { total_size?: unknown } }).metadata?.total_size;
  return {
    totalSize: typeof total === "number" ? total : 0,
    weightMap: weightMap as Record<string, string>,
  };
}

/** Opens every shard named by the index once; returns tensor name -> its shard's header. */
export function readAllHeaders(modelDir: string): Map<string, SafetensorsHeader> {
  const index = readIndex(modelDir);
  const byFile = new Map<string, SafetensorsHeader>();
  const byTensor = new Map<string, SafetensorsHeader>();
  for (const [name, shard] of Object.entries(index.weightMap)) {
    let header = byFile.get(shard);
    if (!header) {
      header = readSafetensorsHeader(join(modelDir, shard));
      byFile.set(shard, header);
    }
    if (!header.tensors.has(name))
      throw new Error(`${header.file}: index says it holds tensor "${name}" but its header does not`);
    byTensor.set(name, header);
  }
  return byTensor;
}
