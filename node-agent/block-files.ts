// The two files of a prefix-cache block on a node's disk (block-store.ts), and how they are checked when read:
//
//   <hash>.blk       the block's manifest: its name, its parent's name, its start position and its tokens
//   <hash>.<L>.kv    the KV of layer L for the block's positions, in the engine's exchange layout
//                    (common/engine-api.ts exportBlock)
//
// Both begin with a magic and carry CRC-32s (of the header and of the payload), so a torn write or a flipped bit
// is found before anything reaches the engine; a manifest's name must also be the chain hash of its parent and
// tokens. All integers are little-endian.
import { crc32 } from "node:zlib";
import { blockHash, isBlockHash } from "../common/block-hash.js";
import type { KvBlock } from "../common/wire/types.js";

const MANIFEST_MAGIC = Buffer.from("SCKVB001", "latin1");
const LAYER_MAGIC = Buffer.from("SCKVL001", "latin1");
/** magic 8, hash 16, parent 16, has-parent 4, start 4, count 4 (then tokens, then the CRC). */
const MANIFEST_HEADER = 52;
/** magic 8, hash 16, layer 4, positions 4, bytes per position 4, payload CRC 4, header CRC 4. */
export const LAYER_HEADER = 44;

export function encodeManifest(block: KvBlock): Buffer {
  const count = block.tokens.length;
  const out = Buffer.alloc(MANIFEST_HEADER + count * 4 + 4);
  MANIFEST_MAGIC.copy(out, 0);
  out.write(block.hash, 8, "hex");
  if (block.parent) out.write(block.parent, 24, "hex");
  out.writeUInt32LE(block.parent ? 1 : 0, 40);
  out.writeUInt32LE(block.start, 44);
  out.writeUInt32LE(count, 48);
  for (let i = 0; i < count; i++) out.writeInt32LE(block.tokens[i], MANIFEST_HEADER + i * 4);
  out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

/** The manifest's block, or why it cannot be trusted. */
export function decodeManifest(bytes: Buffer): KvBlock | string {
  if (bytes.length < MANIFEST_HEADER + 4 || !bytes.subarray(0, 8).equals(MANIFEST_MAGIC))
    return "not a block manifest (bad magic or too short)";
  const count = bytes.readUInt32LE(48);
  if (bytes.length !== MANIFEST_HEADER + count * 4 + 4)
    return `torn: ${bytes.length} bytes for ${count} tokens`;
  if (crc32(bytes.subarray(0, bytes.length - 4)) !== bytes.readUInt32LE(bytes.length - 4))
    return "checksum mismatch";
  const tokens = new Array<number>(count);
  for (let i = 0; i < count; i++) tokens[i] = bytes.readInt32LE(MANIFEST_HEADER + i * 4);
  const block: KvBlock = {
    hash: bytes.toString("hex", 8, 24),
    parent: bytes.readUInt32LE(40) ? bytes.toString("hex", 24, 40) : "",
    start: bytes.readUInt32LE(44),
    tokens,
  };
  if (count === 0) return "holds no tokens";
  if (blockHash(block.parent, tokens) !== block.hash)
    return "its name is not the hash of its parent and tokens";
  return block;
}

export interface LayerFileHeader {
  hash: string;
  layer: number;
  positions: number;
  bytesPerPosition: number;
}

/** The header of a layer file; the payload follows it (written beside it, not copied into it). */
export function encodeLayerHeader(header: LayerFileHeader, payload: Uint8Array): Buffer {
  if (payload.byteLength !== header.positions * header.bytesPerPosition)
    throw new Error(
      `layer ${header.layer} of block ${header.hash}: ${payload.byteLength} bytes for ${header.positions} positions`,
    );
  const out = Buffer.alloc(LAYER_HEADER);
  LAYER_MAGIC.copy(out, 0);
  out.write(header.hash, 8, "hex");
  out.writeUInt32LE(header.layer, 24);
  out.writeUInt32LE(header.positions, 28);
  out.writeUInt32LE(header.bytesPerPosition, 32);
  out.writeUInt32LE(crc32(payload), 36);
  out.writeUInt32LE(crc32(out.subarray(0, 40)), 40);
  return out;
}

/** The payload of a layer file that is exactly what `expected` describes, or why it is not. */
export function decodeLayerFile(bytes: Buffer, expected: LayerFileHeader): Uint8Array | string {
  if (bytes.length < LAYER_HEADER || !bytes.subarray(0, 8).equals(LAYER_MAGIC))
    return "not a block layer file (bad magic or too short)";
  if (crc32(bytes.subarray(0, 40)) !== bytes.readUInt32LE(40)) return "header checksum mismatch";
  const found: LayerFileHeader = {
    hash: bytes.toString("hex", 8, 24),
    layer: bytes.readUInt32LE(24),
    positions: bytes.readUInt32LE(28),
    bytesPerPosition: bytes.readUInt32LE(32),
  };
  for (const key of ["hash", "layer", "positions", "bytesPerPosition"] as const)
    if (found[key] !== expected[key]) return `${key} is ${found[key]}, expected ${expected[key]}`;
  const payload = bytes.subarray(LAYER_HEADER);
  if (payload.length !== expected.positions * expected.bytesPerPosition)
    return `torn: ${payload.length} payload bytes, expected ${expected.positions * expected.bytesPerPosition}`;
  if (crc32(payload) !== bytes.readUInt32LE(36)) return "payload checksum mismatch";
  return payload;
}

/** File names: the manifest, and the KV of one layer. */
export function manifestName(hash: string): string {
  return `${hash}.blk`;
}

export function layerFileName(hash: string, layer: number): string {
  return `${hash}.${layer}.kv`;
}

/** What a file name in a block folder is: a manifest, a layer file, or neither. */
export function parseFileName(name: string): { hash: string; layer?: number } | undefined {
  const parts = name.split(".");
  if (!isBlockHash(parts[0] ?? "")) return undefined;
  if (parts.length === 2 && parts[1] === "blk") return { hash: parts[0] };
  if (parts.length === 3 && parts[2] === "kv" && /^\d{1,5}$/.test(parts[1]))
    return { hash: parts[0], layer: Number(parts[1]) };
  return undefined;
}
