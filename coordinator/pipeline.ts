// A running pipeline as the coordinator sees it: the stages of one plan, loaded (LoadShard on every node in
// parallel), wired (each stage opens Data to its downstream; the coordinator opens Data to stage 0 and Results
// on the last stage) and watched: a node that its liveness source (cluster/membership.ts, which owns every
// node's heartbeat) reports lost, or a broken data stream, loses the pipeline, and "nodeLost" fires once.
import { EventEmitter } from "node:events";
import type * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import { type DataStream, NodeClient } from "../common/wire/client.js";
import type { DataFrame, DataFrameOut, LoadProgress, NodeStatus } from "../common/wire/types.js";
import { type BlockPort, PipelineBlocks } from "./pipeline-blocks.js";
import type { Plan, PlanStage } from "./planner.js";

/** The parts of a planner Plan that the pipeline needs (a Plan is one). */
export type PipelineStagePlan = Pick<
  PlanStage,
  "nodeId" | "name" | "address" | "layerStart" | "layerEnd" | "embed" | "head"
>;
export interface PipelinePlan {
  planId: Plan["planId"];
  backend?: string;
  stages: PipelineStagePlan[];
}

/** Who knows whether a node is alive: cluster/membership.ts, the one owner of node liveness. */
export interface NodeLiveness {
  /** Calls onLost once when nodeId stops answering (at once when it is not live now); returns the unsubscribe. */
  watch(nodeId: string, onLost: (reason: string) => void): () => void;
  /** The node's latest heartbeat. */
  latestStatus(nodeId: string): NodeStatus | undefined;
}

export interface PipelineOptions {
  plan: PipelinePlan;
  clusterKey: string;
  /** Tells the pipeline when one of its nodes is lost, and holds their latest Status. */
  liveness: NodeLiveness;
  /** Engine threads per stage (0/absent: each node's default). */
  threads?: number;
  /** Checked by every node against the model it holds. */
  modelId?: string;
  /** Per stage: the nodes a stage lacking some of its tensors fetches them from, best first. */
  sources?: string[][];
  /**
   * The coordinator epoch sent with every LoadShard (common/coordinator-epoch.ts): nodes refuse a LoadShard
   * without one, so every caller names itself, tools and benches included.
   */
  epoch: { term: number; coordinatorId: string };
  /** Load progress of one stage (for the CLI's bars): fetching missing weights, then mapping them. */
  onProgress?: (stageIndex: number, progress: LoadProgress) => void;
  /** A stage's final load message (weights fetched for it, its figures). */
  onLoaded?: (stageIndex: number, done: LoadProgress) => void;
  log?: (line: string) => void;
}

export interface LostNode {
  stageIndex: number;
  nodeId: string;
  name: string;
  address: string;
  reason: string;
}

export interface PipelineEvents {
  nodeLost: [LostNode];
  /** close() ran: nothing of the pipeline is left open. */
  closed: [];
}

/** Receives every RESULT and ERROR frame (the scheduler's per-token path: one call per frame, no events); it
 * ignores sequences that are not its own. */
export type ResultHandler = (frame: DataFrame) => void;

/** What the scheduler needs of a running pipeline (Pipeline is one; a test may run stages in process). */
export interface PipelinePort {
  readonly plan: PipelinePlan;
  readonly stageCount: number;
  /** KV bytes one token costs on each stage (0: unknown). */
  readonly kvBytesPerToken: readonly number[];
  /** Set once a node is lost; the pipeline then takes no more work. */
  readonly lost: LostNode | undefined;
  onResult(handler: ResultHandler): () => void;
  send(frames: DataFrameOut[]): boolean;
  release(seqs: number[]): Promise<void>;
  cancel(seqs: number[]): Promise<void>;
  /** The prefix cache's block calls; absent where a stage does not offer them (then no prefix cache). */
  readonly blocks?: BlockPort;
  /** Latest Status of each stage, by stage index (memory figures: the prefix cache yields under pressure). */
  statuses?(): Map<number, NodeStatus>;
  once(event: "nodeLost", listener: (lost: LostNode) => void): unknown;
  close(): void;
}

export class Pipeline extends EventEmitter<PipelineEvents> implements PipelinePort {
  readonly plan: PipelinePlan;
  private readonly opts: PipelineOptions;
  private readonly clients: NodeClient[];
  private unwatch: Array<() => void> = [];
  private input: DataStream | undefined;
  private results: grpc.ClientReadableStream<DataFrame> | undefined;
  private resultHandlers: ResultHandler[] = [];
  private lostNode: LostNode | undefined;
  private closed = false;
  private blockCalls: PipelineBlocks | undefined;
  /** KV bytes one token costs on each stage, as its LoadShard reported (0: an older node that did not say). */
  readonly kvBytesPerToken: number[];
  private readonly log: (line: string) => void;

