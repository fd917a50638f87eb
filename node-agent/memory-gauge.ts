// Reads this machine's memory the way its operating system counts it (memory-readers.ts has the rules), for
// Capabilities and the Status heartbeat. Reads are synchronous and cheap: Linux reads /proc/meminfo; macOS runs
// `vm_stat` and `sysctl` once, then refreshes in the background when the figure is older than REFRESH_MS, so a
// heartbeat never waits on a child process.
import { execFile, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { freemem, totalmem } from "node:os";
import {
  type GpuWorkingSetLimit,
  gpuWorkingSetLimit,
  linuxMemory,
  type MemoryReading,
  macAvailableBytes,
  parseSysctlInteger,
  parseVmStat,
} from "./memory-readers.js";

const REFRESH_MS = 2000;
const COMMAND_TIMEOUT_MS = 3000;

/** What the gauge runs: the platform's own commands and files (a test hands it another platform's outputs). */
export interface MemorySources {
  platform: NodeJS.Platform;
  readMeminfo(): string;
  /** Runs a command and gives its stdout; throws when it fails. */
  runSync(command: string, args: string[]): string;
  run(command: string, args: string[]): Promise<string>;
}

export const systemSources: MemorySources = {
  platform: process.platform,
  readMeminfo: () => readFileSync("/proc/meminfo", "utf8"),
  runSync: (command, args) =>
    execFileSync(command, args, {
      encoding: "utf8",
      timeout: COMMAND_TIMEOUT_MS,
      stdio: ["ignore", "pipe", "ignore"],
    }),
  run: (command, args) =>
    new Promise((resolve, reject) =>
      execFile(command, args, { encoding: "utf8", timeout: COMMAND_TIMEOUT_MS }, (err, stdout) =>
        err ? reject(err) : resolve(stdout),
      ),
    ),
};

function fallback(why: string): MemoryReading {
  return { totalBytes: totalmem(), availableBytes: freemem(), source: `os.freemem() (${why})` };
}

export class MemoryGauge {
  private mac: { reading: MemoryReading; limit: GpuWorkingSetLimit; at: number } | undefined;
  private refreshing = false;

  constructor(private readonly sources: MemorySources = systemSources) {}

  /** Total and available memory now (macOS: at most REFRESH_MS old). */
  read(): MemoryReading {
    if (this.sources.platform === "linux") return this.readLinux();
    if (this.sources.platform !== "darwin") return fallback(`no reader for ${this.sources.platform}`);
    if (!this.mac) this.mac = this.readMacSync();
    else if (Date.now() - this.mac.at > REFRESH_MS) void this.refreshMac();
    return this.mac?.reading ?? fallback("vm_stat unreadable");
  }

  /** The GPU's working-set limit on macOS; undefined elsewhere (no unified GPU memory to wire). */
  gpuLimit(mlxRecommendedBytes?: number): GpuWorkingSetLimit | undefined {
    if (this.sources.platform !== "darwin") return undefined;
    this.read();
    if (!this.mac) return undefined;
    if (this.mac.limit.raised || mlxRecommendedBytes === undefined) return this.mac.limit;
    return gpuWorkingSetLimit(this.mac.reading.totalBytes, undefined, mlxRecommendedBytes);
  }

  private readLinux(): MemoryReading {
    try {
      return linuxMemory(this.sources.readMeminfo());
    } catch (err) {
      return fallback(`/proc/meminfo: ${(err as Error).message}`);
    }
  }

  private readMacSync(): { reading: MemoryReading; limit: GpuWorkingSetLimit; at: number } | undefined {
    try {
      return macFigures(
        this.sources.runSync("vm_stat", []),
        this.sources.runSync("sysctl", ["-n", "hw.memsize"]),
        this.sysctlOrEmpty(() => this.sources.runSync("sysctl", ["-n", "iogpu.wired_limit_mb"])),
      );
    } catch {
      return undefined;
    }
  }

  private async refreshMac(): Promise<void> {
    if (this.refreshing) return;
    this.refreshing = true;
    try {
      const [vmStat, memsize, wired] = await Promise.all([
        this.sources.run("vm_stat", []),
        this.sources.run("sysctl", ["-n", "hw.memsize"]),
        this.sources.run("sysctl", ["-n", "iogpu.wired_limit_mb"]).catch(() => ""),
      ]);
      this.mac = macFigures(vmStat, memsize, wired);
    } catch {
      // Keep the last good figures; the next read tries again.
    } finally {
      this.refreshing = false;
    }
  }

  /** Older macOS (before 14) has no iogpu.wired_limit_mb: the default limit applies. */
  private sysctlOrEmpty(read: () => string): string {
    try {
      return read();
    } catch {
      return "";
    }
  }
}

/** macOS figures from the outputs of `vm_stat`, `sysctl -n hw.memsize` and `sysctl -n iogpu.wired_limit_mb`. */
export function macFigures(
  vmStat: string,
  memsize: string,
  wiredLimitMb: string,
): { reading: MemoryReading; limit: GpuWorkingSetLimit; at: number } {
  const totalBytes = parseSysctlInteger(memsize);
  if (totalBytes === undefined)
    throw new Error(`sysctl hw.memsize printed ${JSON.stringify(memsize.trim())}`);
  const availableBytes = macAvailableBytes(parseVmStat(vmStat), totalBytes);
  return {
    reading: { totalBytes, availableBytes, source: "vm_stat (free + speculative + inactive + purgeable)" },
    limit: gpuWorkingSetLimit(totalBytes, parseSysctlInteger(wiredLimitMb)),
    at: Date.now(),
  };
}

/** One gauge per process: Capabilities and Status read the same figures. */
export const systemMemory = new MemoryGauge();
