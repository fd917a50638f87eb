// Unified-memory bandwidth of Apple silicon, from Apple's published specifications, for nodes that report no
// measured figure. Decode speed is bandwidth bound, so the planner splits layers by these numbers.

const GB = 1e9;

// Longest names first so "M2 Max" never matches the plain "M2" entry. Where a chip ships in two memory
// configurations (M3 Max, M4 Max) the table holds the larger one, which the Mac Studio models use.
const APPLE_CHIPS: Array<[name: string, bytesPerSecond: number]> = [
  ["M1 Ultra", 800 * GB],
  ["M1 Max", 400 * GB],
  ["M1 Pro", 200 * GB],
  ["M1", 68.25 * GB],
  ["M2 Ultra", 800 * GB],
  ["M2 Max", 400 * GB],
  ["M2 Pro", 200 * GB],
  ["M2", 100 * GB],
  ["M3 Ultra", 819 * GB],
  ["M3 Max", 400 * GB],
  ["M3 Pro", 150 * GB],
  ["M3", 100 * GB],
  ["M4 Ultra", 1092 * GB],
  ["M4 Max", 546 * GB],
  ["M4 Pro", 273 * GB],
  ["M4", 120 * GB],
];

/** A guess for machines we know nothing about (a typical dual-channel DDR desktop). */
export const UNKNOWN_CHIP_BANDWIDTH_BPS = 50 * GB;

/** Bandwidth of an Apple chip named in `chip` (e.g. "Apple M2 Ultra"), or undefined if it is not one. */
export function appleChipBandwidthBps(chip: string): number | undefined {
  const normalized = chip.replace(/\s+/g, " ");
  for (const [name, bps] of APPLE_CHIPS) {
    const pattern = new RegExp(`\\b${name.replace(" ", "\\s")}(?![\\w])`, "i");
    if (pattern.test(normalized)) return bps;
  }
  return undefined;
}

/** The measured figure when there is one, else the chip table, else a conservative default. */
export function effectiveBandwidthBps(measuredBps: number, chip: string): number {
  if (Number.isFinite(measuredBps) && measuredBps > 0) return measuredBps;
  return appleChipBandwidthBps(chip) ?? UNKNOWN_CHIP_BANDWIDTH_BPS;
}
