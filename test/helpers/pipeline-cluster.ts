// Shared by the pipeline and node-loss tests (and the pipeline bench): generated models, node-agent
// processes spawned from dist/, plans over them, and the single-engine reference run.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { makeModel } from "../../cli/make-model/index.js";
import type { PresetName } from "../../cli/make-model/presets.js";
import { Membership } from "../../cluster/membership.js";
import type { Engine, SamplingParams } from "../../common/engine-api.js";
import { readModelConfig } from "../../common/model-config.js";
import { packageRoot } from "../../common/paths.js";
import { Pipeline, type PipelineOptions, type PipelinePlan } from "../../coordinator/pipeline.js";
import type { GenerationEvent } from "../../coordinator/token-generator.js";
import { openEngine } from "../../native/index.js";

export function newClusterKey(): string {
  return randomBytes(32).toString("base64url");
}

/**
 * A generated checkpoint under .cache/models/<name>, made once and reused by later runs. It is written to a
 * private folder and renamed into place, so a concurrent run never maps a half-written file.
 */
export async function ensureModel(name: string, preset: PresetName): Promise<string> {
  const dir = join(packageRoot(), ".cache", "models", name);
  if (existsSync(join(dir, "model.safetensors.index.json"))) return dir;
  const staging = `${dir}.staging-${process.pid}`;
  await makeModel({ dir: staging, preset });
  try {
    renameSync(staging, dir);
  } catch (err) {
    // Someone else finished first: keep theirs.
    rmSync(staging, { recursive: true, force: true });
    if (!existsSync(join(dir, "model.safetensors.index.json"))) throw err;
  }
  return dir;
}

export function numLayersOf(modelDir: string): number {
  return readModelConfig(modelDir).numLayers;
}

export interface AgentProcess {
  name: string;
  nodeId: string;
  port: number;
  address: string;
  child: ChildProcess;
  /** Lines the agent wrote to stderr (its log), for failure messages. */
  log: string[];
  stop(): Promise<void>;
}

export function agentEntry(): string {
  const entry = join(packageRoot(), "dist", "node-agent", "main.js");
  if (!existsSync(entry)) throw new Error(`${entry} is missing: run \`npm run build\` before these tests`);
  return entry;
}

/** Spawns `node dist/node-agent/main.js` on loopback with a free port; resolves once it printed its port. */
export function spawnAgent(opts: {
  modelDir: string;
  key: string;
  name: string;
  threads?: number;
  /** Pins the process to this cpu (Linux taskset), as benches do to give each stage its own core. */
  cpu?: number;
  /** More node-agent options (e.g. the --tls-* files). */
  extraArgs?: string[];
}): Promise<AgentProcess> {
  const args = [
    agentEntry(),
    "--model",
    opts.modelDir,
    "--port",
    "0",
    "--name",
    opts.name,
    "--node-id",
    opts.name,
    // The agent exits when this process goes away, even if it crashes before stopping it.
    "--stdin-lifeline",
  ];
  if (opts.threads) args.push("--threads", String(opts.threads));
  if (opts.extraArgs) args.push(...opts.extraArgs);
  const pinned = opts.cpu !== undefined;
  const command = pinned ? "taskset" : process.execPath;
  const child = spawn(command, pinned ? ["-c", String(opts.cpu), process.execPath, ...args] : args, {
    env: { ...process.env, STUDIO_CLUSTER_KEY: opts.key },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const log: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (line) => {
    log.push(line);
    if (log.length > 200) log.shift();
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${opts.name} did not report its port within 30 s:\n${log.join("\n")}`));
    }, 30_000);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${opts.name} exited (${code ?? signal}) before listening:\n${log.join("\n")}`));
    });
    createInterface({ input: child.stdout! }).once("line", (line) => {
      clearTimeout(timer);
      const { port } = JSON.parse(line) as { port: number };
      resolve({
        name: opts.name,
        nodeId: opts.name,
        port,
        address: `127.0.0.1:${port}`,
        child,
        log,
        stop: () => stopChild(child),
      });
    });
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(force);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/** A plan over the agents, in order, splitting the layers as evenly as possible. */
export function evenPlan(planId: string, agents: AgentProcess[], numLayers: number): PipelinePlan {
  const base = Math.floor(numLayers / agents.length);
  const extra = numLayers % agents.length;
  let start = 0;
  const stages = agents.map((agent, i) => {
    const end = start + base + (i < extra ? 1 : 0);
    const stage = {
      nodeId: agent.nodeId,
      name: agent.name,
      address: agent.address,
      layerStart: start,
      layerEnd: end,
      embed: i === 0,
      head: i === agents.length - 1,
    };
    start = end;
    return stage;
  });
  return { planId, stages };
}

export interface Generated {
  tokens: number[];
  end: "stop" | "length" | undefined;
  /** performance.now() at each token. */
  times: number[];
}

