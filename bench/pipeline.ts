// Pipeline benchmark: decode tokens/s of the bench model served by 1, 2 and 3 node-agent processes (threads=1
// each) on loopback, in one run, and the per-hop latency of the data stream (the receiving stage compares the
// frame's sent_at_us with its clock). A split should cost only hop latency: 2 stages >= 0.95 of 1 stage.
// Prints a table, then ONE JSON line of figures.
import { Pipeline } from "../coordinator/pipeline.js";
import { Scheduler } from "../coordinator/scheduler.js";
import {
  type AgentProcess,
  collect,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
} from "../test/pipeline-cluster.js";

const decodeTokens = Number(process.env.BENCH_TOKENS ?? 32);
const repeats = Number(process.env.BENCH_REPEATS ?? 3);
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 3);

interface StageCountFigures {
  stages: number;
  /** Median single-sequence decode tokens/s. */
  tps: number;
  /** Aggregate tokens/s with `concurrency` sequences in flight. */
  concurrentTps: number;
  hopP50Us: number[];
  hopP99Us: number[];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function promptOf(salt: number): number[] {
  return Array.from({ length: 16 }, (_, i) => 5 + ((i * 31 + salt * 17) % 4000));
}

async function measure(modelDir: string, numLayers: number, stages: number): Promise<StageCountFigures> {
  const key = newClusterKey();
  const agents: AgentProcess[] = [];
  let pipeline: Pipeline | undefined;
  try {
    for (let i = 0; i < stages; i++)
      agents.push(await spawnAgent({ modelDir, key, name: `bench-${i}`, threads: 1 }));
    pipeline = await Pipeline.start({
      plan: evenPlan(`bench-${stages}`, agents, numLayers),
      clusterKey: key,
      statusIntervalMs: 250,
    });
    const scheduler = new Scheduler({ contextWindow: 4096 });
    scheduler.attach(pipeline);
    const generate = (salt: number, maxTokens: number) =>
      collect(scheduler.generate({ prompt: promptOf(salt), maxTokens, sampling: {}, stopTokenIds: [] }));
    await generate(0, 8); // warm-up: page in the weights, open the connections
    const rates: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const { times } = await generate(r + 1, decodeTokens);
      rates.push((times.length - 1) / ((times[times.length - 1] - times[0]) / 1000));
    }
    // Hop figures come from the receiving stages' Status (stage 0's inbound link is the coordinator's), taken
    // after the single-sequence runs, when no stage competes with another for a core.
    await new Promise((r) => setTimeout(r, 400));
    const hops = [...pipeline.statuses().entries()].filter(([i]) => i > 0).map(([, s]) => s);
    const started = performance.now();
    const runs = await Promise.all(
      Array.from({ length: concurrency }, (_, i) => generate(100 + i, decodeTokens)),
    );
    const concurrentTps =
      runs.reduce((n, r) => n + r.tokens.length, 0) / ((performance.now() - started) / 1000);
    return {
      stages,
      tps: median(rates),
      concurrentTps,
      hopP50Us: hops.map((s) => s.inbound_hop_p50_us),
      hopP99Us: hops.map((s) => s.inbound_hop_p99_us),
    };
  } finally {
    pipeline?.close();
    await Promise.all(agents.map((a) => a.stop()));
  }
}

async function main(): Promise<void> {
  const modelDir = await ensureModel("bench-4bit", "bench");
  const numLayers = numLayersOf(modelDir);
  console.log(
    `pipeline bench: ${modelDir} (${numLayers} layers), ${decodeTokens} decode tokens x ${repeats}, threads=1 per stage`,
  );
  const results: StageCountFigures[] = [];
  for (const stages of [1, 2, 3]) {
    const f = await measure(modelDir, numLayers, stages);
    results.push(f);
    console.log(
      `${stages} stage(s): ${f.tps.toFixed(2)} tok/s single sequence, ${f.concurrentTps.toFixed(2)} tok/s with ${concurrency} sequences` +
        (f.hopP50Us.length > 0
          ? `, hop p50 ${f.hopP50Us.map((v) => v.toFixed(0)).join("/")} us, p99 ${f.hopP99Us.map((v) => v.toFixed(0)).join("/")} us`
          : ""),
    );
  }
  const [one, two, three] = results;
  const allP50 = [...two.hopP50Us, ...three.hopP50Us];
  const allP99 = [...two.hopP99Us, ...three.hopP99Us];
  const figures = {
    bench: "pipeline",
    one_stage_tps: round(one.tps),
    two_stage_ratio: round(two.tps / one.tps, 3),
    three_stage_ratio: round(three.tps / one.tps, 3),
    hop_p50_us: round(median(allP50), 0),
    hop_p99_us: round(Math.max(...allP99), 0),
    one_stage_concurrent_tps: round(one.concurrentTps),
    three_stage_concurrent_ratio: round(three.concurrentTps / one.concurrentTps, 3),
    concurrency,
  };
  console.log(
    `targets: two_stage_ratio ${figures.two_stage_ratio} (>= 0.95 ${figures.two_stage_ratio >= 0.95 ? "met" : "NOT met"}), hop p50 ${figures.hop_p50_us} us (<= 150 ${figures.hop_p50_us <= 150 ? "met" : "NOT met"})`,
  );
  console.log(JSON.stringify(figures));
}

function round(v: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

await main();
