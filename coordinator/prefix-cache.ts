// The coordinator's index of the prefix cache (docs/architecture.md "Prefix cache"): which blocks of KV the
// stages hold, and where. A block is the KV of a run of tokens (block-chain.ts), named by a chain hash, so the
// index is a tree: a block's children continue it. Two tiers:
//   RAM   the engines' block pools. The coordinator decides what they hold, the same blocks on every stage: a
//         finished sequence's blocks are stashed, and the tier is kept within a token budget by evicting leaves
//         (common/block-eviction.ts: by recency and the length of the conversation, so one long session gives up
//         its tail before the others are flushed).
//   disk  each node's block folder, which the node fills behind RAM and evicts itself; the nodes report what
//         they hold (WatchBlocks), stage by stage.
// A block serves a prompt when every stage holds it (RAM, or its own disk); a match walks the tree from the
// root along the prompt's tokens and may end inside a block (only the positions it shares are used). A prompt's
// last token always runs, so at most prompt.length - 1 positions are reused.
import { pickVictim } from "../common/block-eviction.js";
import type { BlockUse, KvBlock } from "../common/wire/types.js";
import { blockChain } from "./block-chain.js";

export interface CachedBlock {
  readonly hash: string;
  /** "" for a block at position 0. */
  readonly parent: string;
  readonly start: number;
  readonly tokens: readonly number[];
  /** In every stage's RAM. */
  ram: boolean;
  /** Stages holding it on disk for all of their layers. */
  readonly disk: Set<number>;
  lastUsed: number;
  /** Held by an assembly in progress: not evicted from RAM meanwhile. */
  pins: number;
}

export interface PrefixHit {
  blocks: CachedBlock[];
  /** What to assemble: each block and the positions used from it. */
  uses: BlockUse[];
  positions: number;
  /** Positions of blocks every stage holds in RAM; the rest come from the stages' disks. */
  ramPositions: number;
  diskPositions: number;
}

export interface StashPlan {
  /** The finished sequence's chain. */
  chain: KvBlock[];
  /** Shorter blocks the new ones supersede, to forget on every stage (RAM and disk). */
  drop: string[];
  /** Blocks of the chain already known: pinned until the stash ends, so no eviction crosses it. */
  pinned: CachedBlock[];
}

export interface PrefixCacheOptions {
  stageCount: number;
  /** Tokens per block. Default 256. */
  blockTokens?: number;
}

export class PrefixCache {
  readonly blockTokens: number;
  private readonly stageCount: number;
  private readonly blocks = new Map<string, CachedBlock>();
  private readonly children = new Map<string, Set<CachedBlock>>();
  private clock = 0;
  private ram = 0;

  constructor(opts: PrefixCacheOptions) {
    const blockTokens = opts.blockTokens ?? 256;
    if (!Number.isInteger(blockTokens) || blockTokens < 1)
      throw new Error(`PrefixCache: blockTokens must be a positive integer (got ${blockTokens})`);
    this.blockTokens = blockTokens;
    this.stageCount = opts.stageCount;
  }

  /** Tokens the RAM tier holds (on every stage). */
  get ramTokens(): number {
    return this.ram;
  }

  /** Blocks known in any tier. */
  get size(): number {
    return this.blocks.size;
  }

  get(hash: string): CachedBlock | undefined {
    return this.blocks.get(hash);
  }

  /** Tokens stage `stage` holds on disk (as far as its reports tell). */
  diskTokens(stage: number): number {
    let tokens = 0;
    for (const b of this.blocks.values()) if (b.disk.has(stage)) tokens += b.tokens.length;
    return tokens;
  }

  /** A block serves when every stage can produce it: from RAM, or each from its own disk. */
  private held(b: CachedBlock): boolean {
    return b.ram || b.disk.size === this.stageCount;
  }

