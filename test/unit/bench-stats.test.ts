// The statistics the benchmarks print: medians and nearest-rank quantiles of unsorted samples.
import { describe, expect, it } from "vitest";
import { median, quantile } from "../../bench/stats.js";

describe("bench statistics", () => {
  const tokenMs = [41, 63, 40, 39, 65, 42, 40, 64, 38, 43];

  it("takes nearest-rank quantiles of unsorted samples without reordering them", () => {
    const before = [...tokenMs];
    expect(quantile(tokenMs, 0.1)).toBe(38);
    expect(quantile(tokenMs, 0.5)).toBe(41);
    expect(quantile(tokenMs, 0.9)).toBe(64);
    expect(quantile(tokenMs, 1)).toBe(65);
    expect(quantile(tokenMs, 0)).toBe(38);
    expect(tokenMs).toEqual(before);
  });

  it("gives 0 for no samples and the sample itself for one", () => {
    expect(quantile([], 0.5)).toBe(0);
    expect(quantile([7], 0.9)).toBe(7);
  });

  it("agrees with the median at one half for an odd count", () => {
    const odd = tokenMs.slice(0, 9);
    expect(quantile(odd, 0.5)).toBe(median(odd));
  });
});
