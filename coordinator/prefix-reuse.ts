// The prefix cache of one pipeline, as the scheduler uses it (docs/architecture.md "Prefix cache"): restore the
// longest cached prefix of a prompt into a new sequence on every stage, keep a finished sequence's KV as blocks,
// and keep the RAM tier within its budget, which yields first whenever sequences in flight or the nodes' memory
// need room. The index is prefix-cache.ts; the calls on the stages are pipeline-blocks.ts.
import { errorMessage } from "../common/errors.js";
import type { BlockUse, NodeStatus } from "../common/wire/types.js";
import type { BlockPort } from "./pipeline-blocks.js";
import { PrefixCache, type PrefixHit } from "./prefix-cache.js";

export interface PrefixReuseOptions {
  blocks: BlockPort;
  stageCount: number;
  /** KV bytes one token costs on each stage. */
  kvBytesPerToken: readonly number[];
  /** Tokens per block. Default 256. */
  blockTokens?: number;
  /** Tokens the RAM tier may hold now, before memory pressure. */
  ramBudget: () => number;
  /** Latest Status of each stage and the memory each must keep free: a stage below it sheds cached blocks. */
  memory?: { statuses: () => Map<number, NodeStatus>; headroomBytes: readonly number[] };
  /** Frees sequences on every stage (an assembly that did not complete everywhere). */
  cancel: (seqs: number[]) => void;
  log: (line: string) => void;
}

/** A prefix restored into a new sequence: its id, and the positions that came from RAM and from disk. */
export interface Restored {
  seq: number;
  positions: number;
  ramPositions: number;
  diskPositions: number;
}

/** The prefix cache's figures for dashboards and benches. */
export interface PrefixCacheFigures {
  ramTokens: number;
  /** Tokens each stage holds on disk, by stage index. */
  diskTokens: number[];
  /** Prompt positions restored from RAM blocks and from disk blocks, and requests that restored any. */
  ramHitTokens: number;
  diskHitTokens: number;
  hits: number;
  lookups: number;
}

/** Attempts at an assembly: a stage that comes up short makes the next one ask for the prefix all hold. */
const assemblyAttempts = 3;
const pressureCheckMs = 1000;

export class PrefixReuse {
  readonly index: PrefixCache;
  private readonly opts: PrefixReuseOptions;
  private readonly stashing = new Set<Promise<void>>();
  private readonly stopDisk: () => void;
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly counts = { ramHitTokens: 0, diskHitTokens: 0, hits: 0, lookups: 0 };
  private closed = false;

  constructor(opts: PrefixReuseOptions) {
    this.opts = opts;
    this.index = new PrefixCache({ stageCount: opts.stageCount, blockTokens: opts.blockTokens });
    this.stopDisk = opts.blocks.onDisk((stage, block, held) => this.index.setDisk(stage, block, held));
    if (opts.memory) {
      this.timer = setInterval(() => this.fit(), pressureCheckMs);
      this.timer.unref();
    }
  }

  figures(): PrefixCacheFigures {
    const diskTokens = Array.from({ length: this.opts.stageCount }, (_, i) => this.index.diskTokens(i));
    return { ramTokens: this.index.ramTokens, diskTokens, ...this.counts };
  }

  /**
   * Makes a new sequence (allocate() names it) holding the longest cached prefix of the prompt on every stage.
   * Falls back to the prefix every stage could assemble, then to none: a damaged or missing block costs a
   * recomputation, never the request.
   */
  async restore(prompt: readonly number[], allocate: () => number): Promise<Restored> {
    if (this.stashing.size > 0) await Promise.allSettled([...this.stashing]);
    this.counts.lookups++;
    const hit = this.index.lookup(prompt);
    if (!hit || this.closed) return { seq: allocate(), positions: 0, ramPositions: 0, diskPositions: 0 };
    this.index.pin(hit);
    const tried = new Set<string>();
    try {
      let uses = hit.uses;
      for (let attempt = 0; attempt < assemblyAttempts && uses.length > 0; attempt++) {
        const seq = allocate();
        for (const u of uses) tried.add(u.hash);
        const answers = await this.opts.blocks.assemble(seq, uses);
        const short = answers.map((a) =>
          "error" in a ? 0 : a.complete ? Number.POSITIVE_INFINITY : a.positions,
        );
        if (short.every((n) => n === Number.POSITIVE_INFINITY)) return this.restored(seq, hit, uses);
        this.opts.cancel([seq]);
        const problems = answers.map((a) => ("error" in a ? a.error : a.problem)).filter((p) => p);
        this.opts.log(
          `prefix cache: assembly incomplete (${problems.join("; ")}); using the prefix all stages hold`,
        );
        uses = truncate(uses, Math.min(...short));
      }
      return { seq: allocate(), positions: 0, ramPositions: 0, diskPositions: 0 };
    } finally {
      this.index.unpin(hit);
      // Blocks a stage loaded from disk for an assembly that did not happen are not in every RAM: drop them.
      const strays = [...tried].filter((h) => !this.index.get(h)?.ram);
      if (strays.length > 0) void this.opts.blocks.drop(strays);
      this.fit();
    }
  }