  /** The longest prefix of the prompt the stages hold, block by block, or undefined. */
  lookup(prompt: readonly number[]): PrefixHit | undefined {
    const limit = prompt.length - 1;
    const hit: PrefixHit = { blocks: [], uses: [], positions: 0, ramPositions: 0, diskPositions: 0 };
    let parent = "";
    while (hit.positions < limit) {
      const step = this.bestChild(parent, prompt, hit.positions, limit);
      if (!step) break;
      hit.blocks.push(step.block);
      hit.uses.push({ hash: step.block.hash, take: step.take });
      hit.positions += step.take;
      if (step.block.ram) hit.ramPositions += step.take;
      else hit.diskPositions += step.take;
      if (step.take < step.block.tokens.length) break;
      parent = step.block.hash;
    }
    return hit.positions > 0 ? hit : undefined;
  }

  /** The held child of `parent` sharing the most tokens with the prompt from `position` (ties: RAM, then recent). */
  private bestChild(
    parent: string,
    prompt: readonly number[],
    position: number,
    limit: number,
  ): { block: CachedBlock; take: number } | undefined {
    let best: { block: CachedBlock; take: number } | undefined;
    for (const block of this.children.get(parent) ?? []) {
      if (!this.held(block) || block.start !== position) continue;
      const take = sharedRun(block.tokens, prompt, position, limit - position);
      if (take === 0) continue;
      const better =
        !best ||
        take > best.take ||
        (take === best.take &&
          (Number(block.ram) > Number(best.block.ram) ||
            (block.ram === best.block.ram && block.lastUsed > best.block.lastUsed)));
      if (better) best = { block, take };
    }
    return best;
  }

  /** Keeps the hit's blocks while they are assembled. */
  pin(hit: PrefixHit): void {
    for (const b of hit.blocks) b.pins++;
  }

  unpin(hit: PrefixHit): void {
    for (const b of hit.blocks) b.pins = Math.max(0, b.pins - 1);
  }

  /** An assembly of these uses succeeded on every stage: their blocks are in every stage's RAM now. */
  assembled(uses: readonly BlockUse[]): void {
    const now = ++this.clock;
    for (const use of uses) {
      const b = this.blocks.get(use.hash);
      if (!b) continue;
      this.setRam(b, true);
      b.lastUsed = now;
    }
  }

  /**
   * What a finished sequence holding `tokens` stashes: its chain (a last, short block that a RAM block already
   * covers is left out), and the shorter blocks its blocks supersede. Call stashed() or stashFailed() after.
   */
  planStash(tokens: readonly number[]): StashPlan {
    const chain = blockChain(tokens, this.blockTokens);
    const last = chain[chain.length - 1];
    if (last && this.coveredInRam(last)) chain.pop();
    const drop = new Set<string>();
    for (const b of chain)
      for (const sibling of this.children.get(b.parent) ?? [])
        if (sibling.hash !== b.hash && sibling.pins === 0 && isStrictPrefix(sibling.tokens, b.tokens))
          drop.add(sibling.hash);
    const pinned = chain.map((b) => this.blocks.get(b.hash)).filter((b) => b !== undefined);
    for (const b of pinned) b.pins++;
    return { chain, drop: [...drop], pinned };
  }

  /** The stash failed: nothing changed but the pins. */
  stashFailed(plan: StashPlan): void {
    for (const b of plan.pinned) b.pins = Math.max(0, b.pins - 1);
  }

  /** The stages hold the stash's chain in RAM now; the superseded blocks are gone everywhere. */
  stashed(plan: StashPlan): void {
    this.stashFailed(plan);
    const now = ++this.clock;
    for (const b of plan.chain) {
      const block = this.blocks.get(b.hash) ?? this.track(b);
      this.setRam(block, true);
      block.lastUsed = now;
    }
    for (const hash of plan.drop) {
      const block = this.blocks.get(hash);
      if (block && block.pins === 0) this.untrack(block);
    }
  }

