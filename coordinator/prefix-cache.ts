// The coordinator's index of token prefixes whose KV the cluster still holds. A finished sequence is not
// released: it stays on every stage as an entry, indexed by the tokens its KV covers (prompt + output minus the
// last sampled token, which was never fed back). A new prompt forks the entry sharing its longest prefix and
// prefills only the rest. Entries are evicted least recently used first when the tokens they hold exceed the
// budget (every entry lives on every stage, so one token budget — the tightest node's bytes over its KV bytes
// per token — bounds every node). Entries in use by a fork are pinned and never evicted.
//
// Matching scans every entry: its cost is bounded by the tokens held, which the budget bounds, and it is a
// plain integer comparison, far cheaper than the prefill it saves.

export interface CacheEntry {
  readonly seq: number;
  /** The tokens whose KV the entry holds, position 0 onwards. */
  readonly tokens: readonly number[];
  lastUsed: number;
  pins: number;
}

export interface PrefixMatch {
  entry: CacheEntry;
  /** Positions to fork: the shared prefix, at most prompt length - 1. */
  length: number;
}

export class PrefixCache {
  readonly tokenBudget: number;
  private readonly entries = new Map<number, CacheEntry>();
  private clock = 0;
  private held = 0;

  constructor(tokenBudget: number) {
    if (!Number.isInteger(tokenBudget) || tokenBudget < 1)
      throw new Error(`PrefixCache: token budget must be a positive integer (got ${tokenBudget})`);
    this.tokenBudget = tokenBudget;
  }

  /** Token budget of a per-node byte budget: the node with the dearest token decides. 0 = no cache. */
  static tokenBudgetFor(bytesPerNode: number, kvBytesPerToken: readonly number[]): number {
    const known = kvBytesPerToken.filter((b) => b > 0);
    if (bytesPerNode <= 0 || known.length === 0) return 0;
    return Math.floor(bytesPerNode / Math.max(...known));
  }

  get size(): number {
    return this.entries.size;
  }

  /** Tokens held by all entries (on every stage). */
  get heldTokens(): number {
    return this.held;
  }

  has(seq: number): boolean {
    return this.entries.has(seq);
  }

  /**
   * The entry sharing the longest prefix with the prompt. The prompt's last token always runs (its logits give
   * the first output token), so at most prompt.length - 1 positions are reused. Ties go to the most recent.
   */
  match(prompt: readonly number[]): PrefixMatch | undefined {
    const limit = prompt.length - 1;
    let best: PrefixMatch | undefined;
    for (const entry of this.entries.values()) {
      const length = commonPrefix(entry.tokens, prompt, limit);
      if (length === 0) continue;
      if (!best || length > best.length || (length === best.length && entry.lastUsed > best.entry.lastUsed))
        best = { entry, length };
    }
    return best;
  }

  /** Keeps the entry while a fork reads it. */
  pin(entry: CacheEntry): void {
    entry.pins++;
    entry.lastUsed = ++this.clock;
  }

  /** Ends a pin; returns the sequences to release now that eviction may touch it. */
  unpin(entry: CacheEntry): number[] {
    entry.pins = Math.max(0, entry.pins - 1);
    return this.evict();
  }

  /**
   * Keeps a finished sequence as an entry; returns the sequences to release (evicted entries, entries the new
   * one makes redundant, or the new one itself when it adds nothing or cannot fit).
   */
  add(seq: number, tokens: readonly number[]): number[] {
    if (tokens.length === 0 || tokens.length > this.tokenBudget) return [seq];
    const covering = [...this.entries.values()].find(
      (e) =>
        e.tokens.length >= tokens.length && commonPrefix(e.tokens, tokens, tokens.length) === tokens.length,
    );
    if (covering) {
      covering.lastUsed = ++this.clock;
      return [seq];
    }
    const released: number[] = [];
    // An entry the new one extends holds nothing the new one lacks.
    for (const e of this.entries.values()) {
      if (e.pins > 0 || e.tokens.length > tokens.length) continue;
      if (commonPrefix(e.tokens, tokens, e.tokens.length) === e.tokens.length) {
        this.remove(e);
        released.push(e.seq);
      }
    }
    this.entries.set(seq, { seq, tokens, lastUsed: ++this.clock, pins: 0 });
    this.held += tokens.length;
    return [...released, ...this.evict()];
  }

  /** Forgets an entry (e.g. a fork from it failed); returns whether it was held. */
  drop(seq: number): boolean {
    const entry = this.entries.get(seq);
    if (!entry) return false;
    this.remove(entry);
    return true;
  }

  /** Forgets every entry; returns their sequences. */
  clear(): number[] {
    const seqs = [...this.entries.keys()];
    this.entries.clear();
    this.held = 0;
    return seqs;
  }

  private remove(entry: CacheEntry): void {
    this.entries.delete(entry.seq);
    this.held -= entry.tokens.length;
  }

  /** Least recently used unpinned entries go until the held tokens fit the budget. */
  private evict(): number[] {
    const evicted: number[] = [];
    while (this.held > this.tokenBudget) {
      let oldest: CacheEntry | undefined;
      for (const e of this.entries.values())
        if (e.pins === 0 && (!oldest || e.lastUsed < oldest.lastUsed)) oldest = e;
      if (!oldest) break; // Everything left is pinned: the budget is met once the forks finish.
      this.remove(oldest);
      evicted.push(oldest.seq);
    }
    return evicted;
  }
}

/** Length of the common prefix of a and b, at most limit. */
function commonPrefix(a: readonly number[], b: readonly number[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