  private restored(seq: number, hit: PrefixHit, uses: BlockUse[]): Restored {
    const out: Restored = { seq, positions: 0, ramPositions: 0, diskPositions: 0 };
    uses.forEach((use, i) => {
      out.positions += use.take;
      if (hit.blocks[i].ram) out.ramPositions += use.take;
      else out.diskPositions += use.take;
    });
    this.index.assembled(uses);
    this.counts.hits++;
    this.counts.ramHitTokens += out.ramPositions;
    this.counts.diskHitTokens += out.diskPositions;
    return out;
  }

  /** Keeps a finished sequence's KV as blocks on every stage (which frees the sequence), in the background. */
  keep(seq: number, tokens: readonly number[], release: (seqs: number[]) => void): void {
    if (this.closed || tokens.length === 0) {
      release([seq]);
      return;
    }
    const plan = this.index.planStash(tokens);
    const done = this.opts.blocks.stash(seq, plan.chain, plan.drop).then(
      () => {
        this.index.stashed(plan);
        this.fit();
      },
      (err) => {
        this.index.stashFailed(plan);
        this.opts.log(`prefix cache: keeping sequence ${seq} failed: ${errorMessage(err)}`);
        // A stage that took the stash has freed the sequence; the others still hold it.
        release([seq]);
        const fresh = plan.chain.filter((b) => !this.index.get(b.hash)?.ram).map((b) => b.hash);
        void this.opts.blocks.drop(fresh);
      },
    );
    this.stashing.add(done);
    void done.finally(() => this.stashing.delete(done));
  }

  /** Evicts RAM blocks until the tier fits its budget less what the nodes' memory pressure asks back. */
  fit(): void {
    if (this.closed) return;
    const budget = Math.max(0, this.opts.ramBudget() - this.pressureTokens());
    const evicted = this.index.evictRam(budget);
    if (evicted.length > 0) void this.opts.blocks.drop(evicted);
  }

  /**
   * Tokens to shed because a stage has less free memory than its headroom: the missing bytes over its KV bytes
   * per token, for the stage that misses most. The cache is the first thing to give memory back.
   */
  private pressureTokens(): number {
    const memory = this.opts.memory;
    if (!memory) return 0;
    let shed = 0;
    for (const [stage, status] of memory.statuses()) {
      const free = status.memory_total - status.memory_used;
      const deficit = (memory.headroomBytes[stage] ?? 0) - free;
      const perToken = this.opts.kvBytesPerToken[stage] ?? 0;
      if (deficit > 0 && perToken > 0) shed = Math.max(shed, Math.ceil(deficit / perToken));
    }
    if (shed === 0) return 0;
    // Shed from what is held now: the budget becomes the RAM tier less the deficit.
    return Math.max(0, this.opts.ramBudget() - Math.max(0, this.index.ramTokens - shed));
  }

  /** Resolves once the stashes under way have ended (or after timeoutMs). */
  async settle(timeoutMs: number): Promise<void> {
    if (this.stashing.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([Promise.allSettled([...this.stashing]), deadline]);
    clearTimeout(timer);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.stopDisk();
  }
}

/** The uses covering the first `positions` positions. */
function truncate(uses: BlockUse[], positions: number): BlockUse[] {
  const out: BlockUse[] = [];
  let left = positions;
  for (const use of uses) {
    if (left <= 0) break;
    const take = Math.min(use.take, left);
    out.push({ hash: use.hash, take });
    left -= take;
  }
  return out;
}
