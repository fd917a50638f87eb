// Latency samples of a data link over a sliding time window, for p50/p99 figures (Status, dashboard, bench).

const windowMs = 60_000;
const maxSamples = 16_384;

/** The q-quantile (0..1) of ascending samples by nearest rank: the smallest with at least q of them at or below. */
export function nearestRank(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

export class LatencyWindow {
  private readonly values: number[] = [];
  private readonly times: number[] = [];

  add(valueUs: number, nowMs = Date.now()): void {
    if (!Number.isFinite(valueUs)) return;
    this.values.push(valueUs);
    this.times.push(nowMs);
    // Trim in blocks, not per sample, so the per-frame cost stays constant.
    if (this.values.length > maxSamples * 2) this.trim(nowMs, maxSamples);
  }

  private trim(nowMs: number, keep: number): void {
    let drop = Math.max(0, this.values.length - keep);
    while (drop < this.times.length && this.times[drop] < nowMs - windowMs) drop++;
    this.values.splice(0, drop);
    this.times.splice(0, drop);
  }

  /** The q-quantile (0..1) of the samples of the last minute (taken at sinceMs or later); 0 when there are none. */
  percentile(q: number, nowMs = Date.now(), sinceMs = 0): number {
    return this.percentiles([q], nowMs, sinceMs)[0];
  }

  /** Several quantiles over one sort of the samples of the last minute (taken at sinceMs or later). */
  percentiles(qs: number[], nowMs = Date.now(), sinceMs = 0): number[] {
    const sorted = this.recent(nowMs, sinceMs).sort((a, b) => a - b);
    if (sorted.length === 0) return qs.map(() => 0);
    return qs.map((q) => nearestRank(sorted, q));
  }

  /** How many samples of the last minute were taken at sinceMs or later. */
  countSince(sinceMs = 0, nowMs = Date.now()): number {
    return this.recent(nowMs, sinceMs).length;
  }

  private recent(nowMs: number, sinceMs: number): number[] {
    this.trim(nowMs, maxSamples);
    let first = 0;
    while (first < this.times.length && this.times[first] < sinceMs) first++;
    return this.values.slice(first);
  }

  get count(): number {
    return this.values.length;
  }

  clear(): void {
    this.values.length = 0;
    this.times.length = 0;
  }
}
