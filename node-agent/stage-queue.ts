// A stage's queue of work and its batching rule. The coordinator puts each sequence in a wave (one per stage),
// and a stage runs one wave per batch, so with several waves in flight every stage works on a different one.
// Items of a wave reach a stage a little apart (stage 0 gets them from the coordinator one sampled token at a
// time), and running the first alone would split the wave in two batches: a batch of n decode rows costs far
// less than n batches of one, since each weight row is read once for all of them. So a wave whose members of
// its last batch are not all queued yet waits for them, briefly (a tenth of its last batch's time, at most
// maxGatherMs), while any wave that is complete runs at once.

/** What the queue needs to know of an item. */
export interface QueuedWork {
  seq: number;
  wave: number;
  /** Tokens in the item (1 for a decode step, more for a prefill chunk). */
  count: number;
  /** performance.now() when it was queued. */
  queuedAt: number;
}

/** Limits of one batch: every decode step in flight fits; prefill chunks are bounded by tokens. */
export interface BatchLimits {
  maxItems: number;
  /** Prefill tokens per batch, so a decode step never waits behind more than this much prefill. */
  maxPrefillTokens: number;
}

export type NextBatch<T> = { batch: T[] } | { waitMs: number };

/** Longest wait for a wave's late items, whatever its batch time. */
export const maxGatherMs = 3;
/** Fraction of a wave's last batch time it may wait for its late items. */
const gatherFraction = 0.1;

export class WaveQueue<T extends QueuedWork> {
  private readonly items: T[] = [];
  /** Per wave: the sequences of its last batch, and how long that batch ran. */
  private readonly lastBatch = new Map<number, { seqs: Set<number>; ms: number }>();
  private readonly limits: BatchLimits;

  constructor(limits: BatchLimits) {
    this.limits = limits;
  }

  get length(): number {
    return this.items.length;
  }

  push(item: T): void {
    this.items.push(item);
  }

  hasSeq(seq: number): boolean {
    return this.items.some((item) => item.seq === seq);
  }

  /** Drops every queued item of the sequence. */
  removeSeq(seq: number): void {
    for (let i = this.items.length - 1; i >= 0; i--) if (this.items[i].seq === seq) this.items.splice(i, 1);
  }

  clear(): void {
    this.items.length = 0;
    this.lastBatch.clear();
  }

  /**
   * The next batch: the oldest complete wave's items, or the oldest wave's once it has waited long enough;
   * otherwise how long to wait. isLive says whether a sequence may still send work (not released or dropped).
   */
  next(isLive: (seq: number) => boolean, now = performance.now()): NextBatch<T> {
    const waves = this.wavesByAge();
    for (const wave of waves) if (this.complete(wave, isLive)) return { batch: this.take(wave) };
    const oldest = this.items[0];
    const deadline = oldest.queuedAt + this.gatherMs(oldest.wave);
    if (now >= deadline) return { batch: this.take(oldest.wave) };
    return { waitMs: deadline - now };
  }

  /** Records a batch that ran: its wave's members and time are what the next batch of the wave waits for. */
  ran(batch: T[], ms: number): void {
    if (batch.length === 0) return;
    this.lastBatch.set(batch[0].wave, { seqs: new Set(batch.map((item) => item.seq)), ms });
  }

  private wavesByAge(): number[] {
    const waves: number[] = [];
    for (const item of this.items) if (!waves.includes(item.wave)) waves.push(item.wave);
    return waves;
  }

  /** Every live sequence of the wave's last batch has an item queued (a wave seen first is complete). */
  private complete(wave: number, isLive: (seq: number) => boolean): boolean {
    const last = this.lastBatch.get(wave);
    if (!last) return true;
    for (const seq of last.seqs) {
      if (!isLive(seq)) continue;
      if (!this.items.some((item) => item.seq === seq && item.wave === wave)) return false;
    }
    return true;
  }

  private gatherMs(wave: number): number {
    const last = this.lastBatch.get(wave);
    return last ? Math.min(maxGatherMs, last.ms * gatherFraction) : 0;
  }

  /** The oldest item of every sequence of the wave, up to the batch limits; later items wait. */
  private take(wave: number): T[] {
    const batch: T[] = [];
    const seen = new Set<number>();
    let prefillTokens = 0;
    for (let i = 0; i < this.items.length && batch.length < this.limits.maxItems; ) {
      const item = this.items[i];
      const prefill = item.count > 1;
      const full = batch.length > 0 && prefill && prefillTokens + item.count > this.limits.maxPrefillTokens;
      if (seen.has(item.seq) || full || item.wave !== wave) {
        // A sequence whose oldest item waits waits whole: a later chunk that would still fit must not run
        // before it (the stage would see position 256 of a sequence that holds none).
        if (item.wave === wave) seen.add(item.seq);
        i++;
        continue;
      }
      seen.add(item.seq);
      if (prefill) prefillTokens += item.count;
      batch.push(item);
      this.items.splice(i, 1);
    }
    return batch;
  }
}
