// The prefix cache on one node, for one loaded shard: which blocks its engine holds in RAM, the writer that puts
// every new block on disk behind the coordinator's back (off the per-token path: one block at a time, each an
// engine copy and file writes on the thread pool), and the StashBlocks / AssembleBlocks / DropBlocks /
// WatchBlocks calls (proto/cluster.proto). The coordinator's index (coordinator/prefix-cache.ts) decides what
// is kept and used; this node keeps RAM and disk as it is told and reports what its disk holds.
//
// Order matters per block: a drop waits for the block's write (what leaves RAM is on disk first), and a stash or
// an assembly of a block waits for a drop of it still running.
import type { Engine, KvBlockTake } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import type { AssembleBlocksReply, BlockUse, KvBlock } from "../common/wire/types.js";
import { type BlockStore, BlockUnreadable } from "./block-store.js";
import type { Stage } from "./stage.js";

export interface BlockHostOptions {
  engine: Engine;
  stage: Stage;
  /** The shard's first layer (the engine's layer arrays start there). */
  layerStart: number;
  /** The disk tier; absent: RAM only. */
  store?: BlockStore;
  log: (line: string) => void;
}

export interface BlockFigures {
  ramBytes: number;
  diskBytes: number;
  diskBudgetBytes: number;
  /** Prompt positions assembled from RAM blocks and from disk blocks, since the shard loaded. */
  ramHitTokens: number;
  diskHitTokens: number;
}

/** One WatchBlocks subscriber: the disk's usable blocks now, then each change. */
export interface BlockWatcher {
  snapshot(blocks: KvBlock[]): void;
  change(block: KvBlock, disk: boolean): void;
  /** The shard closed. */
  end(): void;
}

/** Disk reads in flight while an assembly runs ahead of the engine. */
const readAhead = 4;

export class BlockHost {
  private readonly opts: BlockHostOptions;
  /** Blocks the engine holds, with what the disk needs to know of them. */
  private readonly ram = new Map<string, KvBlock>();
  private readonly writes = new Map<string, Promise<void>>();
  private writeChain: Promise<void> = Promise.resolve();
  private readonly drops = new Map<string, Promise<void>>();
  private readonly watchers = new Set<BlockWatcher>();
  private closed = false;
  private readonly unlisten: () => void;
  private readonly counters = { ramHitTokens: 0, diskHitTokens: 0 };

  constructor(opts: BlockHostOptions) {
    this.opts = opts;
    const store = opts.store;
    const onChange = (block: KvBlock, usable: boolean): void => {
      for (const w of this.watchers) w.change(block, usable);
    };
    store?.on("change", onChange);
    this.unlisten = () => store?.off("change", onChange);
  }

  figures(): BlockFigures {
    return {
      ramBytes: this.closed ? 0 : this.opts.engine.stats().blockBytes,
      diskBytes: this.opts.store?.bytes ?? 0,
      diskBudgetBytes: this.opts.store?.budgetBytes ?? 0,
      ...this.counters,
    };
  }

  /**
   * Keeps the finished sequence's positions as blocks (those not in RAM yet, which must come with their tokens),
   * frees the sequence, forgets `drop` from RAM and disk, and queues every block the disk lacks for writing.
   * Returns how many blocks were copied.
   */
  async stash(seq: number, chain: KvBlock[], drop: string[]): Promise<number> {
    await this.dropsOf(chain.map((b) => b.hash));
    const fresh = chain.filter((b) => !this.ram.has(b.hash));
    const tokenless = fresh.find((b) => b.tokens.length === 0);
    if (tokenless) {
      await this.opts.stage.release([seq]);
      throw new Error(`block ${tokenless.hash} is not held here and came without its tokens`);
    }
    await this.opts.stage.stash(
      seq,
      fresh.map((b) => ({ id: b.hash, start: b.start, length: b.tokens.length })),
    );
    for (const b of fresh) this.ram.set(b.hash, b);
    for (const b of chain) {
      this.opts.store?.touch(b.hash);
      this.queueWrite(b.hash);
    }
    if (drop.length > 0) await this.forget(drop);
    return fresh.length;
  }

  /**
   * Makes newSeq from the blocks, loading from disk (checked) those not in RAM. Stops at the first block it
   * cannot have: then nothing is made and the reply says how many positions the blocks before it hold.
   */
  async assemble(newSeq: number, uses: BlockUse[]): Promise<AssembleBlocksReply> {
    await this.dropsOf(uses.map((u) => u.hash));
    const reply: AssembleBlocksReply = {
      positions: 0,
      complete: false,
      ram_positions: 0,
      disk_positions: 0,
      problem: "",
    };
    const loads = this.startLoads(uses);
    for (let i = 0; i < uses.length; i++) {
      const use = uses[i];
      const fromDisk = !this.ram.has(use.hash);
      if (fromDisk) {
        const problem = await loads.take(i);
        if (problem) {
          reply.problem = problem;
          loads.cancel();
          return reply;
        }
      }
      reply.positions += use.take;
      if (fromDisk) reply.disk_positions += use.take;
      else reply.ram_positions += use.take;
    }
    const takes: KvBlockTake[] = uses.map((u) => ({ id: u.hash, take: u.take }));
    await this.opts.stage.assemble(newSeq, takes);
    this.counters.ramHitTokens += reply.ram_positions;
    this.counters.diskHitTokens += reply.disk_positions;
    reply.complete = true;
    return reply;
  }

