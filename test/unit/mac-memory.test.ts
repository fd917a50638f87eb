// Memory as macOS and Linux count it, read from their own outputs, and the planner on those figures: MiniMax-M2.1
// at 4 bits on two 96 GB Macs and at 8 bits on two 192 GB Macs, under the GPU's default wired limit and a raised
// one. Fixtures: test/fixtures/platform/README.md says where each output comes from.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { availableMemory } from "../../cluster/controller.js";
import type { Member } from "../../cluster/membership.js";
import { ClusterError } from "../../common/errors.js";
import type { NodeStatus } from "../../common/wire/types.js";
import type { ModelFootprint } from "../../coordinator/model-footprint.js";
import { type PlannerNode, planLayers } from "../../coordinator/planner.js";
import { CapabilityReader } from "../../node-agent/capabilities.js";
import { MemoryGauge, type MemorySources, macFigures } from "../../node-agent/memory-gauge.js";
import {
  gpuWorkingSetLimit,
  linuxMemory,
  macAvailableBytes,
  parseVmStat,
} from "../../node-agent/memory-readers.js";

const FIXTURES = join(import.meta.dirname, "..", "fixtures", "platform");
const fixture = (name: string) => readFileSync(join(FIXTURES, name), "utf8");
const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
const PAGE = 16384;

/** MiniMax-M2.1 from its shapes, in the MLX layout: packed weights + bf16 scale and bias per group of 64. */
function minimaxM21(bits: 4 | 8): ModelFootprint {
  const quantized = (n: number, b: number = bits) => (n * b) / 8 + (n / 64) * 4;
  const [hidden, heads, kvHeads, headDim, experts, width, vocab] = [3072, 48, 8, 128, 256, 1536, 200_064];
  const attention = quantized(hidden * heads * headDim) * 2 + quantized(hidden * kvHeads * headDim) * 2;
  const norms = (2 * hidden + heads * headDim + kvHeads * headDim) * 2 + experts * 4;
  const router = quantized(hidden * experts, 8);
  const expertBytes = experts * 3 * quantized(hidden * width);
  const dense = attention + norms + router;
  const table = quantized(vocab * hidden);
  return {
    numLayers: 62,
    layerBytes: new Array(62).fill(dense + expertBytes),
    layerReadBytes: new Array(62).fill(dense + (expertBytes * 8) / experts),
    embedBytes: table,
    headBytes: table + hidden * 2,
    numKvHeads: kvHeads,
    headDim,
  };
}

const total = (m: ModelFootprint) => m.layerBytes.reduce((a, b) => a + b, 0) + m.embedBytes + m.headBytes;

function studio(
  id: string,
  memory: { totalBytes: number; availableBytes: number },
  limitBytes: number,
  source: string,
): PlannerNode {
  return {
    nodeId: id,
    name: `studio-${id}`,
    address: `10.0.0.${id}:7100`,
    memoryTotalBytes: memory.totalBytes,
    memoryAvailableBytes: memory.availableBytes,
    memoryBandwidthBps: 0,
    chip: "Apple M3 Ultra",
    backends: ["cpu", "mlx"],
    gpuWorkingSetLimitBytes: limitBytes,
    gpuWorkingSetSource: source,
  };
}

function refusal(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(ClusterError);
    return (err as Error).message;
  }
  throw new Error("the plan was expected to be refused");
}

