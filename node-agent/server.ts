// The node agent: a gRPC StudioNode server around this node's one engine shard (shard.ts). Every call must
// carry the cluster key (grpc-surface.ts). This file is the glue: it maps each method onto the shard, the Status
// stream onto node-status.ts, and inbound Data frames onto the shard's stage.

import { cpus } from "node:os";
import * as grpc from "@grpc/grpc-js";
import {
  type CoordinatorEpoch,
  type CoordinatorView,
  describeEpoch,
  epochOf,
  judgeLoadShard,
} from "../common/coordinator-epoch.js";
import type { BackendChoice, KvDtype, MatmulInputs } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import { packageVersion } from "../common/paths.js";
import { withBodyDigests } from "../common/wire/auth.js";
import { nowUs } from "../common/wire/frames.js";
import { listenNodeServer, type NodeListener } from "../common/wire/listen.js";
import { serverOptions, studioNodeService } from "../common/wire/proto.js";
import { type EncodedTensorChunk, withTensorChunkCodec } from "../common/wire/tensor-chunk.js";
import type {
  AssembleBlocksRequest,
  BlockEvents,
  CancelReply,
  DataFrame,
  DataFrameOut,
  DropBlocksRequest,
  FetchTensorsRequest,
  ForkRequest,
  HelloReply,
  HelloRequest,
  LoadProgress,
  LoadShardRequest,
  MemberRef,
  NodeStatus,
  RelayHttpChunk,
  RelayHttpRequest,
  ReleaseReply,
  ResultsRequest,
  SeqsRequest,
  StashBlocksRequest,
  StatusRequest,
  TensorChunk,
  WatchBlocksRequest,
} from "../common/wire/types.js";
import { availableBackends, measureMemoryBandwidth, mlxInfo } from "../native/index.js";
import type { HubEnv } from "../weights/hub-env.js";
import { assembleBlocks, dropBlocks, stashBlocks, watchBlocks } from "./block-calls.js";
import { CapabilityReader } from "./capabilities.js";
import { grpcStatus, KeyedSurface, peerHost, refusalFrame } from "./grpc-surface.js";
import { type HttpRelayTarget, relayHttp } from "./http-relay.js";
import { StatusReporter } from "./node-status.js";
import { progressMessage, ShardHost } from "./shard.js";
import type { Stage } from "./stage.js";
import { TensorSource } from "./tensor-source.js";
import { WeightFetcher } from "./weight-fetch.js";

export interface NodeAgentOptions {
  /** The node's own model directory: the only model it ever loads. */
  modelDir: string;
  /** Default 127.0.0.1. */
  grpcHost?: string;
  /** 0 = any free port. */
  grpcPort?: number;
  clusterKey: string;
  nodeId: string;
  name: string;
  apiPort?: number;
  clusterId: string;
  backend?: BackendChoice;
  /** Engine threads when LoadShard names none (default: the engine's own default). */
  threads?: number;
  /** The cpu backend's precision mode for every shard this node opens (default: "default"). */
  matmulInputs?: MatmulInputs;
  /** What the cpu backend's KV cache stores (OpenOptions.kvDtype). */
  kvDtype?: KvDtype;
  /** Backends this node can run (default: cpu, plus mlx on macOS arm64 when the engine offers it). */
  backends?: string[];
  /** Measured memory bandwidth, bytes/s (0 or absent: the chip table). */
  memoryBandwidthBps?: number;
  /** The prefix cache's disk tier: this node's own cache folder (absent: RAM only). */
  cacheDir?: string;
  /** Disk bytes the cached blocks may take (absent: half of the free space). */
  cacheDiskBytes?: number;
  log?: (line: string) => void;
  /** Hub settings for layers no peer holds (a partial checkpoint of a hub model); absent: peers only. */
  hubEnv?: HubEnv;
  /** Cap on the bytes per second this node sends to peers fetching weights from it (absent: none). */
  maxPushBytesPerSecond?: number;
  /**
   * A node of our cluster said Hello (it passed the key check): where it listens, so membership can track a
   * node that found us through `--peer` while we did not know it.
   */
  onPeerHello?: (peer: { nodeId: string; clusterId: string; address: string }) => void;
  /** The live members this node knows, gossiped in every NodeStatus (absent: none are listed). */
  gossip?: () => MemberRef[];
  /**
   * This node's membership and election, which LoadShard from a new coordinator is judged against
   * (common/coordinator-epoch.ts); absent (a bare agent): only the terms decide.
   */
  coordinatorView?: CoordinatorView;
  /**
   * This process's HTTP API, for RelayHttp (a follower's requests); absent: RelayHttp answers UNIMPLEMENTED.
   * Set by `cluster up`, where the API and this agent share one process.
   */
  httpRelay?: HttpRelayTarget;
}

