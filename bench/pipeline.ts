// Pipeline benchmark: decode tokens/s of the bench model served by 1, 2 and 3 node-agent processes (threads=1
// each) on loopback, in one run, and the per-hop latency of the data stream (the receiving stage compares the
// frame's sent_at_us with its clock). A split should cost only hop latency: 2 stages >= 0.95 of 1 stage.
// All three pipelines are up at once (the processes map the same files, so the page cache is shared) and
// their runs are interleaved, so a change in the machine's load hits every configuration alike.
// Prints a table, then ONE JSON line of figures.
import { Pipeline } from "../coordinator/pipeline.js";
import { Scheduler } from "../coordinator/scheduler.js";
import type { Engine } from "../native/engine-api.js";
import { openEngine } from "../native/index.js";
import {
  type AgentProcess,
  collect,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
} from "../test/pipeline-cluster.js";
import { median, round } from "./stats.js";

const decodeTokens = Number(process.env.BENCH_TOKENS ?? 32);
const repeats = Number(process.env.BENCH_REPEATS ?? 5);
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 3);
const stageCounts = [1, 2, 3];

interface Cluster {
  stages: number;
  agents: AgentProcess[];
  pipeline: Pipeline;
  scheduler: Scheduler;
  rates: number[];
}

function promptOf(salt: number): number[] {
  return Array.from({ length: 16 }, (_, i) => 5 + ((i * 31 + salt * 17) % 4000));
}

function generate(cluster: Cluster, salt: number, maxTokens: number) {
  return collect(
    cluster.scheduler.generate({ prompt: promptOf(salt), maxTokens, sampling: {}, stopTokenIds: [] }),
  );
}

async function startCluster(modelDir: string, numLayers: number, stages: number): Promise<Cluster> {
  const key = newClusterKey();
  const agents: AgentProcess[] = [];
  for (let i = 0; i < stages; i++)
    agents.push(await spawnAgent({ modelDir, key, name: `bench${stages}-${i}`, threads: 1 }));
  const pipeline = await Pipeline.start({
    plan: evenPlan(`bench-${stages}`, agents, numLayers),
    clusterKey: key,
    statusIntervalMs: 250,
  });
  const scheduler = new Scheduler({ contextWindow: 4096 });
  scheduler.attach(pipeline);
  return { stages, agents, pipeline, scheduler, rates: [] };
}

/** Decode tokens/s of one sequence: tokens after the first over the time since the first. */
async function singleRun(cluster: Cluster, salt: number): Promise<void> {
  const { times } = await generate(cluster, salt, decodeTokens);
  cluster.rates.push((times.length - 1) / ((times[times.length - 1] - times[0]) / 1000));
}

async function concurrentRun(cluster: Cluster): Promise<number> {
  const started = performance.now();
  const runs = await Promise.all(
    Array.from({ length: concurrency }, (_, i) => generate(cluster, 100 + i, decodeTokens)),
  );
  return runs.reduce((n, r) => n + r.tokens.length, 0) / ((performance.now() - started) / 1000);
}

/** The same decode on an in-process engine (no gRPC at all): what a one-stage pipeline is measured against. */
async function directRun(engine: Engine, seq: number, rates: number[]): Promise<void> {
  const prompt = promptOf(seq);
  let [out] = await engine.forward([{ seq, position: 0, tokens: Int32Array.from(prompt) }]);
  const started = performance.now();
  for (let n = 1; n < decodeTokens; n++) {
    [out] = await engine.forward([
      { seq, position: prompt.length + n - 1, tokens: Int32Array.of(out.token!) },
    ]);
  }
  rates.push((decodeTokens - 1) / ((performance.now() - started) / 1000));
  await engine.release(seq);
}

async function main(): Promise<void> {
  const modelDir = await ensureModel("bench-4bit", "bench");
  const numLayers = numLayersOf(modelDir);
  console.log(
    `pipeline bench: ${modelDir} (${numLayers} layers), ${decodeTokens} decode tokens x ${repeats} interleaved runs, threads=1 per stage`,
  );
  const clusters: Cluster[] = [];
  const direct: number[] = [];
  let engine: Engine | undefined;
  try {
    for (const stages of stageCounts) clusters.push(await startCluster(modelDir, numLayers, stages));
    engine = await openEngine({
      modelDir,
      layerStart: 0,
      layerEnd: numLayers,
      embed: true,
      head: true,
      threads: 1,
    });
    for (const c of clusters) await generate(c, 0, 8); // warm-up: page in the weights, open the connections
    for (let r = 0; r < repeats; r++) {
      await directRun(engine, r + 1, direct);
      for (const c of clusters) await singleRun(c, r + 1);
    }
    console.log(
      `in-process engine: ${median(direct).toFixed(2)} tok/s (runs ${direct.map((v) => v.toFixed(2)).join(" ")})`,
    );
    // Hop figures: the receiving stages' Status (stage 0's inbound link is the coordinator's), taken after the
    // single-sequence runs, when no stage competes with another of its pipeline for a core.
    await new Promise((r) => setTimeout(r, 400));
    const hops = clusters.map((c) =>
      [...c.pipeline.statuses().entries()].filter(([i]) => i > 0).map(([, s]) => s),
    );
    const concurrent: number[] = [];
    for (const c of clusters) concurrent.push(await concurrentRun(c));
    clusters.forEach((c, i) => {
      const hopText =
        hops[i].length > 0
          ? `, hop p50 ${hops[i].map((s) => s.inbound_hop_p50_us.toFixed(0)).join("/")} us, p99 ${hops[i].map((s) => s.inbound_hop_p99_us.toFixed(0)).join("/")} us`
          : "";
      console.log(
        `${c.stages} stage(s): ${median(c.rates).toFixed(2)} tok/s single sequence (runs ${c.rates.map((v) => v.toFixed(2)).join(" ")}), ${concurrent[i].toFixed(2)} tok/s with ${concurrency} sequences${hopText}`,
      );
    });
    const [one, two, three] = clusters.map((c) => median(c.rates));
    const allHops = hops.flat();
    const figures = {
      bench: "pipeline",
      one_stage_tps: round(one),
      two_stage_ratio: round(two / one, 3),
      three_stage_ratio: round(three / one, 3),
      hop_p50_us: round(median(allHops.map((s) => s.inbound_hop_p50_us)), 0),
      hop_p99_us: round(Math.max(...allHops.map((s) => s.inbound_hop_p99_us)), 0),
      engine_tps: round(median(direct)),
      one_stage_vs_engine: round(one / median(direct), 3),
      one_stage_concurrent_tps: round(concurrent[0]),
      three_stage_concurrent_ratio: round(concurrent[2] / concurrent[0], 3),
      concurrency,
    };
    console.log(
      `targets: two_stage_ratio ${figures.two_stage_ratio} (>= 0.95 ${figures.two_stage_ratio >= 0.95 ? "met" : "NOT met"}), hop p50 ${figures.hop_p50_us} us (<= 150 ${figures.hop_p50_us <= 150 ? "met" : "NOT met"})`,
    );
    console.log(JSON.stringify(figures));
  } finally {
    await engine?.close();
    for (const c of clusters) c.pipeline.close();
    await Promise.all(clusters.flatMap((c) => c.agents.map((a) => a.stop())));
  }
}

await main();