  /** Frees RAM blocks, each once it is on disk. Returns how many were held. */
  async drop(hashes: string[]): Promise<number> {
    const held = hashes.filter((h) => this.ram.has(h) && !this.drops.has(h));
    await Promise.all(held.map((h) => this.dropOne(h)));
    return held.length;
  }

  /** Subscribes to the disk's usable blocks; returns the unsubscribe. */
  watch(watcher: BlockWatcher): () => void {
    watcher.snapshot(this.opts.store?.usableBlocks() ?? []);
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  /** Waits for queued writes (at most timeoutMs), then stops: the engine is about to close. */
  async close(timeoutMs: number): Promise<void> {
    const pending = [...this.writes.values()];
    if (pending.length > 0) {
      const deadline = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
      await Promise.race([Promise.all(pending), deadline]);
      if (this.writes.size > 0)
        this.opts.log(
          `prefix cache: ${this.writes.size} block(s) not written to disk before the shard closed`,
        );
    }
    this.closed = true;
    this.unlisten();
    for (const w of this.watchers) w.end();
    this.watchers.clear();
  }

  // ------------------------------------------------------------ internals

  private async dropsOf(hashes: string[]): Promise<void> {
    const pending = hashes.map((h) => this.drops.get(h)).filter((p) => p !== undefined);
    if (pending.length > 0) await Promise.all(pending);
  }

  private dropOne(hash: string): Promise<void> {
    const done = (this.writes.get(hash) ?? Promise.resolve())
      .then(() => this.opts.engine.dropBlocks([hash]))
      .then(
        () => {
          this.ram.delete(hash);
        },
        (err) => this.opts.log(`prefix cache: dropping block ${hash} failed: ${errorMessage(err)}`),
      )
      .finally(() => this.drops.delete(hash));
    this.drops.set(hash, done);
    return done;
  }

  /** Removes blocks from RAM and from disk (superseded by longer ones). */
  private async forget(hashes: string[]): Promise<void> {
    const store = this.opts.store;
    await Promise.all(
      hashes.map(async (hash) => {
        if (this.ram.has(hash)) await this.dropOne(hash);
        if (store) await this.serially(() => store.remove(hash));
      }),
    );
  }

  /** Runs a change of the disk after the ones queued before it: writes and removals never interleave. */
  private serially(change: () => Promise<void>): Promise<void> {
    const done = this.writeChain.then(change);
    this.writeChain = done;
    return done;
  }

  private queueWrite(hash: string): void {
    const store = this.opts.store;
    if (!store || this.writes.has(hash) || this.closed) return;
    if (store.missingLayers(hash).length === 0) return;
    const write = this.serially(() => this.write(store, hash));
    this.writes.set(hash, write);
    void write.finally(() => this.writes.delete(hash));
  }

  private async write(store: BlockStore, hash: string): Promise<void> {
    const block = this.ram.get(hash);
    const missing = store.missingLayers(hash);
    if (!block || missing.length === 0 || this.closed) return;
    try {
      const layers = await this.opts.engine.exportBlock(hash);
      const first = this.opts.layerStart;
      await store.write(block, new Map(missing.map((l) => [l, layers[l - first]])));
    } catch (err) {
      this.opts.log(`prefix cache: writing block ${hash} to disk failed: ${errorMessage(err)}`);
    }
  }

  /**
   * Reads the disk blocks of an assembly ahead of the engine (a few at a time) and imports each into RAM in
   * order. take(i) resolves with undefined once block i is in RAM, or with the reason it cannot be.
   */
  private startLoads(uses: BlockUse[]): { take(i: number): Promise<string | undefined>; cancel(): void } {
    const store = this.opts.store;
    const reads = new Map<number, Promise<Uint8Array[] | string>>();
    let next = 0;
    let cancelled = false;
    const startRead = (i: number): Promise<Uint8Array[] | string> => {
      const hash = uses[i].hash;
      if (!store?.usable(hash)) return Promise.resolve(`block ${hash} is neither in RAM nor on disk`);
      return store
        .read(hash)
        .catch((err: unknown) =>
          err instanceof BlockUnreadable ? err.message : `block ${hash}: ${errorMessage(err)}`,
        );
    };
    const fill = (): void => {
      while (!cancelled && next < uses.length && reads.size < readAhead) {
        const i = next++;
        if (this.ram.has(uses[i].hash)) continue;
        reads.set(i, startRead(i));
      }
    };
    fill();
    return {
      take: async (i) => {
        if (!reads.has(i)) reads.set(i, startRead(i));
        const read = await reads.get(i)!;
        reads.delete(i);
        fill();
        if (typeof read === "string") return read;
        const hash = uses[i].hash;
        const block = store?.get(hash);
        if (!block) return `block ${hash} left the disk while it was read`;
        try {
          await this.opts.engine.importBlock(hash, block.tokens.length, read);
        } catch (err) {
          return `block ${hash} could not be loaded: ${errorMessage(err)}`;
        }
        this.ram.set(hash, block);
        return undefined;
      },
      cancel: () => {
        cancelled = true;
      },
    };
  }
}
