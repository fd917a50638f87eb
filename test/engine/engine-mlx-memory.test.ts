// Memory of the mlx backend (docs/architecture.md, Engine): a shard is resident once. Loading reads each tensor
// from its file into memory MLX owns and never touches the shard's mapping; before, the whole mapping was
// faulted in and MLX copied every tensor beside it (3.00 GB resident for a 1.41 GiB shard). Measured in a child
// process per engine (VmRSS of /proc/self/status, Linux), on a two-layer bench-shaped model (~0.27 GB): the cpu
// backend beside it, which computes on the mapping, shows that the measure sees a resident shard.
// Also: the wired limit and the warm-up as a CPU-only MLX build has them (no GPU: no limit, a warm-up all the same).
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeModel } from "../../cli/make-model/index.js";
import { packageRoot } from "../../common/paths.js";
import { availableBackends, mlxInfo, openEngine } from "../../native/index.js";
import type { RssReport } from "../helpers/engine-rss-child.js";
import { runCommand } from "../helpers/run-command.js";

const addonPath = join(packageRoot(), "native", "build", "Release", "studio_engine.node");
const skipReason =
  process.platform !== "linux"
    ? "resident bytes are read from /proc/self/status (Linux)"
    : !existsSync(addonPath)
      ? `the studio_engine addon is not built (${addonPath})`
      : !availableBackends().includes("mlx")
        ? "studio_engine was built without MLX (install MLX or set MLX_DIR, then `npm install`)"
        : undefined;
if (skipReason) console.warn(`engine-mlx-memory.test: skipping: ${skipReason}`);

// Resident growth over the weights: the mlx shard once plus MLX's and the allocator's working memory (one
// forward of 4 tokens, a KV cache, the warm-up); twice the weights is what holding the shard twice costs.
const MLX_MAX_RATIO = 1.25;
// The cpu backend computes on the mapping, which loading faults in whole.
const CPU_MIN_RATIO = 0.9;

async function measure(dir: string, backend: "cpu" | "mlx"): Promise<RssReport> {
  const entry = join(packageRoot(), "dist", "test", "helpers", "engine-rss-child.js");
  if (!existsSync(entry)) throw new Error(`${entry} is missing: run \`npm run build\` before these tests`);
  const child = await runCommand(process.execPath, [entry, dir, backend], { timeoutMs: 240_000 });
  expect(child.code, child.stderr.slice(-3000)).toBe(0);
  return JSON.parse(child.stdout.trim().split("\n").at(-1)!) as RssReport;
}

const gb = (bytes: number) => (bytes / 1e9).toFixed(3);

describe.skipIf(skipReason !== undefined)("mlx backend memory", () => {
  const root = mkdtempSync(join(tmpdir(), "engine-mlx-memory-"));
  const dir = join(root, "bench-2-layers");

  beforeAll(async () => {
    await makeModel({ dir, preset: "bench", layers: 2, bits: 4, groupSize: 64, seed: 3 });
  }, 300_000);
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("holds the shard once: resident growth at load is the weights, not twice the weights", async () => {
    const mlx = await measure(dir, "mlx");
    const cpu = await measure(dir, "cpu");
    for (const r of [mlx, cpu])
      console.log(
        `engine-mlx-memory ${r.backend}: weights ${gb(r.weightBytes)} GB; resident before ${gb(r.before.rss)}, ` +
          `after load ${gb(r.loaded.rss)} (file ${gb(r.loaded.file)}, anon ${gb(r.loaded.anon)}), after a ` +
          `forward ${gb(r.forwarded.rss)}; growth/weights ${((r.forwarded.rss - r.before.rss) / r.weightBytes).toFixed(2)}`,
      );
    expect(mlx.backend).toBe("mlx");
    expect(cpu.backend).toBe("cpu");
    expect(mlx.weightBytes).toBeGreaterThan(200e6);
    expect(mlx.forwarded.rss - mlx.before.rss).toBeLessThanOrEqual(MLX_MAX_RATIO * mlx.weightBytes);
    // The mapping itself stays untouched on mlx: its file-backed resident bytes do not grow by the shard.
    expect(mlx.forwarded.file - mlx.before.file).toBeLessThan(0.1 * mlx.weightBytes);
    expect(cpu.loaded.rss - cpu.before.rss).toBeGreaterThanOrEqual(CPU_MIN_RATIO * cpu.weightBytes);
  }, 600_000);

  it("MLX found at run time is the one built against; a CPU build reports no GPU working set and wires nothing", async () => {
    const info = mlxInfo()!;
    expect(info.versionError).toBeUndefined();
    expect(info.version.startsWith(info.builtWith)).toBe(true);
    const engine = await openEngine({
      modelDir: dir,
      layerStart: 0,
      layerEnd: 1,
      embed: true,
      head: false,
      backend: "mlx",
    });
    try {
      const stats = engine.stats();
      if (info.device === "gpu" && info.maxRecommendedWorkingSetBytes !== undefined) {
        // Metal: the weights are kept wired up to the device's recommended working set, as mlx-lm does.
        expect(stats.wiredLimitBytes).toBe(info.maxRecommendedWorkingSetBytes);
      } else {
        expect(info.maxRecommendedWorkingSetBytes).toBeUndefined();
        expect(stats.wiredLimitBytes).toBe(0);
      }
      // The warm-up step ran at load and left nothing behind.
      expect(stats.warmupSeconds).toBeGreaterThan(0);
      expect(stats.sequences).toBe(0);
      expect(stats.kvBytes).toBe(0);
      expect(stats.weightBytesRead).toBe(0);
    } finally {
      await engine.close();
    }
  }, 120_000);
});
