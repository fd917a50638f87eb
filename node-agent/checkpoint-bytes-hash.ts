// The identity of the model bytes a node's cached KV was computed with (block-store.ts keeps one folder per
// fingerprint: another checkpoint, or the same one changed, finds none of the old blocks). Hashing 130 GB would
// take minutes, so it covers config.json, the index, every shard's name, size and header (tensor names, dtypes,
// shapes, offsets), and 64 KiB samples at 16 places spread over each shard's data: a different conversion or a
// re-quantization changes at least one of them. (common/model-table.ts's modelFingerprint names only the tensor
// table, which is what a weight transfer must agree on; the KV cache needs the bytes themselves to match.)
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";
import { readIndex, readSafetensorsHeader } from "../common/safetensors.js";

const SAMPLES = 16;
const SAMPLE_BYTES = 64 * 1024;

/** 16 hex characters naming the model bytes in modelDir. */
export async function checkpointBytesHash(modelDir: string): Promise<string> {
  const hash = createHash("sha256");
  for (const file of ["config.json", "model.safetensors.index.json"]) {
    const path = join(modelDir, file);
    if (existsSync(path)) hash.update(file).update(await readFile(path));
  }
  const shards = [...new Set(Object.values(readIndex(modelDir).weightMap))].sort();
  for (const shard of shards) await hashShard(hash, join(modelDir, shard), shard);
  return hash.digest("hex").slice(0, 16);
}

async function hashShard(hash: ReturnType<typeof createHash>, path: string, name: string): Promise<void> {
  const header = readSafetensorsHeader(path);
  const file = await open(path, "r");
  try {
    const size = (await file.stat()).size;
    hash.update(`${name}:${size}:`);
    const headerBytes = Buffer.alloc(header.dataStart);
    await file.read(headerBytes, 0, header.dataStart, 0);
    hash.update(headerBytes);
    const data = size - header.dataStart;
    const sample = Buffer.alloc(Math.min(SAMPLE_BYTES, data));
    for (let i = 0; i < SAMPLES && sample.length > 0; i++) {
      const at = header.dataStart + Math.floor(((data - sample.length) * i) / (SAMPLES - 1));
      const { bytesRead } = await file.read(sample, 0, sample.length, at);
      hash.update(sample.subarray(0, bytesRead));
    }
  } finally {
    await file.close();
  }
}
