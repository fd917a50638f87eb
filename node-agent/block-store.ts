// A node's disk tier of the prefix cache: blocks of KV (block-files.ts) in the node's cache folder, one
// sub-folder per model fingerprint and KV format (checkpoint-bytes-hash.ts), so another checkpoint or backend finds
// none of them; the folders of other formats are removed when the store opens.
//
// Layout: <dir>/<format>/<first two hex of the hash>/<hash>.blk and <hash>.<layer>.kv. A block is usable for
// the current shard when its manifest and the files of every layer of the shard's range are there. Files are
// written to a temporary name and renamed (layer files first, the manifest last); whatever a crash leaves half
// written is found by its checksum when read (or, for a manifest, when the store opens) and removed.
//
// Within its byte budget (default: half of the free disk space at open) the store evicts by common/
// block-eviction.ts; blocks that cannot be used (a layer missing, the parent gone) go first. Use is counted on a
// clock that survives restarts through the manifests' modification times.
import { EventEmitter } from "node:events";
import { mkdir, open, readdir, readFile, rename, rm, stat, statfs, unlink, utimes } from "node:fs/promises";
import { join } from "node:path";
import { pickVictim } from "../common/block-eviction.js";
import { errorMessage } from "../common/errors.js";
import type { KvBlock } from "../common/wire/types.js";
import {
  decodeLayerFile,
  decodeManifest,
  encodeLayerHeader,
  encodeManifest,
  LAYER_HEADER,
  layerFileName,
  manifestName,
  parseFileName,
} from "./block-files.js";

export interface BlockStoreOptions {
  /** The node's cache folder (one per node: nodes of one machine must not share it). */
  dir: string;
  /** Names the model bytes and the KV format: `<fingerprint>-<backend>[-int8]-<bytes per position per layer>`. */
  format: string;
  /** Bytes of one position of one layer in a layer file. */
  bytesPerPosition: number;
  /** Disk bytes the blocks may take; absent: half of the free space at open (the store's own files included). */
  budgetBytes?: number;
  log: (line: string) => void;
}

export interface BlockStoreEvents {
  /** A block became usable for the current layers, or stopped being usable. */
  change: [block: KvBlock, usable: boolean];
}

/** A block that cannot be read back (missing, or a file failed its check; the damaged file is removed). */
export class BlockUnreadable extends Error {}

interface Stored {
  block: KvBlock;
  layers: Set<number>;
  lastUsed: number;
}

const FORMAT_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

export class BlockStore extends EventEmitter<BlockStoreEvents> {
  readonly folder: string;
  private readonly opts: BlockStoreOptions;
  private budget = 0;
  private readonly blocks = new Map<string, Stored>();
  private readonly children = new Map<string, Set<string>>();
  private layerStart = 0;
  private layerEnd = 0;
  private clock = 0;
  private held = 0;

  private constructor(opts: BlockStoreOptions) {
    super();
    this.opts = opts;
    this.folder = join(opts.dir, opts.format);
  }

  /** Opens (creating) the store, removing other formats' folders and whatever cannot be trusted; indexes the rest. */
  static async open(opts: BlockStoreOptions): Promise<BlockStore> {
    if (!FORMAT_PATTERN.test(opts.format)) throw new Error(`block store: bad format name "${opts.format}"`);
    await mkdir(join(opts.dir, opts.format), { recursive: true, mode: 0o700 });
    for (const entry of await readdir(opts.dir, { withFileTypes: true })) {
      if (!entry.isDirectory() || entry.name === opts.format) continue;
      opts.log(`prefix cache: removing ${join(opts.dir, entry.name)} (blocks of another model or KV format)`);
      await rm(join(opts.dir, entry.name), { recursive: true, force: true });
    }
    const store = new BlockStore(opts);
    await store.scan();
    store.budget = opts.budgetBytes ?? (await defaultBudget(opts.dir, store.held));
    await store.evictOverBudget();
    opts.log(
      `prefix cache: ${store.blocks.size} blocks (${store.held} bytes) on disk in ${store.folder}, budget ${store.budget} bytes`,
    );
    return store;
  }

  get budgetBytes(): number {
    return this.budget;
  }

  /** Bytes the block files take. */
  get bytes(): number {
    return this.held;
  }

  get size(): number {
    return this.blocks.size;
  }

  /**
   * The shard now holds layers [start, end): files of other layers are removed (only the layers that moved are
   * invalidated: the others stay usable), and blocks whose usability changed are announced.
   */
  async setLayers(start: number, end: number): Promise<void> {
    const before = new Set(this.usableBlocks().map((b) => b.hash));
    this.layerStart = start;
    this.layerEnd = end;
    for (const stored of [...this.blocks.values()]) {
      for (const layer of [...stored.layers])
        if (layer < start || layer >= end) await this.removeLayer(stored, layer);
    }
    for (const stored of this.blocks.values()) {
      const usable = this.usable(stored.block.hash);
      if (usable !== before.has(stored.block.hash)) this.emit("change", stored.block, usable);
    }
  }

