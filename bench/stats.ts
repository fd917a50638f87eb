// Small statistics the benchmarks share: they report medians (this machine is shared and noisy) and round
// the figures of their JSON line.
import { nearestRank } from "../common/wire/latency.js";

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function round(v: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The q-quantile (0..1) of unsorted values by nearest rank (as the links' latency figures); 0 for none. */
export function quantile(values: number[], q: number): number {
  if (values.length === 0) return 0;
  return nearestRank(
    [...values].sort((a, b) => a - b),
    q,
  );
}
