// Concurrency benchmark: aggregate decode tokens/s of the bench model on 2 stages (one thread each, stage i pinned
// to cpu i) with 1, 2, 4 and 8 streams at once. One stream keeps one stage busy at a time (the other waits for
// its hidden state); with several in flight the sequences form one wave per stage, each stage runs one wave's
// steps as one batch, and both stages work at once. It also prints the engine items per batch of each stage.
// Aggregate rate = decode tokens of all streams while all of them decode (from the moment the last stream got its
// first token, i.e. every prompt is prefilled, to the moment the first stream ends) over that time. The rate over
// the whole run (first token of any stream to the last token of all; it includes other streams' prefill, which
// the first wave waits behind) is printed too, as span_tps_*. Stream counts alternate within each repeat, so a
// change in the machine's load hits every count alike. Env: BENCH_TOKENS (default 32), BENCH_REPEATS (default 3).
// Prints a table, then ONE JSON line of figures.
import type { Pipeline } from "../coordinator/pipeline.js";
import { Scheduler } from "../coordinator/scheduler.js";
import {
  type AgentProcess,
  collect,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
  startPipeline,
} from "../test/helpers/pipeline-cluster.js";
import { median, round } from "./stats.js";

const decodeTokens = Number(process.env.BENCH_TOKENS ?? 32);
const repeats = Number(process.env.BENCH_REPEATS ?? 3);
const streamCounts = [1, 2, 4, 8];
const statusIntervalMs = 200;

function promptOf(salt: number): number[] {
  return Array.from({ length: 16 }, (_, i) => 5 + ((i * 31 + salt * 17) % 9000));
}

interface Measured {
  /** Decode tokens/s while every stream decodes: from the last stream's first token to the first stream's end. */
  rate: number;
  /** Decode tokens/s over the whole run: from the first stream's first token to the last one's last token. */
  spanRate: number;
  /** Per stage: engine items per batch over the run (decode steps of a wave batch together). */
  itemsPerBatch: number[];
}

/** Cumulative engine batches per stage, from a Status sent after everything before this call. */
async function batchCounts(pipeline: Pipeline): Promise<number[]> {
  await new Promise((r) => setTimeout(r, 2 * statusIntervalMs));
  return [...pipeline.statuses().entries()].sort(([a], [b]) => a - b).map(([, s]) => s.batches);
}

/** Aggregate decode tokens/s of `streams` sequences generated at once. */
async function aggregateRate(
  pipeline: Pipeline,
  scheduler: Scheduler,
  streams: number,
  salt: number,
): Promise<Measured> {
  const before = await batchCounts(pipeline);
  const runs = await Promise.all(
    Array.from({ length: streams }, (_, i) =>
      collect(
        scheduler.generate({
          prompt: promptOf(salt * 16 + i),
          maxTokens: decodeTokens,
          sampling: {},
          stopTokenIds: [],
        }),
      ),
    ),
  );
  const firsts = runs.map((r) => r.times[0]);
  const lasts = runs.map((r) => r.times[r.times.length - 1]);
  const spanTokens = runs.reduce((n, r) => n + r.tokens.length - 1, 0);
  // The steady state: every prompt is prefilled and no stream has ended yet.
  const from = Math.max(...firsts);
  const to = Math.min(...lasts);
  const steadyTokens = runs.reduce((n, r) => n + r.times.filter((t) => t > from && t <= to).length, 0);
  // Every stage ran one prefill item and decodeTokens - 1 decode steps per stream.
  const items = streams * decodeTokens;
  const after = await batchCounts(pipeline);
  return {
    rate: steadyTokens / ((to - from) / 1000),
    spanRate: spanTokens / ((Math.max(...lasts) - Math.min(...firsts)) / 1000),
    itemsPerBatch: after.map((n, i) => items / Math.max(1, n - before[i])),
  };
}

/**
 * Each repeat's rate with n streams over the same repeat's one-stream rate, then the median: load that changes
 * between repeats cancels out.
 */
function speedupOf(rates: Map<number, number[]>, n: number): number {
  const ones = rates.get(1) ?? [];
  return median((rates.get(n) ?? []).map((v, r) => v / ones[r]));
}

async function main(): Promise<void> {
  const modelDir = await ensureModel("bench-4bit", "bench");
  const numLayers = numLayersOf(modelDir);
  console.log(
    `concurrency bench: ${modelDir} (${numLayers} layers), 2 stages (threads=1, stage i pinned to cpu i), ${decodeTokens} tokens per stream, streams ${streamCounts.join("/")}, ${repeats} interleaved repeats`,
  );
  const key = newClusterKey();
  const agents: AgentProcess[] = [];
  let pipeline: Pipeline | undefined;
  try {
    for (let i = 0; i < 2; i++)
      agents.push(await spawnAgent({ modelDir, key, name: `conc-${i}`, threads: 1, cpu: i }));
    pipeline = await startPipeline({
      plan: evenPlan("concurrency", agents, numLayers),
      clusterKey: key,
      heartbeatTimeoutMs: 30_000,
      statusIntervalMs,
    });
    const scheduler = new Scheduler({ contextWindow: 4096 });
    scheduler.attach(pipeline);
    await aggregateRate(pipeline, scheduler, 2, 0); // warm-up: page in the weights, open the connections
    const rates = new Map<number, number[]>(streamCounts.map((n) => [n, []]));
    const spanRates = new Map<number, number[]>(streamCounts.map((n) => [n, []]));
    const batching = new Map<number, number[][]>(streamCounts.map((n) => [n, []]));
    for (let r = 0; r < repeats; r++)
      for (const n of streamCounts) {
        const measured = await aggregateRate(pipeline, scheduler, n, r * 10 + n);
        rates.get(n)?.push(measured.rate);
        spanRates.get(n)?.push(measured.spanRate);
        batching.get(n)?.push(measured.itemsPerBatch);
      }
    const figures: Record<string, number | string> = {
      bench: "concurrency",
      tokens_per_stream: decodeTokens,
    };
    for (const n of streamCounts) {
      const rate = median(rates.get(n) ?? []);
      const speedup = speedupOf(rates, n);
      const spanRate = median(spanRates.get(n) ?? []);
      const perBatch = [0, 1].map((stage) => median((batching.get(n) ?? []).map((b) => b[stage])));
      console.log(
        `${n} stream(s): ${rate.toFixed(2)} tok/s aggregate (runs ${(rates.get(n) ?? []).map((v) => v.toFixed(2)).join(" ")}), ${speedup.toFixed(2)}x one stream; over the whole run incl. other streams' prefill ${spanRate.toFixed(2)} tok/s (${speedupOf(spanRates, n).toFixed(2)}x); items per batch ${perBatch.map((v) => v.toFixed(2)).join("/")}`,
      );
      figures[`items_per_batch_${n}_streams`] = round(Math.min(...perBatch), 2);
      figures[`span_tps_${n}_streams`] = round(spanRate);
      figures[`tps_${n}_streams`] = round(rate);
      if (n > 1) figures[`speedup_${n}_streams`] = round(speedup, 3);
    }
    const at4 = figures.speedup_4_streams as number;
    console.log(`target: speedup_4_streams ${at4} (>= 1.8 ${at4 >= 1.8 ? "met" : "NOT met"})`);
    console.log(JSON.stringify(figures));
  } finally {
    pipeline?.close();
    await Promise.all(agents.map((a) => a.stop()));
  }
}

await main();
