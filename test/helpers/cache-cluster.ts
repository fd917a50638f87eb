// A cluster with the prefix cache's disk tier, for the prefix-cache tests and the agent bench: node-agent
// processes on the tiny model, each with its own cache folder (--cache-dir), a pipeline over them and a scheduler
// with the prefix cache in this process. restart() stops every process and starts them again on the same folders
// (a full cluster restart: the coordinator's index starts empty and is rebuilt from the nodes' lists); replan()
// loads other layer ranges on the same nodes.
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { blockChain } from "../../coordinator/block-chain.js";
import type { Pipeline, PipelinePlan } from "../../coordinator/pipeline.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import type { GenerationEvent } from "../../coordinator/token-generator.js";
import {
  type AgentProcess,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
  startPipeline,
} from "./pipeline-cluster.js";

export interface CacheClusterOptions {
  name: string;
  stages: number;
  /** Folder holding one cache folder per node; absent: RAM only. */
  cacheRoot?: string;
  /** The scheduler's RAM tier in bytes per node (default 64 MiB), or in tokens of the dearest stage. */
  ramBytes?: number;
  ramTokens?: number;
  /** Each node's disk budget (absent: the node's default). */
  diskBytes?: number;
  /** Tokens per block. Default 64 (the tests' prompts are a few hundred tokens). */
  blockTokens?: number;
  preset?: "tiny" | "scripted";
}

export interface Outcome {
  tokens: number[];
  cachedTokens: number;
  /** Of cachedTokens, the positions restored from the nodes' disks. */
  diskTokens: number;
}

export class CacheCluster {
  agents: AgentProcess[] = [];
  pipeline!: Pipeline;
  scheduler!: Scheduler;
  readonly modelDir: string;
  private readonly key = newClusterKey();
  private plans = 0;

  private constructor(
    private readonly opts: CacheClusterOptions,
    modelDir: string,
  ) {
    this.modelDir = modelDir;
  }

  static async start(opts: CacheClusterOptions): Promise<CacheCluster> {
    const preset = opts.preset ?? "tiny";
    const cluster = new CacheCluster(opts, await ensureModel(`${preset}-4bit`, preset));
    try {
      await cluster.spawn();
      await cluster.plan(evenPlan(cluster.planId(), cluster.agents, numLayersOf(cluster.modelDir)));
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  /** Node i's cache folder. */
  cacheDir(i: number): string | undefined {
    return this.opts.cacheRoot && join(this.opts.cacheRoot, `${this.opts.name}-${i}`);
  }

  /** The folder of node i's blocks (one format folder inside its cache folder). */
  blockFolder(i: number): string {
    const dir = this.cacheDir(i);
    if (!dir) throw new Error("this cluster has no disk tier");
    const formats = readdirSync(dir);
    if (formats.length !== 1) throw new Error(`${dir} holds ${formats.length} format folders`);
    return join(dir, formats[0]);
  }

  private planId(): string {
    return `${this.opts.name}-plan-${++this.plans}`;
  }

  private async spawn(): Promise<void> {
    this.agents = await Promise.all(
      Array.from({ length: this.opts.stages }, (_, i) => {
        const dir = this.cacheDir(i);
        const extraArgs: string[] = [];
        if (dir) {
          mkdirSync(dir, { recursive: true });
          extraArgs.push("--cache-dir", dir);
          if (this.opts.diskBytes !== undefined)
            extraArgs.push("--cache-disk-bytes", String(this.opts.diskBytes));
        }
        return spawnAgent({
          modelDir: this.modelDir,
          key: this.key,
          name: `${this.opts.name}-${i}`,
          threads: 1,
          extraArgs,
        });
      }),
    );
  }

  /** Loads a plan on the nodes and attaches a new scheduler (a new coordinator: its index starts empty). */
  async plan(plan: PipelinePlan): Promise<void> {
    await this.scheduler?.detach("a new plan");
    this.pipeline = await startPipeline({ plan, clusterKey: this.key });
    this.scheduler = new Scheduler({
      contextWindow: 4096,
      prefixCacheBytesPerNode: this.opts.ramTokens
        ? this.opts.ramTokens * Math.max(...this.pipeline.kvBytesPerToken)
        : (this.opts.ramBytes ?? 64 * 1024 ** 2),
      prefixBlockTokens: this.opts.blockTokens ?? 64,
    });
    this.scheduler.attach(this.pipeline);
  }

  /** Other layer ranges on the same nodes: [0, cuts[0]), [cuts[0], cuts[1]), ... */
  async replan(cuts: number[]): Promise<void> {
    const layers = numLayersOf(this.modelDir);
    const bounds = [0, ...cuts, layers];
    const plan = evenPlan(this.planId(), this.agents, layers);
    plan.stages = plan.stages.map((s, i) => ({ ...s, layerStart: bounds[i], layerEnd: bounds[i + 1] }));
    await this.plan(plan);
  }

  /**
   * Stops every node (each writes its queued blocks first) and starts them again on the same folders, with the
   * even plan or the layer cuts given (see replan).
   */
  async restart(cuts?: number[]): Promise<void> {
    await this.scheduler.detach("restarting");
    await Promise.all(this.agents.map((a) => a.stop()));
    await this.spawn();
    if (cuts) await this.replan(cuts);
    else await this.plan(evenPlan(this.planId(), this.agents, numLayersOf(this.modelDir)));
  }

  async run(prompt: number[], maxTokens: number): Promise<Outcome> {
    const out: Outcome = { tokens: [], cachedTokens: -1, diskTokens: 0 };
    const before = this.scheduler.prefixCacheFigures()?.diskHitTokens ?? 0;
    const events: AsyncIterable<GenerationEvent> = this.scheduler.generate({
      prompt,
      maxTokens,
      sampling: {},
      stopTokenIds: [],
    });
    for await (const e of events) {
      if (e.type === "admitted") out.cachedTokens = e.cachedTokens;
      if (e.type === "token") out.tokens.push(e.token);
    }
    out.diskTokens = (this.scheduler.prefixCacheFigures()?.diskHitTokens ?? 0) - before;
    return out;
  }

  /**
   * Waits until every node has written every block of `tokens` (the writes run behind the requests): the manifest
   * and the file of each layer of the node's range (each file appears whole, by a rename).
   */
  async untilOnDisk(tokens: number[], ms = 20_000): Promise<void> {
    const chain = blockChain(tokens, this.opts.blockTokens ?? 64);
    const files = (i: number, hash: string): string[] => {
      const { layerStart, layerEnd } = this.pipeline.plan.stages[i];
      const names = [`${hash}.blk`];
      for (let l = layerStart; l < layerEnd; l++) names.push(`${hash}.${l}.kv`);
      return names.map((n) => join(this.blockFolder(i), hash.slice(0, 2), n));
    };
    const missing = () =>
      this.agents.flatMap((_, i) => chain.filter((b) => !files(i, b.hash).every((f) => existsSync(f))));
    const deadline = Date.now() + ms;
    while (missing().length > 0) {
      if (Date.now() > deadline) throw new Error(`${missing().length} block(s) not on disk within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    await this.scheduler?.detach("closing");
    this.pipeline?.close();
    await Promise.all(this.agents.map((a) => a.stop()));
  }
}

/** The same prompt every time for a salt: tokens of the tiny model's vocabulary. */
export function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}
