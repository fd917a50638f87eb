// Who may start generating: at most maxSequences sequences at once, and only while the KV positions they
// reserve (prompt + maxTokens each) fit on every stage beside the others. Requests wait first come, first
// served (a request behind one that does not fit waits too, so a large request is never starved); beyond
// maxQueue waiting they are refused as "overloaded". A lone request always starts: the plan keeps one full
// context per stage.
import { ClusterError } from "../common/errors.js";

export interface AdmissionOptions {
  /** Sequences generating at once. Default 64. */
  maxSequences?: number;
  /** Requests that may wait; beyond it they get "overloaded" (429). Default 256. */
  maxQueue?: number;
}

interface Waiter {
  kvTokens: number;
  wake(): void;
}

export class Admission {
  readonly maxSequences: number;
  readonly maxQueue: number;
  /** KV positions the tightest stage can hold for sequences in flight (Infinity: unbounded). */
  private budget = Number.POSITIVE_INFINITY;
  /** Slots held: sequences generating, and requests admitted that have not started yet. */
  private active = 0;
  /** KV positions those slots reserve. */
  private held = 0;
  private readonly waiting: Waiter[] = [];

  constructor(opts: AdmissionOptions = {}) {
    this.maxSequences = opts.maxSequences ?? 64;
    this.maxQueue = opts.maxQueue ?? 256;
  }

  /** KV positions reserved and the budget they must fit in. */
  get kvTokens(): { held: number; budget: number } {
    return { held: this.held, budget: this.budget };
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** A new pipeline's KV budget (or Infinity); those waiting are admitted against it at once. */
  setBudget(kvTokens: number): void {
    this.budget = kvTokens;
    this.wakeNext();
  }

  /**
   * Resolves, in arrival order, once a slot and kvTokens positions are reserved for the caller, who must
   * release(kvTokens) when its sequence ends. Rejects with "overloaded" when the queue is full, "cancelled"
   * when the signal aborts while waiting.
   */
  async acquire(kvTokens: number, signal?: AbortSignal): Promise<void> {
    if (this.waiting.length === 0 && this.fits(kvTokens)) {
      this.reserve(kvTokens);
      return;
    }
    if (this.waiting.length >= this.maxQueue)
      throw new ClusterError(
        "overloaded",
        `${this.active} sequences are generating and ${this.waiting.length} requests wait ` +
          `(limits ${this.maxSequences} and ${this.maxQueue})`,
      );
    await new Promise<void>((resolve, reject) => {
      const entry: Waiter = {
        kvTokens,
        wake: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        const at = this.waiting.indexOf(entry);
        if (at >= 0) this.waiting.splice(at, 1);
        reject(new ClusterError("cancelled", "the request was cancelled while it waited for a free slot"));
        // The head of the queue may have been the one blocking those behind it.
        if (at === 0) this.wakeNext();
      };
      this.waiting.push(entry);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** A slot acquired for kvTokens is free again. */
  release(kvTokens: number): void {
    this.active--;
    this.held -= kvTokens;
    this.wakeNext();
  }

  private fits(kvTokens: number): boolean {
    if (this.active >= this.maxSequences) return false;
    return this.active === 0 || this.held + kvTokens <= this.budget;
  }

  private reserve(kvTokens: number): void {
    this.active++;
    this.held += kvTokens;
  }

  /** Hands freed slots and KV to the longest-waiting requests, in order, as long as the head fits. */
  private wakeNext(): void {
    while (this.waiting.length > 0 && this.fits(this.waiting[0].kvTokens)) {
      const entry = this.waiting.shift()!;
      this.reserve(entry.kvTokens);
      entry.wake();
    }
  }
}

/** KV positions the tightest stage can hold: its KV bytes over its KV bytes per position (unknown: unbounded). */
export function kvTokenBudget(
  kvBytesPerToken: readonly number[],
  kvBytesPerStage?: readonly number[],
): number {
  let tokens = Number.POSITIVE_INFINITY;
  if (!kvBytesPerStage) return tokens;
  kvBytesPerToken.forEach((perToken, i) => {
    const bytes = kvBytesPerStage[i];
    if (perToken > 0 && bytes !== undefined) tokens = Math.min(tokens, Math.floor(bytes / perToken));
  });
  return tokens;
}
