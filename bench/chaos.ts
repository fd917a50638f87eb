// Chaos bench (issue 13): the generator of test/cluster/chaos.test.ts over a longer seeded sequence, on three
// `cluster up` processes in network namespaces (needs root and iproute2), every fault allowed on every node,
// the coordinator included. Prints one row per step (the fault, how long the two streams took to end after it,
// the most coordinators seen at once in one component, how long the cluster took to serve after the heal, what
// broke) and ends with ONE JSON line. CHAOS_SEED and CHAOS_STEPS override the defaults.
import { ChatFormatter } from "../chat/chat-formatter.js";
import { ChaosCluster, chaosSequence, chaosSkipReason, type StepResult } from "../test/helpers/chaos.js";
import { ensureModel } from "../test/helpers/pipeline-cluster.js";

const seed = Number(process.env.CHAOS_SEED ?? 2026);
const steps = Number(process.env.CHAOS_STEPS ?? 12);

function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function main(): Promise<void> {
  const reason = chaosSkipReason();
  if (reason) {
    console.log(`bench:chaos cannot run here: ${reason}`);
    console.log(JSON.stringify({ bench: "chaos", skipped: reason }));
    return;
  }
  const modelDir = await ensureModel("tiny", "tiny");
  const cluster = new ChaosCluster(3, modelDir);
  const results: StepResult[] = [];
  const settleFailures: string[] = [];
  try {
    await cluster.start(ChatFormatter.forModelDir(modelDir).stopTokenIds);
    await cluster.waitWhole(120_000);
    console.log(`seed ${seed}, ${steps} steps, 3 nodes (n1 coordinates the whole cluster)`);
    console.log("step | fault        | streams ended (ms) | coordinators | served again (ms) | broken");
    for (const [k, step] of chaosSequence(seed, steps, 3).entries()) {
      const r = await cluster.runStep(step);
      results.push(r);
      const fault = `${step.fault} n${step.victim + 1}`.padEnd(12);
      const ended = r.streamEndMs.join(", ").padEnd(18);
      const served = `${r.serveAgainMs ?? "-"}`.padEnd(17);
      console.log(
        `${`${k + 1}`.padEnd(4)} | ${fault} | ${ended} | ${`${r.maxCoordinatorsPerComponent}`.padEnd(12)} | ${served} | ${r.failures.join("; ").slice(0, 300) || "-"}`,
      );
      const leak = await cluster
        .settle(180_000)
        .catch((err: Error) => `did not settle: ${err.message.slice(0, 300)}`);
      if (leak) {
        settleFailures.push(`after step ${k + 1}: ${leak}`);
        console.log(`     after step ${k + 1}: ${leak}`);
      }
    }
  } finally {
    await cluster.stop();
  }
  const ends = results.flatMap((r) => r.streamEndMs);
  const served = results.flatMap((r) => (r.serveAgainMs === undefined ? [] : [r.serveAgainMs]));
  console.log(
    JSON.stringify({
      bench: "chaos",
      seed,
      steps: results.length,
      steps_failed: results.filter((r) => r.failures.length > 0).length,
      failures: results.flatMap((r, k) =>
        r.failures.map((f) => `step ${k + 1} (${r.step.fault} n${r.step.victim + 1}): ${f.slice(0, 200)}`),
      ),
      settle_failures: settleFailures,
      stream_end_ms_median: median(ends),
      stream_end_ms_max: ends.length ? Math.max(...ends) : null,
      serve_again_ms_median: median(served),
      serve_again_ms_max: served.length ? Math.max(...served) : null,
      max_coordinators_per_component: Math.max(0, ...results.map((r) => r.maxCoordinatorsPerComponent)),
    }),
  );
}

await main();