describe("memory as the platforms count it", () => {
  it("macOS: free + speculative + inactive + purgeable pages of vm_stat, not only the free pages", () => {
    const stat = parseVmStat(fixture("macos-vm_stat-192gb.txt"));
    expect(stat.pageSize).toBe(PAGE);
    expect(stat.pages.get("pages free")).toBe(180_412);
    expect(stat.pages.get("translation faults")).toBe(918_273_645);
    const available = macAvailableBytes(stat, 192 * GIB);
    expect(available).toBe((180_412 + 95_120 + 8_899_643 + 40_288) * PAGE);
    // os.freemem() on macOS: the free pages alone, 3 GB on a machine with 151 GB to give.
    expect((180_412 * PAGE) / 1e9).toBeLessThan(3);
    expect(available / 1e9).toBeGreaterThan(150);
  });

  it("macOS figures from vm_stat and sysctl outputs, with the GPU limit at its default and raised", () => {
    const standard = macFigures(fixture("macos-vm_stat-512gb.txt"), "549755813888\n", "0\n");
    expect(standard.reading.totalBytes).toBe(512 * GIB);
    expect(standard.reading.availableBytes).toBe((402_277 + 150_004 + 20_001_932 + 60_119) * PAGE);
    expect(standard.limit).toMatchObject({ bytes: Math.round(0.75 * 512 * GIB), raised: false });
    const raised = macFigures(fixture("macos-vm_stat-512gb.txt"), "549755813888\n", "458752\n");
    expect(raised.limit).toEqual({
      bytes: 458_752 * MIB,
      source: "sysctl iogpu.wired_limit_mb=458752",
      raised: true,
    });
    // macOS 13 has no iogpu.wired_limit_mb: the default applies.
    expect(macFigures(fixture("macos-vm_stat-192gb.txt"), "206158430208", "").limit.raised).toBe(false);
    expect(gpuWorkingSetLimit(192 * GIB, 0, 150e9)).toMatchObject({ bytes: 150e9, raised: false });
  });

  it("refuses outputs that are not what it expects, by name", () => {
    expect(() => parseVmStat("Pages free: 12.")).toThrow(/page size/);
    expect(() => macFigures(fixture("macos-vm_stat-192gb.txt"), "sysctl: unknown oid", "0")).toThrow(
      /hw.memsize/,
    );
    expect(() => linuxMemory("Cached: 12 kB\n")).toThrow(/MemTotal/);
  });

  it("Linux: MemAvailable of /proc/meminfo (recorded), and the live figure agrees with procps `free`", () => {
    const recorded = linuxMemory(fixture("linux-meminfo-25gb.txt"));
    expect(recorded.source).toBe("/proc/meminfo MemAvailable");
    expect(recorded.totalBytes).toBe(24_683_548 * 1024);
    expect(recorded.availableBytes).toBe(24_006_064 * 1024);
    if (process.platform !== "linux") {
      console.log("skipping the live /proc/meminfo check: not on Linux");
      return;
    }
    const live = new MemoryGauge().read();
    const free = execFileSync("free", ["-b"], { encoding: "utf8" }).split("\n")[1].trim().split(/\s+/);
    const [freeTotal, freeAvailable] = [Number(free[1]), Number(free[6])];
    expect(live.totalBytes).toBe(freeTotal);
    // Read a moment apart on a busy machine: within 5% of each other.
    expect(Math.abs(live.availableBytes - freeAvailable) / freeTotal).toBeLessThan(0.05);
  });

  it("capabilities take MLX's recommended working set where the node offers mlx; a CPU-only MLX has none", () => {
    // A 192 GB Mac as the gauge reads it (recorded vm_stat and sysctl outputs), iogpu.wired_limit_mb at 0 or raised.
    const mac = (wiredMb: string): MemorySources => ({
      platform: "darwin",
      readMeminfo: () => {
        throw new Error("no /proc/meminfo on macOS");
      },
      runSync: (command, args) => {
        const key = [command, ...args].join(" ");
        if (key === "vm_stat") return fixture("macos-vm_stat-192gb.txt");
        if (key === "sysctl -n hw.memsize") return `${192 * GIB}\n`;
        if (key === "sysctl -n iogpu.wired_limit_mb") return `${wiredMb}\n`;
        throw new Error(`unexpected command ${key}`);
      },
      run: async () => {
        throw new Error("no background refresh in this test");
      },
    });
    const read = (backends: string[], wiredMb: string, mlxBytes?: number) =>
      new CapabilityReader({
        modelDir: join(FIXTURES, "no-model-here"),
        backends,
        measuredBandwidthBps: 0,
        mlxRecommendedWorkingSetBytes: mlxBytes,
        memory: new MemoryGauge(mac(wiredMb)),
      }).read();
    const metal = 154_618_822_656; // what Metal reports on a 192 GB M2 Ultra (144 GiB)
    expect(read(["cpu", "mlx"], "0", metal)).toMatchObject({
      gpu_working_set_limit: metal,
      gpu_working_set_source: "MLX recommended working set",
    });
    // MLX built without Metal reports no working set (mlxInfo() has none): the estimate of the default stands.
    const estimate = read(["cpu", "mlx"], "0", undefined);
    expect(estimate.gpu_working_set_limit).toBe(Math.round(0.75 * 192 * GIB));
    expect(estimate.gpu_working_set_source).toMatch(/^estimate: 75% of memory/);
    // A node without the mlx backend ignores MLX's figure; a raised sysctl wins over it.
    expect(read(["cpu"], "0", metal).gpu_working_set_limit).toBe(Math.round(0.75 * 192 * GIB));
    expect(read(["cpu", "mlx"], "180000", metal)).toMatchObject({
      gpu_working_set_limit: 180_000 * MIB,
      gpu_working_set_source: "sysctl iogpu.wired_limit_mb=180000",
    });
  });

  it("a re-plan counts a node's mapped weights once, its KV and mlx buffers once, never more than its memory", () => {
    const member = (backend: string, availableGB: number, weightGB: number, kvGB: number): Member =>
      ({
        capabilities: { memory_free: 0 },
        status: {
          memory_total: 25.3e9,
          memory_used: 25.3e9 - availableGB * 1e9,
          weight_bytes: weightGB * 1e9,
          kv_bytes: kvGB * 1e9,
          backend,
        } as NodeStatus,
      }) as Member;
    // cpu: the weights are pages of the mapped file, which the OS already counts as reclaimable.
    expect(availableMemory(member("cpu", 20, 4.4, 0.5))).toBeCloseTo(20.5e9, -3);
    expect(availableMemory(member("mlx", 20, 4.4, 0.5))).toBeCloseTo(24.9e9, -3);
    expect(availableMemory(member("mlx", 24, 4.4, 2))).toBe(25.3e9);
  });
});

