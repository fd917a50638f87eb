// Child process of test/engine/engine-mlx-memory.test.ts: loads one whole-model engine on the backend named in
// argv and prints one JSON line with this process's resident bytes (VmRSS of /proc/self/status, and its file
// and anonymous parts) before and after loading and after one forward pass, and the shard's weight bytes. A
// process of its own so that nothing else the test runner holds counts.
import { readFileSync } from "node:fs";
import type { BackendName } from "../../common/engine-api.js";
import { readModelConfig } from "../../common/model-config.js";
import { availableBackends, openEngine } from "../../native/index.js";

export interface Resident {
  rss: number;
  file: number;
  anon: number;
}

export interface RssReport {
  before: Resident;
  loaded: Resident;
  forwarded: Resident;
  weightBytes: number;
  backend: string;
}

/** Resident bytes of this process as Linux counts them (kB lines of /proc/self/status). */
function resident(): Resident {
  const status = readFileSync("/proc/self/status", "utf8");
  const kb = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    if (!match) throw new Error(`/proc/self/status has no ${field}`);
    return Number(match[1]) * 1024;
  };
  return { rss: kb("VmRSS"), file: kb("RssFile"), anon: kb("RssAnon") };
}

async function main(): Promise<void> {
  const [modelDir, backend] = process.argv.slice(2) as [string, BackendName];
  const config = readModelConfig(modelDir);
  // The addon (and MLX with it) is loaded by the first call into it: part of the baseline.
  availableBackends();
  const before = resident();
  const engine = await openEngine({
    modelDir,
    layerStart: 0,
    layerEnd: config.numLayers,
    embed: true,
    head: true,
    backend,
    threads: 1,
  });
  try {
    const loaded = resident();
    await engine.forward([{ seq: 1, position: 0, tokens: Int32Array.from([1, 2, 3, 4]), sampling: {} }]);
    const forwarded = resident();
    const stats = engine.stats();
    const report: RssReport = {
      before,
      loaded,
      forwarded,
      weightBytes: stats.weightBytes,
      backend: stats.backend,
    };
    console.log(JSON.stringify(report));
  } finally {
    await engine.close();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exit(1);
});
