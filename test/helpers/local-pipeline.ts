// A pipeline in this process, for unit tests of the scheduler and the controller that start no process: the
// plan's stages are the node agent's own Stage objects around real engines (the tiny model), and every frame
// between them goes through the wire's real protobuf serializer, as it would between processes. Only the
// transport is left out. lose() stands for a node that stopped answering.
import { EventEmitter } from "node:events";
import { freemem, totalmem } from "node:os";
import type { Engine } from "../../common/engine-api.js";
import { dtypeOfActivation } from "../../common/wire/frames.js";
import { studioNodeService } from "../../common/wire/proto.js";
import type { BlockUse, DataFrame, DataFrameOut, KvBlock, NodeStatus } from "../../common/wire/types.js";
import {
  describeLoss,
  type LostNode,
  type PipelineEvents,
  type PipelinePlan,
  type PipelinePort,
  type ResultHandler,
} from "../../coordinator/pipeline.js";
import type { BlockPort, StageAssembly } from "../../coordinator/pipeline-blocks.js";
import { type NativeEngineStats, openEngine } from "../../native/index.js";
import { BlockHost } from "../../node-agent/block-host.js";
import { type FrameSink, Stage } from "../../node-agent/stage.js";

const dataMethod = studioNodeService().Data;

/** A frame as the receiving process reads it: serialized and parsed by the wire's own codec. */
function overTheWire(frame: DataFrameOut): DataFrame {
  return dataMethod.requestDeserialize(dataMethod.requestSerialize(frame)) as DataFrame;
}

export class LocalPipeline extends EventEmitter<PipelineEvents> implements PipelinePort {
  private handlers: ResultHandler[] = [];
  private inbound: ReturnType<Stage["newAssembler"]> | undefined;
  private lostNode: LostNode | undefined;
  private closed = false;
  /** Assemblies from prefix-cache blocks the scheduler asked for, to check prefix reuse. */
  assemblies = 0;
  /** The prefix cache's block calls on every stage's own block host (RAM only: no disk in process). */
  readonly blocks: BlockPort;

  private constructor(
    readonly plan: PipelinePlan,
    private readonly engines: Engine[],
    private readonly stages: Stage[],
    readonly kvBytesPerToken: number[],
  ) {
    super();
    const hosts = stages.map(
      (stage, i) =>
        new BlockHost({ engine: engines[i], stage, layerStart: plan.stages[i].layerStart, log: () => {} }),
    );
    this.blocks = {
      stash: async (seq: number, chain: KvBlock[], drop: string[]) => {
        await Promise.all(hosts.map((h) => h.stash(seq, chain, drop)));
      },
      assemble: async (newSeq: number, uses: BlockUse[]): Promise<StageAssembly[]> => {
        this.assemblies++;
        const outcomes = await Promise.allSettled(hosts.map((h) => h.assemble(newSeq, uses)));
        return outcomes.map((o) => (o.status === "fulfilled" ? o.value : { error: String(o.reason) }));
      },
      drop: async (hashes: string[]) => {
        await Promise.all(hosts.map((h) => h.drop(hashes)));
      },
      onDisk: () => () => {},
    };
  }

  /** Opens every stage of the plan on modelDir (one engine thread each) and wires them in order. */
  static async start(modelDir: string, plan: PipelinePlan): Promise<LocalPipeline> {
    const engines = await Promise.all(
      plan.stages.map((s) =>
        openEngine({
          modelDir,
          layerStart: s.layerStart,
          layerEnd: s.layerEnd,
          embed: s.embed,
          head: s.head,
          threads: 1,
          // The plan's backend when it names one (as LoadShard passes it to the node), else the engine's auto.
          backend: plan.backend === "mlx" || plan.backend === "cpu" ? plan.backend : undefined,
        }),
      ),
    );
    const stages: Stage[] = [];
    let pipeline: LocalPipeline | undefined;
    engines.forEach((engine, i) => {
      const stats = engine.stats();
      // One reassembler per link, as one inbound stream has one.
      let assembler: ReturnType<Stage["newAssembler"]> | undefined;
      const sink: FrameSink = {
        write: (frames) => {
          const downstream = stages[i + 1];
          if (!downstream) {
            for (const frame of frames) pipeline?.deliver(overTheWire(frame));
            return;
          }
          assembler ??= downstream.newAssembler();
          for (const frame of frames) downstream.accept(overTheWire(frame), assembler);
        },
      };
      stages.push(
        new Stage(
          engine,
          {
            planId: plan.planId,
            stageIndex: i,
            stageCount: engines.length,
            embed: plan.stages[i].embed,
            head: plan.stages[i].head,
            hiddenSize: stats.hiddenSize,
            activationDtype: dtypeOfActivation(stats.activationDtype),
          },
          () => sink,
          () => {},
        ),
      );
    });
    pipeline = new LocalPipeline(
      plan,
      engines,
      stages,
      engines.map((e) => e.stats().kvBytesPerToken),
    );
    return pipeline;
  }