  private constructor(opts: PipelineOptions) {
    super();
    this.opts = opts;
    this.plan = opts.plan;
    this.log = opts.log ?? ((line) => console.error(`[pipeline ${opts.plan.planId}] ${line}`));
    this.clients = opts.plan.stages.map((s) => new NodeClient(s.address, opts.clusterKey));
    this.kvBytesPerToken = opts.plan.stages.map(() => 0);
  }

  /** Loads every stage, wires the data streams and starts the heartbeat watch; rejects naming the stage at fault. */
  static async start(opts: PipelineOptions): Promise<Pipeline> {
    const problem = planProblem(opts.plan);
    if (problem) throw new Error(`plan ${opts.plan.planId}: ${problem}`);
    const pipeline = new Pipeline(opts);
    try {
      pipeline.watchNodes();
      // A node that dies or falls silent while loading fails the start instead of leaving it waiting.
      const lost = new Promise<never>((_, reject) =>
        pipeline.once("nodeLost", (node) => reject(new Error(describeLoss(node)))),
      );
      lost.catch(() => {});
      await Promise.race([pipeline.loadAll(), lost]);
      await Promise.race([pipeline.wire(), lost]);
      // The stages' lists of cached blocks rebuild the prefix index before the first request.
      pipeline.blockCalls = await Promise.race([
        PipelineBlocks.open(
          pipeline.clients,
          opts.plan.planId,
          opts.plan.stages.map((s) => s.name),
          pipeline.log,
          lost,
        ),
        lost,
      ]);
      if (pipeline.lostNode) throw new Error(describeLoss(pipeline.lostNode));
      pipeline.watchShards();
      return pipeline;
    } catch (err) {
      pipeline.close();
      throw err;
    }
  }

  get lost(): LostNode | undefined {
    return this.lostNode;
  }

  get stageCount(): number {
    return this.plan.stages.length;
  }

  get blocks(): BlockPort | undefined {
    return this.closed || this.lostNode ? undefined : this.blockCalls;
  }

  /** Latest Status of each stage, by stage index. */
  statuses(): Map<number, NodeStatus> {
    const out = new Map<number, NodeStatus>();
    this.plan.stages.forEach((stage, i) => {
      const status = this.opts.liveness.latestStatus(stage.nodeId);
      if (status) out.set(i, status);
    });
    return out;
  }

  /** Adds a receiver of RESULT/ERROR frames (one per scheduler using this pipeline); returns its removal. */
  onResult(handler: ResultHandler): () => void {
    this.resultHandlers = [...this.resultHandlers, handler];
    return () => {
      this.resultHandlers = this.resultHandlers.filter((h) => h !== handler);
    };
  }

  private deliver(frame: DataFrame): void {
    for (const handler of this.resultHandlers) handler(frame);
  }

  /** Writes frames to stage 0 (tokens, cancels). False when the pipeline can no longer take work. */
  send(frames: DataFrameOut[]): boolean {
    const input = this.input;
    if (!input || this.closed || this.lostNode) return false;
    for (const frame of frames) input.write(frame);
    return true;
  }

  /** Frees finished sequences on every stage (best effort: a dead node frees nothing anyway). */
  release(seqs: number[]): Promise<void> {
    return this.everyStage((c) => c.release({ plan_id: this.plan.planId, seqs }), "release");
  }

  /** Drops sequences on every stage: queued work and KV. */
  cancel(seqs: number[]): Promise<void> {
    return this.everyStage((c) => c.cancel({ plan_id: this.plan.planId, seqs }), "cancel");
  }

  private async everyStage(call: (c: NodeClient) => Promise<unknown>, what: string): Promise<void> {
    if (this.closed) return;
    const outcomes = await Promise.allSettled(this.clients.map(call));
    outcomes.forEach((o, i) => {
      if (o.status === "rejected" && !this.lostNode && !this.closed)
        this.log(`${what} on ${this.plan.stages[i].name} failed: ${errorMessage(o.reason)}`);
    });
  }

  private async loadAll(): Promise<void> {
    const { plan } = this;
    await Promise.all(
      plan.stages.map(async (stage, i) => {
        try {
          const done = await this.clients[i].loadShard(
            {
              plan_id: plan.planId,
              model_id: this.opts.modelId ?? "",
              layer_start: stage.layerStart,
              layer_end: stage.layerEnd,
              embed: stage.embed,
              head: stage.head,
              backend: plan.backend ?? "",
              threads: this.opts.threads ?? 0,
              downstream: i + 1 < plan.stages.length ? plan.stages[i + 1].address : "",
              stage_index: i,
              stage_count: plan.stages.length,
              sources: this.opts.sources?.[i] ?? [],
              coordinator_term: this.opts.epoch.term,
              coordinator_id: this.opts.epoch.coordinatorId,
            },
            (p) => this.opts.onProgress?.(i, p),
          );
          this.kvBytesPerToken[i] = done.kv_bytes_per_token ?? 0;
          this.opts.onLoaded?.(i, done);
        } catch (err) {
          throw new Error(`stage ${i} (${stage.name} at ${stage.address}): ${grpcMessage(err)}`);
        }
      }),
    );
  }

