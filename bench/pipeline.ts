// Pipeline benchmark: decode tokens/s of the bench model served by 1, 2 and 3 node-agent processes (threads=1
// each) on loopback, in one run, and the per-hop latency of the data stream (the receiving stage compares the
// frame's sent_at_us with its clock). A split should cost only hop latency: 2 stages >= 0.95 of 1 stage.
// All three pipelines are up at once (the processes map the same files, so the page cache is shared) and
// their runs are interleaved, so a change in the machine's load hits every configuration alike.
// Prints a table, then ONE JSON line of figures.
// STUDIO_CLUSTER_TLS_LOOPBACK=1: every hop on the cluster's TLS (the default between Macs), where loopback is
// plaintext otherwise; the figures say which ("wire").

import type { Engine } from "../common/engine-api.js";
import { readModelConfig } from "../common/model-config.js";
import { NodeClient } from "../common/wire/client.js";
import { clusterTlsOf } from "../common/wire/cluster-cert.js";
import { nowUs } from "../common/wire/frames.js";
import { LOOPBACK_TLS_ENV, useClusterTls } from "../common/wire/tls.js";
import { FrameKind, type NodeStatus } from "../common/wire/types.js";
import type { Pipeline } from "../coordinator/pipeline.js";
import { Scheduler } from "../coordinator/scheduler.js";
import { openEngine } from "../native/index.js";
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
import { measureHopFloor } from "./hop-floor.js";
import { median, round } from "./stats.js";

const decodeTokens = Number(process.env.BENCH_TOKENS ?? 32);
const repeats = Number(process.env.BENCH_REPEATS ?? 5);
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 3);
const stageCounts = [1, 2, 3];
const tlsOnLoopback = process.env[LOOPBACK_TLS_ENV] === "1";
/** Under TLS every cluster shares one key: this process's clients hold one TLS identity (tls.ts). */
const tlsKey = newClusterKey();

interface Cluster {
  stages: number;
  key: string;
  agents: AgentProcess[];
  pipeline: Pipeline;
  scheduler: Scheduler;
  rates: number[];
  /** Per decode token of the single-sequence runs, where the time goes (see tokenTimes). */
  steps: StepTimes[];
}

/** One decode token as the coordinator saw it, from the RESULT frame's timestamps (microseconds). */
interface StepTimes {
  /** Coordinator sent the item -> last stage sent the RESULT: every stage's work and the hops between them. */
  stagesUs: number;
  /** Last stage sent the RESULT -> the coordinator has it. */
  returnHopUs: number;
  /** The coordinator had the RESULT -> it sent the next item (scheduler, detokenizer stand-in, send path). */
  turnaroundUs: number;
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
  const key = tlsOnLoopback ? tlsKey : newClusterKey();
  const agents: AgentProcess[] = [];
  for (let i = 0; i < stages; i++)
    agents.push(await spawnAgent({ modelDir, key, name: `bench${stages}-${i}`, threads: 1 }));
  const pipeline = await startPipeline({
    plan: evenPlan(`bench-${stages}`, agents, numLayers),
    clusterKey: key,
    statusIntervalMs: 250,
  });
  const scheduler = new Scheduler({ contextWindow: 4096 });
  scheduler.attach(pipeline);
  return { stages, key, agents, pipeline, scheduler, rates: [], steps: [] };
}

/** Decode tokens/s of one sequence: tokens after the first over the time since the first. */
async function singleRun(cluster: Cluster, salt: number): Promise<void> {
  const results: Array<{ origin: number; sent: number; received: number }> = [];
  const stopWatching = cluster.pipeline.onResult((frame) => {
    if (frame.kind === FrameKind.RESULT)
      results.push({ origin: frame.origin_at_us, sent: frame.sent_at_us, received: nowUs() });
  });
  try {
    const { times } = await generate(cluster, salt, decodeTokens);
    cluster.rates.push((times.length - 1) / ((times[times.length - 1] - times[0]) / 1000));
  } finally {
    stopWatching();
  }
  // The first RESULT answers the prompt (prefill); the decode steps follow it.
  for (let i = 1; i + 1 < results.length; i++)
    cluster.steps.push({
      stagesUs: results[i].sent - results[i].origin,
      returnHopUs: results[i].received - results[i].sent,
      turnaroundUs: results[i + 1].origin - results[i].received,
    });
}