  get stageCount(): number {
    return this.stages.length;
  }

  get lost(): LostNode | undefined {
    return this.lostNode;
  }

  /** Per stage: decode steps its engine built ahead that the next call used, or dropped (mlx only). */
  stepsAhead(): Array<{ used: number; dropped: number }> {
    return this.engines.map((e) => {
      const stats = e.stats() as Partial<NativeEngineStats>;
      return { used: stats.stepsAheadUsed ?? 0, dropped: stats.stepsAheadDropped ?? 0 };
    });
  }

  /** Sequences, their KV bytes and the prefix cache's block bytes each stage's engine holds now. */
  held(): Array<{ sequences: number; kvBytes: number; blockBytes: number }> {
    return this.engines.map((e) => ({
      sequences: e.stats().sequences,
      kvBytes: e.stats().kvBytes,
      blockBytes: e.stats().blockBytes,
    }));
  }

  onResult(handler: ResultHandler): () => void {
    this.handlers = [...this.handlers, handler];
    return () => {
      this.handlers = this.handlers.filter((h) => h !== handler);
    };
  }

  private deliver(frame: DataFrame): void {
    if (this.closed) return;
    for (const handler of this.handlers) handler(frame);
  }

  send(frames: DataFrameOut[]): boolean {
    if (this.closed || this.lostNode) return false;
    this.inbound ??= this.stages[0].newAssembler();
    for (const frame of frames) this.stages[0].accept(overTheWire(frame), this.inbound);
    return true;
  }

  async release(seqs: number[]): Promise<void> {
    if (this.closed) return;
    await Promise.all(this.stages.map((s) => s.release(seqs)));
  }

  async cancel(seqs: number[]): Promise<void> {
    if (this.closed) return;
    for (const stage of this.stages) stage.cancel(seqs);
  }

  /** Stage i's node stops answering: the pipeline is lost, as a missed heartbeat would make it. */
  lose(stageIndex: number, reason = "no heartbeat for 3000 ms"): void {
    if (this.lostNode || this.closed) return;
    const stage = this.plan.stages[stageIndex];
    this.lostNode = { stageIndex, nodeId: stage.nodeId, name: stage.name, address: stage.address, reason };
    this.emit("nodeLost", this.lostNode);
  }

  /** Every stage runs in this process: its memory figures are this machine's, as a node's heartbeat has them. */
  statuses(): Map<number, NodeStatus> {
    const memory = { memory_total: totalmem(), memory_used: totalmem() - freemem() };
    return new Map(this.engines.map((_, i) => [i, { ...idleStatus(`stage-${i}`), ...memory }]));
  }

  describeLoss(): string | undefined {
    return this.lostNode && describeLoss(this.lostNode);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const stage of this.stages) stage.close();
    for (const engine of this.engines) void engine.close();
    this.emit("closed");
  }
}

/** A heartbeat with nothing in it but the node's id (the caller adds the figures it reports). */
function idleStatus(nodeId: string): NodeStatus {
  return {
    node_id: nodeId,
    time_us: Date.now() * 1000,
    plan_id: "",
    loaded: true,
    layer_start: 0,
    layer_end: 0,
    embed: false,
    head: false,
    tokens_per_s: 0,
    busy_fraction: 0,
    queue_depth: 0,
    kv_bytes: 0,
    weight_bytes: 0,
    memory_used: 0,
    memory_total: 0,
    sequences: 0,
    inbound_hop_p50_us: 0,
    inbound_hop_p99_us: 0,
    batches: 0,
    mean_batch_items: 0,
    backend: "cpu",
    inbound_hop_count: 0,
    cache_ram_bytes: 0,
    cache_disk_bytes: 0,
    cache_disk_budget_bytes: 0,
    cache_ram_hit_tokens: 0,
    cache_disk_hit_tokens: 0,
    prompt_tokens_computed: 0,
  };
}