  /** Manifest and every layer of the current range are on disk. */
  usable(hash: string): boolean {
    const stored = this.blocks.get(hash);
    if (!stored || this.layerEnd <= this.layerStart) return false;
    for (let l = this.layerStart; l < this.layerEnd; l++) if (!stored.layers.has(l)) return false;
    return true;
  }

  usableBlocks(): KvBlock[] {
    return [...this.blocks.values()].filter((s) => this.usable(s.block.hash)).map((s) => s.block);
  }

  get(hash: string): KvBlock | undefined {
    return this.blocks.get(hash)?.block;
  }

  /** Layers of the current range the block lacks on disk (all of them for a block the store does not know). */
  missingLayers(hash: string): number[] {
    const stored = this.blocks.get(hash);
    const missing: number[] = [];
    for (let l = this.layerStart; l < this.layerEnd; l++) if (!stored?.layers.has(l)) missing.push(l);
    return missing;
  }

  /** Writes the given layers of a block (those it lacks) and its manifest, then keeps the store within budget. */
  async write(block: KvBlock, layers: Map<number, Uint8Array>): Promise<void> {
    const wasUsable = this.usable(block.hash);
    const dir = this.dirOf(block.hash);
    await mkdir(dir, { recursive: true });
    let stored = this.blocks.get(block.hash);
    for (const [layer, payload] of layers) {
      if (stored?.layers.has(layer)) continue;
      const header = encodeLayerHeader(
        {
          hash: block.hash,
          layer,
          positions: block.tokens.length,
          bytesPerPosition: this.opts.bytesPerPosition,
        },
        payload,
      );
      await writeAtomically(join(dir, layerFileName(block.hash, layer)), [header, payload]);
      stored ??= this.track(block);
      stored.layers.add(layer);
      this.held += header.length + payload.byteLength;
    }
    if (!stored) return;
    const manifest = join(dir, manifestName(block.hash));
    if (!(await exists(manifest))) await writeAtomically(manifest, [encodeManifest(block)]);
    stored.lastUsed = ++this.clock;
    if (!wasUsable && this.usable(block.hash)) this.emit("change", block, true);
    await this.evictOverBudget();
  }

  /**
   * The payloads of every layer of the current range, checked. A missing or damaged file makes the block
   * unusable (the file is removed) and throws BlockUnreadable naming what was wrong.
   */
  async read(hash: string): Promise<Uint8Array[]> {
    const stored = this.blocks.get(hash);
    if (!stored || !this.usable(hash)) throw new BlockUnreadable(`block ${hash} is not on disk`);
    const layers: number[] = [];
    for (let l = this.layerStart; l < this.layerEnd; l++) layers.push(l);
    const expected = {
      hash,
      positions: stored.block.tokens.length,
      bytesPerPosition: this.opts.bytesPerPosition,
    };
    const payloads = await Promise.all(
      layers.map(async (layer) => {
        const file = join(this.dirOf(hash), layerFileName(hash, layer));
        let bytes: Buffer;
        try {
          bytes = await readFile(file);
        } catch (err) {
          return `cannot be read (${errorMessage(err)})`;
        }
        return decodeLayerFile(bytes, { ...expected, layer });
      }),
    );
    const bad = payloads.findIndex((p) => typeof p === "string");
    if (bad >= 0) {
      const problem = `layer ${layers[bad]} of block ${hash}: ${payloads[bad] as string}`;
      this.opts.log(`prefix cache: ${problem}; the file is removed and the block recomputed`);
      const wasUsable = this.usable(hash);
      await this.removeLayer(stored, layers[bad]);
      if (wasUsable) this.emit("change", stored.block, false);
      throw new BlockUnreadable(problem);
    }
    this.touch(hash);
    return payloads as Uint8Array[];
  }

  /** Marks a block used now (its manifest's time carries the use across restarts). */
  touch(hash: string): void {
    const stored = this.blocks.get(hash);
    if (!stored) return;
    stored.lastUsed = ++this.clock;
    const now = new Date();
    utimes(join(this.dirOf(hash), manifestName(hash)), now, now).catch(() => {
      // A manifest removed meanwhile has nothing to carry.
    });
  }

  /** Removes a block's files (the store forgets it at once; a second call finds nothing). */
  async remove(hash: string): Promise<void> {
    const stored = this.blocks.get(hash);
    if (!stored) return;
    const wasUsable = this.usable(hash);
    this.untrack(stored);
    const layers = [...stored.layers];
    stored.layers.clear();
    this.held -= manifestBytes(stored.block) + layers.length * this.layerBytes(stored);
    if (wasUsable) this.emit("change", stored.block, false);
    const dir = this.dirOf(hash);
    const files = [...layers.map((l) => layerFileName(hash, l)), manifestName(hash)];
    for (const file of files) await unlink(join(dir, file)).catch(() => undefined);
  }

  // ------------------------------------------------------------ internals

  private dirOf(hash: string): string {
    return join(this.folder, hash.slice(0, 2));
  }

