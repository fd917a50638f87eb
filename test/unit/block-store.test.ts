// A node's disk tier of the prefix cache (node-agent/block-store.ts, block-files.ts) on a temporary folder, no
// process: blocks written and read back byte for byte and found again after a reopen; a flipped byte or a torn
// file is detected by its checksum, removed and reported, never returned; eviction under a tiny byte budget takes
// unusable blocks first, then leaves by recency; a new layer range removes exactly the layers that moved; another
// model's or format's folder is removed.
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { KvBlock } from "../../common/wire/types.js";
import { blockChain } from "../../coordinator/block-chain.js";
import { layerFileName, manifestName } from "../../node-agent/block-files.js";
import { BlockStore, BlockUnreadable } from "../../node-agent/block-store.js";

const BPP = 16;
let dir = "";
const lines: string[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "block-store-"));
  lines.length = 0;
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function open(budgetBytes = 1e9, format = "fp-cpu-16"): Promise<BlockStore> {
  return BlockStore.open({ dir, format, bytesPerPosition: BPP, budgetBytes, log: (l) => lines.push(l) });
}

/** Layer payloads whose bytes say which block and layer they are. */
function payloads(block: KvBlock, layers: number[]): Map<number, Uint8Array> {
  return new Map(
    layers.map((l) => [
      l,
      Uint8Array.from({ length: block.tokens.length * BPP }, (_, i) => (i + l * 7 + block.start) & 255),
    ]),
  );
}

function chainOf(length: number, salt: number, blockTokens = 4): KvBlock[] {
  return blockChain(
    Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000)),
    blockTokens,
  );
}

function fileOf(store: BlockStore, hash: string, name: string): string {
  return join(store.folder, hash.slice(0, 2), name);
}

async function writeChain(store: BlockStore, chain: KvBlock[], layers = [0, 1]): Promise<void> {
  for (const b of chain) await store.write(b, payloads(b, layers));
}

describe("BlockStore", () => {
  it("reads back what it wrote, and finds it again after a reopen", async () => {
    const store = await open();
    await store.setLayers(0, 2);
    const changes: string[] = [];
    store.on("change", (b, usable) => changes.push(`${b.hash.slice(0, 4)}:${usable}`));
    const chain = chainOf(10, 1);
    await writeChain(store, chain);
    expect(changes).toHaveLength(3);
    const back = await store.read(chain[1].hash);
    expect(back.map((p) => Buffer.from(p))).toEqual(
      [...payloads(chain[1], [0, 1]).values()].map((p) => Buffer.from(p)),
    );
    const again = await open();
    await again.setLayers(0, 2);
    expect(
      again
        .usableBlocks()
        .map((b) => b.hash)
        .sort(),
    ).toEqual(chain.map((b) => b.hash).sort());
    expect(again.get(chain[2].hash)).toEqual(chain[2]);
    expect(again.bytes).toBe(store.bytes);
  });

  it("a flipped byte or a torn file is detected by its checksum, removed, and never returned", async () => {
    const store = await open();
    await store.setLayers(0, 2);
    const chain = chainOf(12, 2);
    await writeChain(store, chain);
    const gone: string[] = [];
    store.on("change", (b, usable) => {
      if (!usable) gone.push(b.hash);
    });
    const file = fileOf(store, chain[1].hash, layerFileName(chain[1].hash, 1));
    const bytes = readFileSync(file);
    bytes[bytes.length - 3] ^= 0x40;
    writeFileSync(file, bytes);
    await expect(store.read(chain[1].hash)).rejects.toThrow(BlockUnreadable);
    await expect(store.read(chain[1].hash)).rejects.toThrow(/not on disk/);
    expect(() => statSync(file)).toThrow();
    expect(gone).toEqual([chain[1].hash]);
    expect(lines.some((l) => l.includes("payload checksum mismatch"))).toBe(true);
    // A torn layer file (cut short) and a torn manifest: the first fails its read, the second is gone at reopen.
    truncateSync(fileOf(store, chain[2].hash, layerFileName(chain[2].hash, 0)), 60);
    await expect(store.read(chain[2].hash)).rejects.toThrow(/torn/);
    truncateSync(fileOf(store, chain[0].hash, manifestName(chain[0].hash)), 60);
    const again = await open();
    await again.setLayers(0, 2);
    expect(again.usableBlocks()).toEqual([]);
    expect(lines.some((l) => l.includes("torn") && l.includes("removed"))).toBe(true);
  });

  it("evicts within a tiny byte budget: unusable blocks first, then leaves by recency and length", async () => {
    const probe = await open();
    await probe.setLayers(0, 2);
    const a = chainOf(8, 3);
    await writeChain(probe, a);
    const perBlock = probe.bytes / 2;
    rmSync(probe.folder, { recursive: true });
    // Room for 5 blocks of 4 tokens.
    const store = await open(perBlock * 5 + 1);
    await store.setLayers(0, 2);
    const b = chainOf(8, 4);
    const c = chainOf(8, 5);
    await writeChain(store, a);
    await writeChain(store, b);
    store.touch(a[0].hash);
    store.touch(a[1].hash);
    // A block with a layer missing can never be used: it goes before any usable one.
    const half = chainOf(4, 6)[0];
    await store.write(half, payloads(half, [0]));
    await writeChain(store, c);
    // 7 blocks written, room for 5: the half block, then b's tail (b is the least recently used), went.
    expect(store.usable(a[1].hash) && store.usable(c[1].hash) && store.usable(b[0].hash)).toBe(true);
    expect(store.get(half.hash)).toBeUndefined();
    expect(store.get(b[1].hash)).toBeUndefined();
    expect(store.size).toBe(5);
    expect(store.bytes).toBeLessThanOrEqual(perBlock * 5 + 1);
  });

  it("a new layer range removes the files of exactly the layers that moved", async () => {
    const store = await open();
    await store.setLayers(0, 3);
    const chain = chainOf(8, 7);
    await writeChain(store, chain, [0, 1, 2]);
    const layersOnDisk = () =>
      readdirSync(join(store.folder, chain[0].hash.slice(0, 2)))
        .filter((n) => n.startsWith(chain[0].hash) && n.endsWith(".kv"))
        .sort();
    const changes: boolean[] = [];
    store.on("change", (_, usable) => changes.push(usable));
    // Layer 2 moves away: its files go, layers 0 and 1 stay usable.
    await store.setLayers(0, 2);
    expect(layersOnDisk()).toEqual([layerFileName(chain[0].hash, 0), layerFileName(chain[0].hash, 1)]);
    expect(store.usableBlocks()).toHaveLength(2);
    expect(changes).toEqual([]);
    // Layer 2 comes back: the blocks lack it, so they are not usable until it is written again.
    await store.setLayers(0, 3);
    expect(store.usableBlocks()).toEqual([]);
    expect(changes).toEqual([false, false]);
    expect(store.missingLayers(chain[0].hash)).toEqual([2]);
  });

  it("removes the folders of other models and KV formats when it opens", async () => {
    const old = await open(1e9, "otherfp-cpu-16");
    await old.setLayers(0, 1);
    await old.write(chainOf(4, 8)[0], payloads(chainOf(4, 8)[0], [0]));
    const store = await open();
    expect(readdirSync(dir)).toEqual(["fp-cpu-16"]);
    expect(store.size).toBe(0);
    expect(lines.some((l) => l.includes("another model or KV format"))).toBe(true);
  });
});