export async function collect(
  events: AsyncIterable<GenerationEvent>,
  onToken?: (n: number) => void,
): Promise<Generated> {
  const out: Generated = { tokens: [], end: undefined, times: [] };
  for await (const e of events) {
    if (e.type === "token") {
      out.tokens.push(e.token);
      out.times.push(performance.now());
      onToken?.(out.tokens.length);
    } else if (e.type === "end") out.end = e.reason;
  }
  return out;
}

/**
 * The same generation on one in-process engine holding every layer: prompt in chunks of the scheduler's size,
 * then one step per token. The pipeline must reproduce it token for token.
 */
export async function referenceRun(
  engine: Engine,
  seq: number,
  prompt: number[],
  maxTokens: number,
  sampling: SamplingParams,
  chunkTokens = 256,
): Promise<number[]> {
  let token = -1;
  for (let start = 0; start < prompt.length; start += chunkTokens) {
    const tokens = Int32Array.from(prompt.slice(start, start + chunkTokens));
    const [out] = await engine.forward([{ seq, position: start, tokens, sampling }]);
    token = out.token!;
  }
  const result = [token];
  for (let position = prompt.length; result.length < maxTokens; position++) {
    const [out] = await engine.forward([{ seq, position, tokens: Int32Array.of(token), sampling }]);
    token = out.token!;
    result.push(token);
  }
  await engine.release(seq);
  return result;
}

/** Every layer of the model in one in-process engine (one thread): the reference a pipeline must reproduce. */
export function openWholeModel(modelDir: string): Promise<Engine> {
  return openEngine({
    modelDir,
    layerStart: 0,
    layerEnd: numLayersOf(modelDir),
    embed: true,
    head: true,
    threads: 1,
  });
}

/** Node-agent processes serving the tiny model as one even pipeline, and the whole model in one engine here. */
/**
 * The epoch of every pipeline this process starts without its own: one coordinator id per process, so a test's
 * later plan on the same nodes is the same coordinator's (accepted), as a real coordinator re-planning is.
 */
export const TEST_EPOCH = { term: 1, coordinatorId: `test-coordinator-${process.pid}` };

export interface TestPipelineOptions extends Omit<PipelineOptions, "liveness" | "epoch"> {
  /** The coordinator epoch of its LoadShards (default TEST_EPOCH). */
  epoch?: PipelineOptions["epoch"];
  /** Membership's heartbeat settings for the plan's nodes (its defaults when absent). */
  heartbeatTimeoutMs?: number;
  statusIntervalMs?: number;
}

/**
 * Pipeline.start over agents this test spawned, with the liveness a real node has: a Membership (the one owner
 * of heartbeats) that knows the plan's nodes as --peer candidates. It closes with the pipeline.
 */
export async function startPipeline(opts: TestPipelineOptions): Promise<Pipeline> {
  const { heartbeatTimeoutMs, statusIntervalMs, ...pipelineOptions } = opts;
  const membership = new Membership({
    nodeId: `test-coordinator-${randomBytes(4).toString("hex")}`,
    clusterId: "",
    clusterKey: opts.clusterKey,
    version: "test",
    grpcPort: 0,
    selfAddress: "",
    heartbeatTimeoutMs,
    statusIntervalMs,
    log: () => {},
  });
  const stages = opts.plan.stages;
  for (const stage of stages) membership.addCandidate(stage.address, "peer");
  const deadline = Date.now() + 15_000;
  while (!stages.every((s) => membership.get(s.nodeId))) {
    if (Date.now() > deadline) {
      await membership.close();
      const missing = stages.filter((s) => !membership.get(s.nodeId)).map((s) => s.address);
      throw new Error(`the plan's nodes did not all answer Hello within 15 s: ${missing.join(", ")}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    const pipeline = await Pipeline.start({
      ...pipelineOptions,
      epoch: opts.epoch ?? TEST_EPOCH,
      liveness: membership,
    });
    pipeline.once("closed", () => void membership.close());
    return pipeline;
  } catch (err) {
    await membership.close();
    throw err;
  }
}

export interface TinyCluster {
  agents: AgentProcess[];
  pipeline: Pipeline;
  /** Every layer in this process (threads=1), for referenceRun. */
  reference: Engine;
  close(): Promise<void>;
}

export async function startTinyCluster(name: string, stages: number): Promise<TinyCluster> {
  const key = newClusterKey();
  const modelDir = await ensureModel("tiny-4bit", "tiny");
  const numLayers = numLayersOf(modelDir);
  const agents = await Promise.all(
    Array.from({ length: stages }, (_, i) => spawnAgent({ modelDir, key, name: `${name}-${i}`, threads: 1 })),
  );
  const pipeline = await startPipeline({
    plan: evenPlan(`plan-${name}`, agents, numLayers),
    clusterKey: key,
  });
  const reference = await openWholeModel(modelDir);
  return {
    agents,
    pipeline,
    reference,
    async close() {
      pipeline.close();
      await reference.close();
      await Promise.all(agents.map((a) => a.stop()));
    },
  };
}
