// Memory as each operating system counts it, and the GPU's working-set limit on a Mac. Pure parsers of the
// platforms' own outputs (tested on those outputs), and one gauge that runs them.
//
// Why not os.freemem(): on macOS it is only the free page count. A Mac that just copied a 129 GB checkpoint
// holds most of its memory as inactive, purgeable or speculative file cache, which the kernel hands back on
// demand; counting it as used would make the planner say the model does not fit. Linux says the same thing
// better in /proc/meminfo's MemAvailable (cache it can reclaim without swapping).
import { MIB } from "../common/wired-limit.js";

export interface MemoryReading {
  totalBytes: number;
  /** Bytes a new allocation can get without swapping. */
  availableBytes: number;
  /** Where the figure came from, for `cluster doctor` and logs. */
  source: string;
}

export interface VmStat {
  pageSize: number;
  /** Page counts by vm_stat's label, lower-cased: "pages free", "pages inactive", "file-backed pages", ... */
  pages: Map<string, number>;
}

/** Parses `vm_stat` output: a header with the page size, then "Label:   count." lines. */
export function parseVmStat(text: string): VmStat {
  const header = /page size of (\d+) bytes/.exec(text);
  if (!header) throw new Error("vm_stat output has no 'page size of N bytes' header");
  const pages = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^"?([^":]+)"?:\s+(\d+)\.?\s*$/.exec(line.trim());
    if (match) pages.set(match[1].trim().toLowerCase(), Number(match[2]));
  }
  return { pageSize: Number(header[1]), pages };
}

/**
 * Available bytes on macOS: free + speculative + inactive + purgeable pages. vm_stat prints "Pages free" with the
 * speculative pages taken out, so they are added back; inactive and purgeable pages are reclaimed on demand
 * (the figure Activity Monitor and psutil-style tools treat as available). Capped at the machine's memory.
 */
export function macAvailableBytes(stat: VmStat, totalBytes: number): number {
  const count = (label: string) => stat.pages.get(label) ?? 0;
  const pages =
    count("pages free") + count("pages speculative") + count("pages inactive") + count("pages purgeable");
  return Math.min(totalBytes, pages * stat.pageSize);
}

/** Parses /proc/meminfo: "MemTotal: 25300000 kB" lines into bytes. */
export function parseMeminfo(text: string): Map<string, number> {
  const fields = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^(\w+(?:\(\w+\))?):\s+(\d+)(\s+kB)?\s*$/.exec(line.trim());
    if (match) fields.set(match[1], Number(match[2]) * (match[3] ? 1024 : 1));
  }
  return fields;
}

/** Linux: MemAvailable (kernels since 3.14); older kernels: MemFree + Cached as a rough stand-in. */
export function linuxMemory(meminfo: string): MemoryReading {
  const fields = parseMeminfo(meminfo);
  const total = fields.get("MemTotal");
  if (total === undefined) throw new Error("/proc/meminfo has no MemTotal line");
  const available = fields.get("MemAvailable");
  if (available !== undefined)
    return { totalBytes: total, availableBytes: available, source: "/proc/meminfo MemAvailable" };
  const rough = (fields.get("MemFree") ?? 0) + (fields.get("Cached") ?? 0);
  return {
    totalBytes: total,
    availableBytes: Math.min(total, rough),
    source: "/proc/meminfo MemFree+Cached",
  };
}

/** `sysctl -n name` prints one integer; anything else is a missing or unreadable value. */
export function parseSysctlInteger(text: string): number | undefined {
  const trimmed = text.trim();
  return /^\d+$/.test(trimmed) ? Number(trimmed) : undefined;
}

/**
 * Share of memory macOS lets the GPU keep wired when `iogpu.wired_limit_mb` is 0 (its default): Metal's
 * recommended maximum working set is about three quarters of RAM on the large-memory Macs this runs on. Used only
 * when MLX has not told us the exact figure.
 */
export const DEFAULT_GPU_WORKING_SET_SHARE = 0.75;

export interface GpuWorkingSetLimit {
  bytes: number;
  /** "sysctl iogpu.wired_limit_mb=458752", "MLX recommended working set", or "estimate: 75% of memory". */
  source: string;
  /** Set by the user (sysctl), as opposed to the system's default. */
  raised: boolean;
}

/**
 * The GPU working-set limit: the user's `iogpu.wired_limit_mb` when set (non-zero), else MLX's recommended
 * working set when known, else the default share of memory.
 */
export function gpuWorkingSetLimit(
  totalBytes: number,
  wiredLimitMb: number | undefined,
  mlxRecommendedBytes?: number,
): GpuWorkingSetLimit {
  if (wiredLimitMb !== undefined && wiredLimitMb > 0)
    return {
      bytes: wiredLimitMb * MIB,
      source: `sysctl iogpu.wired_limit_mb=${wiredLimitMb}`,
      raised: true,
    };
  if (mlxRecommendedBytes !== undefined && mlxRecommendedBytes > 0)
    return { bytes: mlxRecommendedBytes, source: "MLX recommended working set", raised: false };
  return {
    bytes: Math.round(totalBytes * DEFAULT_GPU_WORKING_SET_SHARE),
    source: `estimate: ${DEFAULT_GPU_WORKING_SET_SHARE * 100}% of memory (iogpu.wired_limit_mb is 0)`,
    raised: false,
  };
}
