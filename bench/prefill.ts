// Prefill benchmark: time to first token of long prompts on 1 stage against 2 stages (bench model, one thread per
// stage, each stage pinned to its own core with taskset). The scheduler sends every prefill chunk at once, so
// stage 0 computes chunk k+1 while stage 1 computes chunk k: with n chunks two stages need about (n + 1) / 2n of
// one stage's time. Both clusters are up at once and their runs alternate, so the machine's load hits both alike.
// Env: BENCH_PREFILL_SIZES (default 1024,4096,8192), BENCH_REPEATS (default 1: the bench model prefills ~100
// tokens/s per core here, so one 8k prompt takes over a minute), BENCH_CHUNK (default 256), BENCH_STAGES (default
// "1,2"; "1" times one stage alone), BENCH_MATMUL_INPUTS (default|int8) and BENCH_KV_DTYPE (f32|f16): the nodes'
// precision modes (native/README.md).
// Prints a table, then ONE JSON line of figures.

import { isKvDtype, isMatmulInputs, KV_DTYPES, MATMUL_INPUTS } from "../common/engine-api.js";
import type { Pipeline } from "../coordinator/pipeline.js";
import { Scheduler } from "../coordinator/scheduler.js";
import {
  type AgentProcess,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
  startPipeline,
} from "../test/helpers/pipeline-cluster.js";
import { median, round } from "./stats.js";

const sizes = (process.env.BENCH_PREFILL_SIZES ?? "1024,4096,8192").split(",").map(Number);
const repeats = Number(process.env.BENCH_REPEATS ?? 1);
const chunkTokens = Number(process.env.BENCH_CHUNK ?? 256);
const stageCounts = (process.env.BENCH_STAGES ?? "1,2").split(",").map(Number);
const matmulInputs = process.env.BENCH_MATMUL_INPUTS ?? "default";
const kvDtype = process.env.BENCH_KV_DTYPE ?? "f32";
if (!isMatmulInputs(matmulInputs))
  throw new Error(`BENCH_MATMUL_INPUTS must be one of ${MATMUL_INPUTS.join(", ")} (got "${matmulInputs}")`);
if (!isKvDtype(kvDtype))
  throw new Error(`BENCH_KV_DTYPE must be one of ${KV_DTYPES.join(", ")} (got "${kvDtype}")`);
if (!stageCounts.every((n) => n === 1 || n === 2))
  throw new Error(`BENCH_STAGES takes 1 and/or 2 (got "${process.env.BENCH_STAGES}")`);

interface Cluster {
  stages: number;
  agents: AgentProcess[];
  pipeline: Pipeline;
  scheduler: Scheduler;
}

function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 5 + ((i * 31 + salt * 17) % 9000));
}

async function startCluster(modelDir: string, numLayers: number, stages: number): Promise<Cluster> {
  const key = newClusterKey();
  const agents: AgentProcess[] = [];
  for (let i = 0; i < stages; i++)
    agents.push(
      await spawnAgent({
        modelDir,
        key,
        name: `prefill${stages}-${i}`,
        threads: 1,
        cpu: i,
        extraArgs: ["--matmul-inputs", matmulInputs, "--kv-dtype", kvDtype],
      }),
    );
  const pipeline = await startPipeline({
    plan: evenPlan(`prefill-${stages}`, agents, numLayers),
    clusterKey: key,
    // A stage busy with a long chunk still answers Status from its event loop; be patient all the same.
    heartbeatTimeoutMs: 30_000,
  });
  // An 8k prompt on one contended core can take many minutes: no step timeout gets in the way.
  const scheduler = new Scheduler({
    contextWindow: 16_384,
    prefillChunkTokens: chunkTokens,
    stepTimeoutMs: 3_600_000,
  });
  scheduler.attach(pipeline);
  return { stages, agents, pipeline, scheduler };
}

/** Milliseconds from generate() to the first token. */
async function ttft(cluster: Cluster, prompt: number[]): Promise<number> {
  const started = performance.now();
  for await (const e of cluster.scheduler.generate({ prompt, maxTokens: 1, sampling: {}, stopTokenIds: [] }))
    if (e.type === "token") return performance.now() - started;
  throw new Error("no token");
}

async function main(): Promise<void> {
  const modelDir = await ensureModel("bench-4bit", "bench");
  const numLayers = numLayersOf(modelDir);
  console.log(
    `prefill bench: ${modelDir} (${numLayers} layers), prompts ${sizes.join("/")} tokens, chunks of ${chunkTokens}, ${repeats} run(s) each, threads=1 per stage, stage i pinned to cpu i, matmul inputs ${matmulInputs}, ${kvDtype} KV`,
  );
  const clusters: Cluster[] = [];
  try {
    for (const stages of stageCounts) clusters.push(await startCluster(modelDir, numLayers, stages));
    for (const c of clusters) await ttft(c, promptOf(64, 0)); // warm-up: page in the weights
    const times = clusters.map(() => new Map<number, number[]>(sizes.map((s) => [s, []])));
    for (let r = 0; r < repeats; r++)
      for (const size of sizes)
        for (const [i, c] of clusters.entries()) {
          const ms = await ttft(c, promptOf(size, r + 1));
          times[i].get(size)?.push(ms);
          console.log(`  ${c.stages} stage(s), ${size} tokens: ${(ms / 1000).toFixed(2)} s`);
        }
    const figures: Record<string, number | string> = {
      bench: "prefill",
      chunk_tokens: chunkTokens,
      repeats,
      matmul_inputs: matmulInputs,
      kv_dtype: kvDtype,
    };
    for (const size of sizes) {
      const label = size % 1024 === 0 ? `${size / 1024}k` : String(size);
      const secondsOf = (stages: number): number | undefined => {
        const i = clusters.findIndex((c) => c.stages === stages);
        return i < 0 ? undefined : median(times[i].get(size) ?? []) / 1000;
      };
      const [one, two] = [secondsOf(1), secondsOf(2)];
      const chunks = Math.ceil(size / chunkTokens);
      const parts = [
        one === undefined ? "" : `1 stage ${one.toFixed(2)} s`,
        two === undefined ? "" : `2 stages ${two.toFixed(2)} s`,
        one === undefined || two === undefined
          ? ""
          : `speedup ${(one / two).toFixed(2)}x (ideal ${((2 * chunks) / (chunks + 1)).toFixed(2)}x)`,
      ];
      console.log(`${label} tokens: ${parts.filter(Boolean).join(", ")}`);
      if (one !== undefined) figures[`ttft_1_stage_${label}_s`] = round(one);
      if (two !== undefined) figures[`ttft_2_stages_${label}_s`] = round(two);
      if (one !== undefined && two !== undefined) figures[`speedup_${label}`] = round(one / two, 3);
    }
    const at8k = figures.speedup_8k;
    if (typeof at8k === "number")
      console.log(`target: speedup_8k ${at8k} (>= 1.6 ${at8k >= 1.6 ? "met" : "NOT met"})`);
    console.log(JSON.stringify(figures));
  } finally {
    for (const c of clusters) c.pipeline.close();
    await Promise.all(clusters.flatMap((c) => c.agents.map((a) => a.stop())));
  }
}

await main();