/** Median of each part of a decode token, in microseconds. */
function tokenTimes(steps: StepTimes[]): StepTimes {
  return {
    stagesUs: round(median(steps.map((s) => s.stagesUs)), 0),
    returnHopUs: round(median(steps.map((s) => s.returnHopUs)), 0),
    turnaroundUs: round(median(steps.map((s) => s.turnaroundUs)), 0),
  };
}

async function concurrentRun(cluster: Cluster): Promise<number> {
  const started = performance.now();
  const runs = await Promise.all(
    Array.from({ length: concurrency }, (_, i) => generate(cluster, 100 + i, decodeTokens)),
  );
  return runs.reduce((n, r) => n + r.tokens.length, 0) / ((performance.now() - started) / 1000);
}

/**
 * Inbound hop figures of every stage but the first (whose inbound link is the coordinator's), over the frames
 * received since `sinceUs` only: one Status message from each node on a stream of our own.
 */
async function hopStatuses(cluster: Cluster, sinceUs: number): Promise<NodeStatus[]> {
  return Promise.all(
    cluster.agents.slice(1).map(async (agent) => {
      const client = new NodeClient(agent.address, cluster.key);
      try {
        const call = client.status(1000, sinceUs);
        const status = await new Promise<NodeStatus>((resolve, reject) => {
          call.once("data", resolve);
          call.once("error", reject);
        });
        call.cancel();
        return status;
      } finally {
        client.close();
      }
    }),
  );
}

/**
 * The same decode on in-process engines (no gRPC at all): one engine holding every layer (what a one-stage
 * pipeline is measured against), or a chain of engines over consecutive layer ranges run one after the other
 * (what splitting costs the engine itself, without the wire).
 */
async function directRun(chain: Engine[], seq: number, rates: number[]): Promise<void> {
  const prompt = promptOf(seq);
  const step = async (position: number, tokens: Int32Array): Promise<number> => {
    let hidden: Uint8Array | undefined;
    let token: number | undefined;
    for (const [i, engine] of chain.entries()) {
      const [out] = await engine.forward([i === 0 ? { seq, position, tokens } : { seq, position, hidden }]);
      hidden = out.hidden;
      token = out.token;
    }
    if (token === undefined) throw new Error("the last engine of the chain returned no token");
    return token;
  };
  let token = await step(0, Int32Array.from(prompt));
  const started = performance.now();
  for (let n = 1; n < decodeTokens; n++) token = await step(prompt.length + n - 1, Int32Array.of(token));
  rates.push((decodeTokens - 1) / ((performance.now() - started) / 1000));
  for (const engine of chain) await engine.release(seq);
}

/** Bytes of one token's hidden state on the wire (f32 on the cpu backend). */
function hiddenBytesOf(modelDir: string): number {
  return readModelConfig(modelDir).hiddenSize * 4;
}