  private track(block: KvBlock): Stored {
    const stored: Stored = { block, layers: new Set(), lastUsed: ++this.clock };
    this.blocks.set(block.hash, stored);
    this.held += manifestBytes(block);
    const siblings = this.children.get(block.parent) ?? new Set<string>();
    this.children.set(block.parent, siblings);
    siblings.add(block.hash);
    return stored;
  }

  private untrack(stored: Stored): void {
    this.blocks.delete(stored.block.hash);
    const siblings = this.children.get(stored.block.parent);
    siblings?.delete(stored.block.hash);
    if (siblings?.size === 0) this.children.delete(stored.block.parent);
  }

  private layerBytes(stored: Stored): number {
    return LAYER_HEADER + stored.block.tokens.length * this.opts.bytesPerPosition;
  }

  private async removeLayer(stored: Stored, layer: number): Promise<void> {
    if (!stored.layers.delete(layer)) return;
    this.held -= this.layerBytes(stored);
    await unlink(join(this.dirOf(stored.block.hash), layerFileName(stored.block.hash, layer))).catch(
      () => undefined,
    );
  }

  /** A block the coordinator could never reach through this node: a layer of the range is missing, or its parent. */
  private useless(stored: Stored): boolean {
    return (
      !this.usable(stored.block.hash) || (stored.block.parent !== "" && !this.blocks.has(stored.block.parent))
    );
  }

  private async evictOverBudget(): Promise<void> {
    while (this.held > this.budget && this.blocks.size > 0) {
      const all = [...this.blocks.values()];
      const useless = all.filter((s) => this.useless(s)).sort((a, b) => a.lastUsed - b.lastUsed);
      const leaves = all
        .filter((s) => !this.children.has(s.block.hash))
        .map((s) => ({
          stored: s,
          lastUsed: s.lastUsed,
          end: s.block.start + s.block.tokens.length,
          id: s.block.hash,
        }));
      const victim = useless[0] ?? pickVictim(leaves, this.clock)?.stored;
      if (!victim) return;
      await this.remove(victim.block.hash);
    }
  }

  /** Indexes the folder: manifests that check out with their layer files; everything else goes. */
  private async scan(): Promise<void> {
    const manifests = new Map<string, string>();
    const layerFiles = new Map<string, Array<{ layer: number; path: string }>>();
    for (const sub of await readdir(this.folder, { withFileTypes: true })) {
      if (!sub.isDirectory() || !/^[0-9a-f]{2}$/.test(sub.name)) continue;
      const dir = join(this.folder, sub.name);
      for (const name of await readdir(dir)) {
        const path = join(dir, name);
        if (name.endsWith(".tmp")) {
          await unlink(path).catch(() => undefined);
          continue;
        }
        const parsed = parseFileName(name);
        if (!parsed || parsed.hash.slice(0, 2) !== sub.name) continue;
        if (parsed.layer === undefined) manifests.set(parsed.hash, path);
        else {
          const list = layerFiles.get(parsed.hash) ?? [];
          list.push({ layer: parsed.layer, path });
          layerFiles.set(parsed.hash, list);
        }
      }
    }
    const found: Array<{ stored: Stored; mtime: number }> = [];
    for (const [hash, path] of manifests) {
      const block = decodeManifest(await readFile(path).catch(() => Buffer.alloc(0)));
      if (typeof block === "string" || block.hash !== hash) {
        this.opts.log(
          `prefix cache: ${path}: ${typeof block === "string" ? block : "named wrongly"}; removed`,
        );
        await unlink(path).catch(() => undefined);
        continue;
      }
      const stored = this.track(block);
      for (const { layer } of layerFiles.get(hash) ?? []) {
        stored.layers.add(layer);
        this.held += this.layerBytes(stored);
      }
      layerFiles.delete(hash);
      found.push({ stored, mtime: (await stat(path)).mtimeMs });
    }
    // Layer files without a manifest: a write that never finished.
    for (const list of layerFiles.values())
      for (const { path } of list) await unlink(path).catch(() => undefined);
    found.sort((a, b) => a.mtime - b.mtime);
    for (const { stored } of found) stored.lastUsed = ++this.clock;
  }
}

function manifestBytes(block: KvBlock): number {
  return 56 + block.tokens.length * 4;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes the buffers to a temporary file, then renames it into place: a reader never sees half a file. */
async function writeAtomically(path: string, parts: Uint8Array[]): Promise<void> {
  const temp = `${path}.${process.pid}.tmp`;
  const file = await open(temp, "w");
  try {
    for (const part of parts)
      for (let done = 0; done < part.byteLength; )
        done += (await file.write(part, done, part.byteLength - done)).bytesWritten;
  } finally {
    await file.close();
  }
  await rename(temp, path);
}

/** Half of the free space of the cache folder's disk, the store's own files counted as free. */
async function defaultBudget(dir: string, held: number): Promise<number> {
  const fs = await statfs(dir);
  return Math.floor((fs.bavail * fs.bsize + held) / 2);
}
