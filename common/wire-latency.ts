// Latency samples of a data link over a sliding time window, for p50/p99 figures (Status, dashboard, bench).

const windowMs = 60_000;
const maxSamples = 16_384;

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

  /** The q-quantile (0..1) of the samples of the last minute; 0 when there are none. */
  percentile(q: number, nowMs = Date.now()): number {
    this.trim(nowMs, maxSamples);
    if (this.values.length === 0) return 0;
    const sorted = [...this.values].sort((a, b) => a - b);
    const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
    return sorted[index];
  }

  get count(): number {
    return this.values.length;
  }

  clear(): void {
    this.values.length = 0;
    this.times.length = 0;
  }
}