export interface NodeAgent {
  port: number;
  /** The gossiped member list changed: every Status stream sends a NodeStatus now rather than at its tick. */
  membersChanged(): void;
  close(): Promise<void>;
}

type ServerStream<Req, Res> = grpc.ServerWritableStream<Req, Res>;
type Duplex = grpc.ServerDuplexStream<DataFrame, DataFrameOut>;

/** Big enough to defeat caches, small enough to take a fraction of a second. */
const bandwidthProbeBytes = 128 * 1024 * 1024;

class NodeAgentServer {
  private readonly opts: NodeAgentOptions;
  private readonly log: (line: string) => void;
  private readonly capabilities: CapabilityReader;
  private readonly server = new grpc.Server(serverOptions);
  private readonly shards: ShardHost;
  private readonly tensorSource: TensorSource;
  private readonly statusTimers = new Set<NodeJS.Timeout>();
  /** Sends one NodeStatus now on each open Status stream. */
  private readonly statusSenders = new Set<() => void>();
  private readonly openCalls = new Set<{ end(): void }>();
  private listener: NodeListener | undefined;
  /** The coordinator whose LoadShard this node accepted last: it serves that one until a newer epoch wins. */
  private served: CoordinatorEpoch | undefined;
  port = 0;

  constructor(opts: NodeAgentOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => console.error(`[node-agent ${opts.name}] ${line}`));
    this.capabilities = new CapabilityReader({
      modelDir: opts.modelDir,
      backends: opts.backends ?? this.nativeBackends(),
      measuredBandwidthBps: opts.memoryBandwidthBps ?? 0,
      mlxRecommendedWorkingSetBytes: this.mlxRecommendedWorkingSet(),
      cpuKvDtype: opts.kvDtype,
    });
    if (this.capabilities.problem) this.log(`model not usable: ${this.capabilities.problem}`);
    const model = () => this.capabilities.modelInfo;
    this.shards = new ShardHost({
      modelDir: opts.modelDir,
      clusterKey: opts.clusterKey,
      backend: opts.backend,
      threads: opts.threads,
      matmulInputs: opts.matmulInputs,
      kvDtype: opts.kvDtype,
      fetcher: new WeightFetcher({
        modelDir: opts.modelDir,
        modelId: () => model()?.id ?? "",
        fingerprint: () => model()?.fingerprint ?? "",
        clusterKey: opts.clusterKey,
        hubEnv: opts.hubEnv,
        log: this.log,
      }),
      onWeightsChanged: () => this.capabilities.refresh(),
      cacheDir: opts.cacheDir,
      cacheDiskBytes: opts.cacheDiskBytes,
      log: this.log,
    });
    this.tensorSource = new TensorSource({
      modelDir: opts.modelDir,
      model,
      maxBytesPerSecond: opts.maxPushBytesPerSecond,
      log: this.log,
    });
  }

  /** MLX's recommended GPU working set, where the addon has MLX and MLX reports one (Metal). */
  private mlxRecommendedWorkingSet(): number | undefined {
    try {
      return mlxInfo()?.maxRecommendedWorkingSetBytes;
    } catch {
      return undefined; // no addon: nativeBackends() says so
    }
  }

  private nativeBackends(): string[] {
    try {
      // Offer mlx to the planner only where it computes on a GPU (the engine's "auto" rule): a CPU-only MLX
      // build is many times slower than the cpu backend.
      return availableBackends().filter((b) => b !== "mlx" || mlxInfo()?.device === "gpu");
    } catch (err) {
      this.log(`engine addon unavailable: ${errorMessage(err)}`);
      return [];
    }
  }

  /** Measures memory bandwidth once, off the event loop; Hello reports the chip table's figure until then. */
  measureBandwidth(): void {
    if (this.opts.memoryBandwidthBps) return;
    measureMemoryBandwidth(Math.max(1, cpus().length), bandwidthProbeBytes).then(
      (bps) => this.capabilities.setMeasuredBandwidth(bps),
      (err) => this.log(`memory bandwidth probe failed (the chip table decides): ${errorMessage(err)}`),
    );
  }

  async listen(): Promise<number> {
    const surface = new KeyedSurface(
      { clusterKey: this.opts.clusterKey, nodeId: this.opts.nodeId },
      this.log,
    );
    this.server.addService(withTensorChunkCodec(withBodyDigests(studioNodeService())), {
      Hello: surface.hello((req: HelloRequest, call) => this.hello(req, call.getPeer())),
      Release: surface.unary("Release", (req: SeqsRequest) => this.release(req)),
      Cancel: surface.unary("Cancel", async (req: SeqsRequest) => this.cancel(req)),
      Fork: surface.unary("Fork", (req: ForkRequest) => this.fork(req)),
      LoadShard: surface.stream("LoadShard", (call: ServerStream<LoadShardRequest, LoadProgress>) =>
        this.loadShard(call),
      ),
      Status: surface.stream("Status", (call: ServerStream<StatusRequest, NodeStatus>) => this.status(call)),
      Results: surface.stream("Results", (call: ServerStream<ResultsRequest, DataFrameOut>) =>
        this.subscribe(call),
      ),
      Data: surface.stream("Data", (call: Duplex) => this.data(call)),
      FetchTensors: surface.stream(
        "FetchTensors",
        (call: ServerStream<FetchTensorsRequest, TensorChunk | EncodedTensorChunk>) =>
          this.tensorSource.serve(call),
      ),
      StashBlocks: surface.unary("StashBlocks", (req: StashBlocksRequest) => stashBlocks(this.shards, req)),
      AssembleBlocks: surface.unary("AssembleBlocks", (req: AssembleBlocksRequest) =>
        assembleBlocks(this.shards, req),
      ),
      DropBlocks: surface.unary("DropBlocks", (req: DropBlocksRequest) => dropBlocks(this.shards, req)),
      WatchBlocks: surface.stream("WatchBlocks", (call: ServerStream<WatchBlocksRequest, BlockEvents>) =>
        watchBlocks(this.shards, call, this.openCalls),
      ),
      RelayHttp: surface.stream("RelayHttp", (call: ServerStream<RelayHttpRequest, RelayHttpChunk>) =>
        relayHttp(call, this.opts.httpRelay, this.log),
      ),
    });
    this.listener = await listenNodeServer(
      this.server,
      this.opts.grpcHost ?? "127.0.0.1",
      this.opts.grpcPort ?? 0,
      this.log,
    );
    this.port = this.listener.port;
    return this.port;
  }

  // ------------------------------------------------------------ control

  private async hello(req: HelloRequest, peer: string): Promise<HelloReply> {
    const host = peerHost(peer);
    if (req.grpc_port && req.node_id && host && req.node_id !== this.opts.nodeId)
      this.opts.onPeerHello?.({
        nodeId: req.node_id,
        clusterId: req.cluster_id ?? "",
        address: `${host.includes(":") ? `[${host}]` : host}:${req.grpc_port}`,
      });
    return {
      version: packageVersion(),
      node_id: this.opts.nodeId,
      name: this.opts.name,
      capabilities: this.capabilities.read(),
      api_port: this.opts.apiPort ?? 0,
      grpc_port: this.port,
      cluster_id: this.opts.clusterId,
      plan_id: this.shards.shard?.request.plan_id ?? "",
    };
  }

  private loadShard(call: ServerStream<LoadShardRequest, LoadProgress>): void {
    const req = call.request;
    const problem = this.loadProblem(req);
    if (problem) {
      call.emit("error", grpcStatus(grpc.status.INVALID_ARGUMENT, problem));
      return;
    }
    // One coordinator at a time: judged before anything is touched, so a refused call leaves the shard as it is.
    const offered = epochOf(req);
    const verdict = judgeLoadShard(this.served, offered, this.opts.coordinatorView);
    if (!verdict.accept || !offered) {
      const from = offered
        ? describeEpoch(offered)
        : `${peerHost(call.getPeer()) ?? call.getPeer()} without an epoch`;
      const message = `REFUSED LoadShard of plan ${req.plan_id} from ${from}: ${verdict.accept ? "no epoch" : verdict.reason}`;
      this.log(message);
      call.emit("error", grpcStatus(grpc.status.FAILED_PRECONDITION, message));
      return;
    }
    if (offered.coordinatorId !== this.served?.coordinatorId)
      this.log(`now serving ${describeEpoch(offered)} (was ${describeEpoch(this.served)})`);
    this.served = offered;
    call.on("error", (err) => this.log(`LoadShard call failed: ${errorMessage(err)}`));
    this.shards
      .load(req, (p) => {
        if (!call.cancelled) call.write(p);
      })
      .then(
        (done) => {
          if (call.cancelled) return;
          call.write(done);
          call.end();
        },
        (err) => {
          const message = `LoadShard (plan ${req.plan_id}, layers ${req.layer_start}..${req.layer_end}) failed: ${errorMessage(err)}`;
          this.log(message);
          if (call.cancelled) return;
          call.write(progressMessage({ error: message }));
          call.emit("error", grpcStatus(grpc.status.INTERNAL, message));
        },
      );
  }

  private loadProblem(req: LoadShardRequest): string | undefined {
    if (!req.plan_id) return "LoadShard needs a plan_id";
    if (this.capabilities.problem) return `this node's model cannot be used: ${this.capabilities.problem}`;
    const model = this.capabilities.modelInfo;
    if (req.model_id && model && req.model_id !== model.id)
      return `plan is for model ${req.model_id} but this node holds ${model.id}`;
    if (model && !(req.layer_start < req.layer_end && req.layer_end <= model.num_layers))
      return `layer range ${req.layer_start}..${req.layer_end} is not within 0..${model.num_layers}`;
    if (!req.head && !req.downstream) return "a stage that is not the last needs a downstream address";
    return undefined;
  }

  private async release(req: SeqsRequest): Promise<ReleaseReply> {
    return { released: await this.shards.release(req.plan_id, req.seqs) };
  }

  private cancel(req: SeqsRequest): CancelReply {
    return { cancelled: this.shards.cancel(req.plan_id, req.seqs) };
  }

  /** Fork: a prefix-cache hit; refused (naming the problem) when it is not this node's plan. */
  private async fork(req: ForkRequest): Promise<Record<string, never>> {
    const problem = this.shards.planProblem(req.plan_id);
    if (problem) throw grpcStatus(grpc.status.FAILED_PRECONDITION, problem);
    try {
      await this.shards.fork(req.seq, req.new_seq, req.prefix_length);
    } catch (err) {
      throw grpcStatus(grpc.status.INVALID_ARGUMENT, errorMessage(err));
    }
    return {};
  }

  private status(call: ServerStream<StatusRequest, NodeStatus>): void {
    const intervalMs = Math.max(50, call.request.interval_ms || 1000);
    const reporter = new StatusReporter(this.opts.nodeId, (call.request.hops_since_us || 0) / 1000);
    let figures = reporter.next(this.shards.shard);
    const write = (): void => {
      call.write({
        ...figures,
        time_us: nowUs(),
        members: this.opts.gossip?.() ?? [],
        coordinator_term: this.served?.term ?? 0,
        coordinator_id: this.served?.coordinatorId ?? "",
      });
    };
    const tick = (): void => {
      figures = reporter.next(this.shards.shard);
      write();
    };
    write();
    const timer = setInterval(tick, intervalMs);
    this.statusTimers.add(timer);
    // A push between ticks repeats the tick's figures (rates over a few ms would be noise) with the news.
    this.statusSenders.add(write);
    this.openCalls.add(call);
    const stop = (): void => {
      clearInterval(timer);
      this.statusTimers.delete(timer);
      this.statusSenders.delete(write);
      this.openCalls.delete(call);
    };
    call.on("cancelled", stop);
    call.on("close", stop);
    call.on("error", stop);
  }

  // ------------------------------------------------------------ data plane

  private subscribe(call: ServerStream<ResultsRequest, DataFrameOut>): void {
    const problem = this.shards.planProblem(call.request.plan_id);
    if (problem || !this.shards.shard?.request.head) {
      call.emit(
        "error",
        grpcStatus(grpc.status.FAILED_PRECONDITION, problem ?? "this node is not the last stage of the plan"),
      );
      return;
    }
    const unsubscribe = this.shards.subscribe(call);
    // Headers now tell the coordinator the subscription is registered, so no RESULT can precede it.
    call.sendMetadata(new grpc.Metadata());
    this.openCalls.add(call);
    const stop = (): void => {
      this.openCalls.delete(call);
      unsubscribe();
    };
    call.on("cancelled", stop);
    call.on("close", stop);
    call.on("error", stop);
  }

  private data(call: Duplex): void {
    const assembler = new FrameAssemblerRef();
    this.openCalls.add(call);
    call.on("data", (frame: DataFrame) => {
      const stage = this.shards.shard?.stage;
      if (!stage) {
        call.write(refusalFrame(frame, "this node holds no shard"));
        return;
      }
      try {
        stage.accept(frame, assembler.for(stage));
      } catch (err) {
        // accept() reports problems as ERROR frames; reaching here is a bug, which must not end the process.
        this.log(`frame of seq ${frame.seq} could not be handled: ${errorMessage(err)}`);
        call.write(refusalFrame(frame, `frame could not be handled: ${errorMessage(err)}`, "internal"));
      }
    });
    call.on("end", () => {
      this.openCalls.delete(call);
      call.end();
    });
    call.on("error", (err) => {
      this.openCalls.delete(call);
      this.log(`inbound data stream from ${call.getPeer()} failed: ${errorMessage(err)}`);
    });
  }

  membersChanged(): void {
    for (const send of this.statusSenders) send();
  }

  async close(): Promise<void> {
    for (const timer of this.statusTimers) clearInterval(timer);
    this.statusSenders.clear();
    this.statusTimers.clear();
    for (const call of this.openCalls) {
      try {
        call.end();
      } catch {
        // Already closed by the peer: nothing to end.
      }
    }
    this.openCalls.clear();
    this.listener?.close();
    await this.shards.close();
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }
}

/** One reassembler per inbound stream and stage; a new plan's stage starts with a clean one. */
class FrameAssemblerRef {
  private stage: Stage | undefined;
  private assembler: ReturnType<Stage["newAssembler"]> | undefined;

  for(stage: Stage): ReturnType<Stage["newAssembler"]> {
    if (this.stage !== stage || !this.assembler) {
      this.stage = stage;
      this.assembler = stage.newAssembler();
    }
    return this.assembler;
  }
}

/** Starts the node agent's gRPC server; resolves once it listens. */
export async function startNodeAgent(opts: NodeAgentOptions): Promise<NodeAgent> {
  if (!opts.clusterKey) throw new Error("startNodeAgent: a cluster key is required");
  const agent = new NodeAgentServer(opts);
  const port = await agent.listen();
  agent.measureBandwidth();
  return { port, membersChanged: () => agent.membersChanged(), close: () => agent.close() };
}