describe("plans on Mac memory and the GPU wired limit", () => {
  it("MiniMax-M2.1 is the size it is published at", () => {
    expect(total(minimaxM21(4)) / 1e9).toBeCloseTo(128.6, 0);
    expect(total(minimaxM21(8)) / 1e9).toBeCloseTo(242.9, 0);
  });

  it("4-bit on 2 x 96 GB: fits under the default limit at 32k context; free pages alone would refuse it", () => {
    const memory = { totalBytes: 96 * GIB, availableBytes: 88 * GIB };
    const limit = gpuWorkingSetLimit(memory.totalBytes, 0);
    const nodes = ["1", "2"].map((id) => studio(id, memory, limit.bytes, limit.source));
    const plan = planLayers(minimaxM21(4), nodes, { contextTokens: 32_768 });
    expect(plan.backend).toBe("mlx");
    expect(plan.stages).toHaveLength(2);
    for (const stage of plan.stages)
      expect(stage.weightBytes + stage.kvReserveBytes + GIB).toBeLessThanOrEqual(limit.bytes);
    const freePagesOnly = ["1", "2"].map((id) =>
      studio(id, { totalBytes: 96 * GIB, availableBytes: 3e9 }, limit.bytes, limit.source),
    );
    expect(refusal(() => planLayers(minimaxM21(4), freePagesOnly, { contextTokens: 32_768 }))).toMatch(
      /does not fit/,
    );
  });

  it("4-bit on 2 x 96 GB at 128k context: refused under the default limit with the sysctl line, fits once raised", () => {
    const memory = { totalBytes: 96 * GIB, availableBytes: 88 * GIB };
    const limit = gpuWorkingSetLimit(memory.totalBytes, 0);
    const nodes = ["1", "2"].map((id) => studio(id, memory, limit.bytes, limit.source));
    const message = refusal(() => planLayers(minimaxM21(4), nodes, { contextTokens: 131_072 }));
    expect(message).toMatch(/GPU working-set limit of 77\.3 GB \(77309411328 B\) \(estimate: 75% of memory/);
    expect(message).toMatch(/resets at reboot/);
    const sysctl = /sudo sysctl iogpu\.wired_limit_mb=(\d+)/.exec(message);
    expect(sysctl).not.toBeNull();
    const raisedMb = Number(sysctl?.[1]);
    expect(raisedMb * MIB).toBeLessThan(memory.totalBytes - 8 * GIB);
    const raised = gpuWorkingSetLimit(memory.totalBytes, raisedMb);
    const plan = planLayers(
      minimaxM21(4),
      ["1", "2"].map((id) => studio(id, memory, raised.bytes, raised.source)),
      { contextTokens: 131_072 },
    );
    expect(plan.stages).toHaveLength(2);
    // The cpu backend keeps nothing wired: the limit does not apply to it.
    const cpuOnly = nodes.map((n) => ({ ...n, backends: ["cpu" as const] }));
    expect(planLayers(minimaxM21(4), cpuOnly, { contextTokens: 32_768 }).backend).toBe("cpu");
  });

  it("8-bit on 2 x 192 GB (vm_stat after the copy): fits under the default limit and a raised one", () => {
    const after = macFigures(fixture("macos-vm_stat-192gb.txt"), String(192 * GIB), "0");
    const nodes = ["1", "2"].map((id) => studio(id, after.reading, after.limit.bytes, after.limit.source));
    const plan = planLayers(minimaxM21(8), nodes, { contextTokens: 65_536 });
    expect(plan.stages).toHaveLength(2);
    for (const stage of plan.stages)
      expect(stage.weightBytes + stage.kvReserveBytes + GIB).toBeLessThanOrEqual(after.limit.bytes);
    const raised = macFigures(fixture("macos-vm_stat-192gb.txt"), String(192 * GIB), "180000");
    const raisedNodes = ["1", "2"].map((id) =>
      studio(id, raised.reading, raised.limit.bytes, raised.limit.source),
    );
    expect(planLayers(minimaxM21(8), raisedNodes, { contextTokens: 65_536 }).stages).toHaveLength(2);
    // At the full 196,608 window the two Macs lack memory, not wired limit: the message says memory.
    expect(refusal(() => planLayers(minimaxM21(8), nodes, { contextTokens: 196_608 }))).toMatch(
      /does not fit/,
    );
  });

  it("8-bit on one 512 GB Mac with the common 458752 MB setting, at the full window", () => {
    const raised = macFigures(fixture("macos-vm_stat-512gb.txt"), String(512 * GIB), "458752");
    const plan = planLayers(
      minimaxM21(8),
      [studio("1", raised.reading, raised.limit.bytes, raised.limit.source)],
      {
        contextTokens: 196_608,
      },
    );
    expect(plan.stages).toHaveLength(1);
    expect(plan.stages[0].availableBytes).toBeLessThanOrEqual(raised.limit.bytes);
  });
});