  /** Forgets that blocks are in RAM (dropped, or a stash that failed); returns those that were. */
  leaveRam(hashes: readonly string[]): string[] {
    const left: string[] = [];
    for (const hash of hashes) {
      const block = this.blocks.get(hash);
      if (!block?.ram) continue;
      this.setRam(block, false);
      left.push(hash);
      this.untrackIfUnheld(block);
    }
    return left;
  }

  /**
   * Evicts RAM leaves (no RAM block continues them; not pinned) until the tier holds at most budgetTokens;
   * returns their names, for the stages to drop (each node writes a block to disk before it lets it go).
   */
  evictRam(budgetTokens: number): string[] {
    const evicted: string[] = [];
    while (this.ram > budgetTokens) {
      const leaves = [...this.blocks.values()]
        .filter((b) => b.ram && b.pins === 0 && !this.hasRamChild(b))
        .map((b) => ({ block: b, lastUsed: b.lastUsed, end: b.start + b.tokens.length, id: b.hash }));
      const victim = pickVictim(leaves, this.clock)?.block;
      if (!victim) break; // Everything left is pinned: the budget is met once the assemblies finish.
      this.setRam(victim, false);
      evicted.push(victim.hash);
      this.untrackIfUnheld(victim);
    }
    return evicted;
  }

  /** A stage reports that it holds a block on disk, or no longer does. */
  setDisk(stage: number, block: KvBlock, held: boolean): void {
    let known = this.blocks.get(block.hash);
    if (held) {
      if (!known) {
        if (block.tokens.length === 0) return;
        known = this.track(block);
      }
      known.disk.add(stage);
      return;
    }
    if (!known) return;
    known.disk.delete(stage);
    this.untrackIfUnheld(known);
  }

  // ------------------------------------------------------------ internals

  private coveredInRam(block: KvBlock): boolean {
    for (const sibling of this.children.get(block.parent) ?? [])
      if (
        sibling.ram &&
        sibling.tokens.length >= block.tokens.length &&
        isPrefixOf(block.tokens, sibling.tokens)
      )
        return true;
    return false;
  }

  private hasRamChild(block: CachedBlock): boolean {
    for (const child of this.children.get(block.hash) ?? []) if (child.ram) return true;
    return false;
  }

  private setRam(block: CachedBlock, ram: boolean): void {
    if (block.ram === ram) return;
    block.ram = ram;
    this.ram += ram ? block.tokens.length : -block.tokens.length;
  }

  private track(b: KvBlock): CachedBlock {
    const block: CachedBlock = {
      hash: b.hash,
      parent: b.parent,
      start: b.start,
      tokens: b.tokens,
      ram: false,
      disk: new Set(),
      lastUsed: this.clock,
      pins: 0,
    };
    this.blocks.set(b.hash, block);
    const siblings = this.children.get(b.parent) ?? new Set<CachedBlock>();
    this.children.set(b.parent, siblings);
    siblings.add(block);
    return block;
  }

  private untrack(block: CachedBlock): void {
    this.setRam(block, false);
    this.blocks.delete(block.hash);
    const siblings = this.children.get(block.parent);
    siblings?.delete(block);
    if (siblings?.size === 0) this.children.delete(block.parent);
  }

  private untrackIfUnheld(block: CachedBlock): void {
    if (!block.ram && block.disk.size === 0 && block.pins === 0) this.untrack(block);
  }
}

/** Tokens of `block` equal to prompt[position...], at most `limit`. */
function sharedRun(
  block: readonly number[],
  prompt: readonly number[],
  position: number,
  limit: number,
): number {
  const n = Math.min(block.length, limit, prompt.length - position);
  let i = 0;
  while (i < n && block[i] === prompt[position + i]) i++;
  return i;
}

function isPrefixOf(short: readonly number[], long: readonly number[]): boolean {
  if (short.length > long.length) return false;
  for (let i = 0; i < short.length; i++) if (short[i] !== long[i]) return false;
  return true;
}

function isStrictPrefix(short: readonly number[], long: readonly number[]): boolean {
  return short.length < long.length && isPrefixOf(short, long);
}
