// Decode tokens/s of the mlx backend beside the cpu backend, on the same machine, the same bench-preset model
// and the same prompt. On a Mac the mlx figure is the Metal GPU; on Linux it is MLX's cpu device (a
// correctness build, not a fast path). Prints readable lines, then ONE JSON line of figures.
//
//   npm run bench:engine-mlx [-- --tokens 32 --runs 3 --threads 2 --model DIR]
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../cli/make-model/index.js";
import type { BackendName } from "../common/engine-api.js";
import { readModelConfig } from "../common/model-config.js";
import { packageRoot } from "../common/paths.js";
import { availableBackends, mlxInfo, openEngine } from "../native/index.js";
import { median } from "./stats.js";

const PROMPT = Int32Array.from([11, 42, 7, 300, 1200, 5, 64, 900, 17, 2048, 33, 8, 4000, 12, 99, 640]);

interface Figures {
  tokensPerSecond: number;
  runs: number[];
  loadSeconds: number;
}

async function ensureBenchModel(dir: string): Promise<void> {
  if (existsSync(join(dir, "model.safetensors.index.json"))) return;
  console.log(`making the bench model (4-bit) in ${dir} ...`);
  await makeModel({ dir, preset: "bench", bits: 4, groupSize: 64 });
}

/** Greedy decode of `tokens` tokens after the prompt, `runs` times on fresh sequences; tokens/s per run. */
async function measure(dir: string, backend: BackendName, tokens: number, runs: number, threads: number) {
  const started = performance.now();
  const engine = await openEngine({
    modelDir: dir,
    layerStart: 0,
    layerEnd: readModelConfig(dir).numLayers,
    embed: true,
    head: true,
    backend,
    threads,
  });
  const loadSeconds = (performance.now() - started) / 1000;
  try {
    if (engine.stats().backend !== backend)
      throw new Error(`asked for ${backend}, engine runs ${engine.stats().backend}`);
    const perRun: number[] = [];
    // Run 0 warms caches and lazy initialisation (MLX builds its kernels on first use) and is not counted.
    for (let run = 0; run <= runs; run++) {
      const seq = run + 1;
      const [first] = await engine.forward([{ seq, position: 0, tokens: PROMPT, sampling: {} }]);
      let token = first.token!;
      const t0 = performance.now();
      for (let i = 0; i < tokens; i++) {
        const [out] = await engine.forward([
          { seq, position: PROMPT.length + i, tokens: Int32Array.of(token), sampling: {} },
        ]);
        token = out.token!;
      }
      const seconds = (performance.now() - t0) / 1000;
      await engine.release(seq);
      if (run > 0) perRun.push(tokens / seconds);
    }
    return { tokensPerSecond: median(perRun), runs: perRun, loadSeconds } satisfies Figures;
  } finally {
    await engine.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      tokens: { type: "string", default: "32" },
      runs: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      model: { type: "string", default: join(packageRoot(), ".cache", "models", "bench-4bit") },
    },
  });
  const tokens = Number(values.tokens);
  const runs = Number(values.runs);
  const threads = Number(values.threads);
  if (!availableBackends().includes("mlx")) {
    console.error(
      "bench engine-mlx: this studio_engine was built without MLX (see README: Apple silicon set-up)",
    );
    process.exit(2);
  }
  const info = mlxInfo()!;
  const dir = values.model;
  await ensureBenchModel(dir);
  console.log(
    `model ${dir}; decode ${tokens} tokens after a ${PROMPT.length}-token prompt, median of ${runs} runs`,
  );
  const cpu = await measure(dir, "cpu", tokens, runs, threads);
  console.log(
    `cpu backend (${threads} threads):  ${cpu.tokensPerSecond.toFixed(2)} tokens/s  (runs ${cpu.runs.map((r) => r.toFixed(2)).join(", ")})`,
  );
  const mlx = await measure(dir, "mlx", tokens, runs, threads);
  console.log(
    `mlx backend (MLX ${info.version}, ${info.device}): ${mlx.tokensPerSecond.toFixed(2)} tokens/s  (runs ${mlx.runs.map((r) => r.toFixed(2)).join(", ")})`,
  );
  const ratio = mlx.tokensPerSecond / cpu.tokensPerSecond;
  console.log(
    `mlx / cpu: ${ratio.toFixed(2)}x; load: cpu ${cpu.loadSeconds.toFixed(1)} s, mlx ${mlx.loadSeconds.toFixed(1)} s`,
  );
  console.log(
    JSON.stringify({
      bench: "engine-mlx",
      mlx_version: info.version,
      mlx_device: info.device,
      mlx_tokens_per_s: Number(mlx.tokensPerSecond.toFixed(3)),
      cpu_tokens_per_s: Number(cpu.tokensPerSecond.toFixed(3)),
      mlx_over_cpu: Number(ratio.toFixed(3)),
      cpu_threads: threads,
      decode_tokens: tokens,
      runs,
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
