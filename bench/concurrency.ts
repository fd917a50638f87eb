// Concurrency benchmark: aggregate decode tokens/s of the bench model on 2 stages (one thread each, stage i pinned
// to cpu i) with 1, 2, 4 and 8 streams at once. One stream keeps one stage busy at a time (the other waits for
// its hidden state); with several in flight each stage batches whatever is queued, so both work at once.
// Aggregate rate = decode tokens of all streams (after each one's first) over the time from the first stream's
// first token to the last stream's last token. Stream counts alternate within each repeat, so a change in the
// machine's load hits every count alike. Env: BENCH_TOKENS (default 32), BENCH_REPEATS (default 3).
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
import { median, round } from "./stats.js";

const decodeTokens = Number(process.env.BENCH_TOKENS ?? 32);
const repeats = Number(process.env.BENCH_REPEATS ?? 3);
const streamCounts = [1, 2, 4, 8];

function promptOf(salt: number): number[] {
  return Array.from({ length: 16 }, (_, i) => 5 + ((i * 31 + salt * 17) % 9000));
}

/** Aggregate decode tokens/s of `streams` sequences generated at once. */
async function aggregateRate(scheduler: Scheduler, streams: number, salt: number): Promise<number> {
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
  const start = Math.min(...runs.map((r) => r.times[0]));
  const end = Math.max(...runs.map((r) => r.times[r.times.length - 1]));
  const tokens = runs.reduce((n, r) => n + r.tokens.length - 1, 0);
  return tokens / ((end - start) / 1000);
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
    pipeline = await Pipeline.start({
      plan: evenPlan("concurrency", agents, numLayers),
      clusterKey: key,
      heartbeatTimeoutMs: 30_000,
    });
    const scheduler = new Scheduler({ contextWindow: 4096 });
    scheduler.attach(pipeline);
    await aggregateRate(scheduler, 2, 0); // warm-up: page in the weights, open the connections
    const rates = new Map<number, number[]>(streamCounts.map((n) => [n, []]));
    for (let r = 0; r < repeats; r++)
      for (const n of streamCounts) rates.get(n)?.push(await aggregateRate(scheduler, n, r * 10 + n));
    const single = median(rates.get(1) ?? []);
    const figures: Record<string, number | string> = {
      bench: "concurrency",
      tokens_per_stream: decodeTokens,
    };
    for (const n of streamCounts) {
      const rate = median(rates.get(n) ?? []);
      console.log(
        `${n} stream(s): ${rate.toFixed(2)} tok/s aggregate (runs ${(rates.get(n) ?? []).map((v) => v.toFixed(2)).join(" ")}), ${(rate / single).toFixed(2)}x one stream`,
      );
      figures[`tps_${n}_streams`] = round(rate);
      if (n > 1) figures[`speedup_${n}_streams`] = round(rate / single, 3);
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