  /** Opens Results on the last stage (and waits until it is registered) and Data to stage 0. */
  private async wire(): Promise<void> {
    const last = this.clients.length - 1;
    const results = this.clients[last].results(this.plan.planId);
    this.results = results;
    results.on("data", (frame: DataFrame) => this.deliver(frame));
    results.on("error", (err) => this.streamBroke(last, `results stream failed: ${grpcMessage(err)}`));
    results.on("end", () => this.streamBroke(last, "results stream ended"));
    await new Promise<void>((resolve, reject) => {
      results.once("metadata", () => resolve());
      results.once("error", (err) =>
        reject(new Error(`stage ${last} (${this.plan.stages[last].name}): ${grpcMessage(err)}`)),
      );
    });
    const input = this.clients[0].data();
    this.input = input;
    // Stage 0 answers on this stream only about frames it could not attribute to its work (no shard, ...).
    input.on("data", (frame: DataFrame) => this.deliver(frame));
    input.on("error", (err) => this.streamBroke(0, `data stream failed: ${grpcMessage(err)}`));
    input.on("end", () => this.streamBroke(0, "data stream ended"));
  }

  private watchNodes(): void {
    this.unwatch = this.plan.stages.map((stage, i) =>
      this.opts.liveness.watch(stage.nodeId, (reason) => this.streamBroke(i, reason)),
    );
  }

  /**
   * A stage that answers its heartbeat but no longer holds this plan's shard (another coordinator's LoadShard,
   * or a failed load that closed it) is as lost as a silent one: every request would wait on it for minutes.
   * Judged on heartbeats that arrived after the start (the one held then may predate the load), and only when
   * two in a row say so (one sent just before the load ended may arrive just after).
   */
  private watchShards(): void {
    const seen = this.plan.stages.map((s) => this.opts.liveness.latestStatus(s.nodeId));
    const strikes = this.plan.stages.map(() => 0);
    const timer = setInterval(() => {
      this.plan.stages.forEach((stage, i) => {
        const status = this.opts.liveness.latestStatus(stage.nodeId);
        if (!status || status === seen[i]) return;
        seen[i] = status;
        strikes[i] = status.plan_id === this.plan.planId ? 0 : strikes[i] + 1;
        if (strikes[i] >= 2)
          this.streamBroke(
            i,
            `it no longer holds this plan's shard (it holds ${status.plan_id ? `plan ${status.plan_id}` : "none"}: another coordinator loaded it, or a load failed)`,
          );
      });
    }, 250);
    timer.unref();
    this.unwatch.push(() => clearInterval(timer));
  }

  private streamBroke(stageIndex: number, reason: string): void {
    if (this.closed || this.lostNode) return;
    const stage = this.plan.stages[stageIndex];
    this.lostNode = { stageIndex, nodeId: stage.nodeId, name: stage.name, address: stage.address, reason };
    this.log(describeLoss(this.lostNode));
    this.emit("nodeLost", this.lostNode);
  }

  /** Closes every stream and channel (the nodes keep their shards until the next LoadShard). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const stop of this.unwatch) stop();
    this.blockCalls?.close();
    this.results?.cancel();
    this.input?.cancel();
    for (const client of this.clients) client.close();
    this.emit("closed");
  }
}

export function describeLoss(lost: LostNode): string {
  return `${lost.name} at ${lost.address} stopped responding (stage ${lost.stageIndex}: ${lost.reason})`;
}

function planProblem(plan: PipelinePlan): string | undefined {
  const { stages } = plan;
  if (!plan.planId) return "has no planId";
  if (stages.length === 0) return "has no stages";
  if (!stages[0].embed) return "stage 0 must hold the embedding";
  if (!stages[stages.length - 1].head) return "the last stage must hold the head";
  for (let i = 0; i < stages.length; i++) {
    const s = stages[i];
    if (!s.address) return `stage ${i} (${s.name}) has no address`;
    if (s.layerStart >= s.layerEnd)
      return `stage ${i} (${s.name}) has an empty layer range ${s.layerStart}..${s.layerEnd}`;
    if (i > 0 && s.layerStart !== stages[i - 1].layerEnd)
      return `stage ${i} (${s.name}) starts at layer ${s.layerStart} but stage ${i - 1} ends at ${stages[i - 1].layerEnd}`;
  }
  return undefined;
}

/** grpc errors carry the server's message in `details`. */
function grpcMessage(err: unknown): string {
  const details = (err as { details?: unknown })?.details;
  return typeof details === "string" && details.length > 0 ? details : errorMessage(err);
}