async function main(): Promise<void> {
  const modelDir = await ensureModel("bench-4bit", "bench");
  const numLayers = numLayersOf(modelDir);
  if (tlsOnLoopback) useClusterTls(await clusterTlsOf(tlsKey));
  console.log(
    `pipeline bench: ${modelDir} (${numLayers} layers), ${decodeTokens} decode tokens x ${repeats} interleaved runs, threads=1 per stage, ${tlsOnLoopback ? "TLS" : "plaintext"} between processes`,
  );
  const clusters: Cluster[] = [];
  const direct: number[] = [];
  const directSplit: number[] = [];
  const engines: Engine[] = [];
  const half = Math.floor(numLayers / 2);
  const open = async (layerStart: number, layerEnd: number): Promise<Engine> => {
    const engine = await openEngine({
      modelDir,
      layerStart,
      layerEnd,
      embed: layerStart === 0,
      head: layerEnd === numLayers,
      threads: 1,
    });
    engines.push(engine);
    return engine;
  };
  try {
    for (const stages of stageCounts) clusters.push(await startCluster(modelDir, numLayers, stages));
    const whole = await open(0, numLayers);
    const halves = [await open(0, half), await open(half, numLayers)];
    for (const c of clusters) await generate(c, 0, 8); // warm-up: page in the weights, open the connections
    // Hop figures leave the warm-up out (its first frames run cold code and open connections).
    const measuredSince = nowUs();
    for (let r = 0; r < repeats; r++) {
      await directRun([whole], r + 1, direct);
      await directRun(halves, r + 1, directSplit);
      for (const c of clusters) await singleRun(c, r + 1);
    }
    console.log(
      `in-process engine: ${median(direct).toFixed(2)} tok/s (runs ${direct.map((v) => v.toFixed(2)).join(" ")}); split in two engines run one after the other: ${median(directSplit).toFixed(2)} tok/s (runs ${directSplit.map((v) => v.toFixed(2)).join(" ")})`,
    );
    // Hop figures: the receiving stages' Status, over the single-sequence runs only (no stage competes with
    // another of its pipeline for a core then).
    const hops = await Promise.all(clusters.map((c) => hopStatuses(c, measuredSince)));
    // The floor this machine allows, in the same run: raw TCP and the gRPC Data path between idle processes.
    // Its bare server speaks plaintext: under TLS the floor is still plaintext's (our clients dial it so).
    delete process.env[LOOPBACK_TLS_ENV];
    const floor = await measureHopFloor({ payloadBytes: hiddenBytesOf(modelDir) });
    if (tlsOnLoopback) process.env[LOOPBACK_TLS_ENV] = "1";
    console.log(
      `hop floor (idle processes, one ${floor.payloadBytes}-byte message every ${floor.gapMs} ms): raw TCP p50 ${floor.tcp.p50_us} us p99 ${floor.tcp.p99_us} us, gRPC Data p50 ${floor.grpc.p50_us} us p99 ${floor.grpc.p99_us} us`,
    );
    const concurrent: number[] = [];
    for (const c of clusters) concurrent.push(await concurrentRun(c));
    clusters.forEach((c, i) => {
      const hopText =
        hops[i].length > 0
          ? `, hop p50 ${hops[i].map((s) => s.inbound_hop_p50_us.toFixed(0)).join("/")} us, p99 ${hops[i].map((s) => s.inbound_hop_p99_us.toFixed(0)).join("/")} us`
          : "";
      const t = tokenTimes(c.steps);
      console.log(
        `${c.stages} stage(s) per decode token: ${(t.stagesUs / 1000).toFixed(2)} ms in the stages (${c.stages} forward(s) + ${c.stages - 1} hop(s)), return hop ${t.returnHopUs} us, coordinator turnaround ${t.turnaroundUs} us`,
      );
      console.log(
        `${c.stages} stage(s): ${median(c.rates).toFixed(2)} tok/s single sequence (runs ${c.rates.map((v) => v.toFixed(2)).join(" ")}), ${concurrent[i].toFixed(2)} tok/s with ${concurrency} sequences${hopText}`,
      );
    });
    const [one, two, three] = clusters.map((c) => median(c.rates));
    const allHops = hops.flat();
    const hopP50 = round(median(allHops.map((s) => s.inbound_hop_p50_us)), 0);
    const figures = {
      bench: "pipeline",
      wire: tlsOnLoopback ? "tls" : "plaintext",
      one_stage_tps: round(one),
      two_stage_ratio: round(two / one, 3),
      three_stage_ratio: round(three / one, 3),
      hop_p50_us: hopP50,
      hop_p99_us: round(Math.max(...allHops.map((s) => s.inbound_hop_p99_us)), 0),
      hop_frames: allHops.reduce((n, s) => n + s.inbound_hop_count, 0),
      floor_tcp_p50_us: floor.tcp.p50_us,
      floor_grpc_p50_us: floor.grpc.p50_us,
      hop_vs_tcp_floor: round(hopP50 / floor.tcp.p50_us),
      hop_vs_grpc_floor: round(hopP50 / floor.grpc.p50_us),
      engine_tps: round(median(direct)),
      engine_token_ms: round(1000 / median(direct)),
      engine_split_ratio: round(median(directSplit) / median(direct), 3),
      stages_token_ms: clusters.map((c) => round(tokenTimes(c.steps).stagesUs / 1000)),
      return_hop_us: round(median(clusters.map((c) => tokenTimes(c.steps).returnHopUs)), 0),
      coordinator_turnaround_us: round(median(clusters.map((c) => tokenTimes(c.steps).turnaroundUs)), 0),
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
    for (const engine of engines) await engine.close();
    for (const c of clusters) c.pipeline.close();
    await Promise.all(clusters.flatMap((c) => c.agents.map((a) => a.stop())));
  }
}

await main();
