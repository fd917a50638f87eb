// The node agent: a gRPC StudioNode server around this node's one engine shard. Every call must carry the
// cluster key. LoadShard opens the shard the plan asks for (from the node's own model directory), wires the
// stage to its downstream neighbour, and from then on Data frames flow through the stage.
import { cpus, freemem, totalmem } from "node:os";
import * as grpc from "@grpc/grpc-js";
import type { BackendChoice, Engine } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import { packageVersion } from "../common/paths.js";
import { clusterKeyProblem, unauthenticatedStatus } from "../common/wire/auth.js";
import { dtypeOfActivation, nowUs } from "../common/wire/frames.js";
import { serverOptions, studioNodeService } from "../common/wire/proto.js";
import { serverCredentials } from "../common/wire/tls.js";
import {
  type CancelReply,
  type DataFrame,
  type DataFrameOut,
  type ForkRequest,
  FrameKind,
  type HelloReply,
  type HelloRequest,
  type LoadProgress,
  type LoadShardRequest,
  type NodeStatus,
  type ReleaseReply,
  type ResultsRequest,
  type SeqsRequest,
  type StatusRequest,
} from "../common/wire/types.js";
import { availableBackends, measureMemoryBandwidth, mlxInfo, openEngine } from "../native/index.js";
import { CapabilityReader } from "./capabilities.js";
import { DownstreamLink } from "./downstream.js";
import { type FrameSink, Stage, type StageCounters } from "./stage.js";

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
  /** Backends this node can run (default: cpu, plus mlx on macOS arm64 when the engine offers it). */
  backends?: string[];
  /** Measured memory bandwidth, bytes/s (0 or absent: the chip table). */
  memoryBandwidthBps?: number;
  log?: (line: string) => void;
  /**
   * A node of our cluster said Hello (it passed the key check): where it listens, so membership can track a
   * node that found us through `--peer` while we did not know it.
   */
  onPeerHello?: (peer: { nodeId: string; clusterId: string; address: string }) => void;
}

export interface NodeAgent {
  port: number;
  close(): Promise<void>;
}

interface Shard {
  request: LoadShardRequest;
  engine: Engine;
  stage: Stage;
  downstream?: DownstreamLink;
  weightBytes: number;
  backend: string;
}

/** What every server call offers (grpc-js does not export its own name for it). */
interface SurfaceCall {
  readonly metadata: grpc.Metadata;
  getPeer(): string;
}

type ServerStream<Req, Res> = grpc.ServerWritableStream<Req, Res>;
type Duplex = grpc.ServerDuplexStream<DataFrame, DataFrameOut>;

/** Big enough to defeat caches, small enough to take a fraction of a second. */
const bandwidthProbeBytes = 128 * 1024 * 1024;

/** Progress messages are throttled: a bar needs a few updates a second, not one per tensor. */
const progressIntervalMs = 100;

class NodeAgentServer {
  private readonly opts: NodeAgentOptions;
  private readonly log: (line: string) => void;
  private readonly capabilities: CapabilityReader;
  private readonly server = new grpc.Server(serverOptions);
  private shard: Shard | undefined;
  private loading: Promise<void> = Promise.resolve();
  /** Results subscribers of the current plan (normally one: the coordinator). */
  private readonly results = new Set<ServerStream<ResultsRequest, DataFrameOut>>();
  private readonly statusTimers = new Set<NodeJS.Timeout>();
  private readonly openCalls = new Set<{ end(): void }>();
  port = 0;

  constructor(opts: NodeAgentOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => console.error(`[node-agent ${opts.name}] ${line}`));
    this.capabilities = new CapabilityReader({
      modelDir: opts.modelDir,
      backends: opts.backends ?? this.nativeBackends(),
      measuredBandwidthBps: opts.memoryBandwidthBps ?? 0,
    });
    if (this.capabilities.problem) this.log(`model not usable: ${this.capabilities.problem}`);
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
    this.server.addService(studioNodeService(), {
      Hello: this.unary("Hello", (req: HelloRequest, call) => this.hello(req, call.getPeer())),
      Release: this.unary("Release", (req: SeqsRequest) => this.release(req)),
      Cancel: this.unary("Cancel", (req: SeqsRequest) => this.cancel(req)),
      Fork: this.unary("Fork", (req: ForkRequest) => this.fork(req)),
      LoadShard: this.stream("LoadShard", (call: ServerStream<LoadShardRequest, LoadProgress>) =>
        this.loadShard(call),
      ),
      Status: this.stream("Status", (call: ServerStream<StatusRequest, NodeStatus>) => this.status(call)),
      Results: this.stream("Results", (call: ServerStream<ResultsRequest, DataFrameOut>) =>
        this.subscribe(call),
      ),
      Data: this.stream("Data", (call: Duplex) => this.data(call)),
    });
    const host = this.opts.grpcHost ?? "127.0.0.1";
    const address = `${host.includes(":") ? `[${host}]` : host}:${this.opts.grpcPort ?? 0}`;
    this.port = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(address, serverCredentials(), (err, port) => {
        if (err) reject(new Error(`node agent cannot listen on ${address}: ${err.message}`));
        else resolve(port);
      });
    });
    return this.port;
  }

  // ------------------------------------------------------------ authentication wrappers

  private refused(method: string, call: SurfaceCall): grpc.ServiceError | undefined {
    const problem = clusterKeyProblem(call.metadata, this.opts.clusterKey);
    if (!problem) return undefined;
    this.log(`refused ${method} from ${call.getPeer()}: ${problem}`);
    return unauthenticatedStatus(problem);
  }

  private unary<Req, Res>(
    method: string,
    body: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const refusal = this.refused(method, call);
      if (refusal) {
        callback(refusal);
        return;
      }
      body(call.request, call).then(
        (reply) => callback(null, reply),
        (err) => callback(asStatus(err)),
      );
    };
  }

  private stream<C extends SurfaceCall & NodeJS.EventEmitter>(
    method: string,
    body: (call: C) => void,
  ): (call: C) => void {
    return (call) => {
      const refusal = this.refused(method, call);
      if (refusal) {
        call.emit("error", refusal);
        return;
      }
      try {
        body(call);
      } catch (err) {
        call.emit("error", asStatus(err));
      }
    };
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
      plan_id: this.shard?.request.plan_id ?? "",
    };
  }

  private loadShard(call: ServerStream<LoadShardRequest, LoadProgress>): void {
    const req = call.request;
    const problem = this.loadProblem(req);
    if (problem) {
      call.emit("error", status(grpc.status.INVALID_ARGUMENT, problem));
      return;
    }
    call.on("error", (err) => this.log(`LoadShard call failed: ${errorMessage(err)}`));
    // One load at a time: a second plan waits for the first to finish, then replaces it. A caller that went
    // away does not stop the load: the shard is what the plan asked for either way.
    this.loading = this.loading.then(() =>
      this.openShard(req, call).then(
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
          call.emit("error", status(grpc.status.INTERNAL, message));
        },
      ),
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

  private async openShard(
    req: LoadShardRequest,
    call: ServerStream<LoadShardRequest, LoadProgress>,
  ): Promise<LoadProgress> {
    await this.closeShard();
    let lastProgress = 0;
    const engine = await openEngine({
      modelDir: this.opts.modelDir,
      layerStart: req.layer_start,
      layerEnd: req.layer_end,
      embed: req.embed,
      head: req.head,
      backend: (req.backend || this.opts.backend || "auto") as BackendChoice,
      threads: req.threads || this.opts.threads,
      onProgress: (bytesRead, bytesTotal) => {
        const now = Date.now();
        if (now - lastProgress < progressIntervalMs && bytesRead < bytesTotal) return;
        lastProgress = now;
        if (!call.cancelled) call.write(progressMessage({ bytes_read: bytesRead, bytes_total: bytesTotal }));
      },
    });
    const stats = engine.stats();
    const downstream = req.head
      ? undefined
      : new DownstreamLink(req.downstream ?? "", this.opts.clusterKey, this.log);
    const sink: () => FrameSink | undefined = downstream ? () => downstream : () => this.resultsSink();
    const stage = new Stage(
      engine,
      {
        planId: req.plan_id,
        stageIndex: req.stage_index ?? 0,
        stageCount: req.stage_count ?? 1,
        embed: req.embed,
        head: req.head,
        hiddenSize: stats.hiddenSize,
        activationDtype: dtypeOfActivation(stats.activationDtype),
      },
      sink,
      this.log,
    );
    downstream?.open();
    this.shard = {
      request: req,
      engine,
      stage,
      downstream,
      weightBytes: stats.weightBytes,
      backend: stats.backend,
    };
    this.log(
      `plan ${req.plan_id}: layers ${req.layer_start}..${req.layer_end}${req.embed ? " +embed" : ""}${req.head ? " +head" : ""} on ${stats.backend}, ${stats.weightBytes} weight bytes${downstream ? `, downstream ${downstream.address}` : ""}`,
    );
    return progressMessage({
      bytes_read: stats.weightBytes,
      bytes_total: stats.weightBytes,
      done: true,
      weight_bytes: stats.weightBytes,
      activation_dtype: stats.activationDtype,
      hidden_size: stats.hiddenSize,
      backend: stats.backend,
      kv_bytes_per_token: stats.kvBytesPerToken,
    });
  }

  private async closeShard(): Promise<void> {
    const shard = this.shard;
    if (!shard) return;
    this.shard = undefined;
    shard.stage.close();
    shard.downstream?.close();
    for (const call of this.results) call.end();
    this.results.clear();
    await shard.engine.close();
  }

  private resultsSink(): FrameSink | undefined {
    if (this.results.size === 0) return undefined;
    return {
      write: (frames) => {
        for (const call of this.results) for (const frame of frames) call.write(frame);
      },
    };
  }

  private planProblem(planId: string): string | undefined {
    const current = this.shard?.request.plan_id;
    if (!current) return "this node holds no shard";
    if (planId && planId !== current) return `plan ${planId} is not this node's plan (${current})`;
    return undefined;
  }

  private async release(req: SeqsRequest): Promise<ReleaseReply> {
    const problem = this.planProblem(req.plan_id);
    if (problem) return { released: 0 };
    return { released: await this.shard!.stage.release(req.seqs) };
  }

  private async cancel(req: SeqsRequest): Promise<CancelReply> {
    const problem = this.planProblem(req.plan_id);
    if (problem) return { cancelled: 0 };
    return { cancelled: this.shard!.stage.cancel(req.seqs) };
  }

  /** Fork: a prefix-cache hit; refused (naming the problem) when it is not this node's plan. */
  private async fork(req: ForkRequest): Promise<Record<string, never>> {
    const problem = this.planProblem(req.plan_id);
    if (problem) throw status(grpc.status.FAILED_PRECONDITION, problem);
    try {
      await this.shard!.stage.fork(req.seq, req.new_seq, req.prefix_length);
    } catch (err) {
      throw status(grpc.status.INVALID_ARGUMENT, errorMessage(err));
    }
    return {};
  }

  private status(call: ServerStream<StatusRequest, NodeStatus>): void {
    const intervalMs = Math.max(50, call.request.interval_ms || 1000);
    const hopsSinceMs = (call.request.hops_since_us || 0) / 1000;
    let previous: { at: number; counters: StageCounters | undefined } = {
      at: performance.now(),
      counters: undefined,
    };
    const send = (): void => {
      const counters = this.shard?.stage.snapshot();
      const at = performance.now();
      call.write(this.nodeStatus(counters, previous.counters, at - previous.at, hopsSinceMs));
      previous = { at, counters };
    };
    send();
    const timer = setInterval(send, intervalMs);
    this.statusTimers.add(timer);
    this.openCalls.add(call);
    const stop = (): void => {
      clearInterval(timer);
      this.statusTimers.delete(timer);
      this.openCalls.delete(call);
    };
    call.on("cancelled", stop);
    call.on("close", stop);
    call.on("error", stop);
  }

  private nodeStatus(
    now: StageCounters | undefined,
    before: StageCounters | undefined,
    elapsedMs: number,
    hopsSinceMs: number,
  ): NodeStatus {
    const shard = this.shard;
    const sameStage = now && before && now.batches >= before.batches;
    const delta = (key: "tokens" | "busyMs" | "batches" | "items"): number =>
      now ? now[key] - (sameStage ? before[key] : now[key]) : 0;
    const seconds = Math.max(elapsedMs, 1) / 1000;
    const stats = shard?.engine.stats();
    const hops = shard?.stage.hopPercentiles(hopsSinceMs) ?? { p50: 0, p99: 0, count: 0 };
    const batches = delta("batches");
    return {
      node_id: this.opts.nodeId,
      time_us: nowUs(),
      plan_id: shard?.request.plan_id ?? "",
      loaded: shard !== undefined,
      layer_start: shard?.request.layer_start ?? 0,
      layer_end: shard?.request.layer_end ?? 0,
      embed: shard?.request.embed ?? false,
      head: shard?.request.head ?? false,
      tokens_per_s: delta("tokens") / seconds,
      busy_fraction: Math.min(1, delta("busyMs") / Math.max(elapsedMs, 1)),
      queue_depth: now?.queueDepth ?? 0,
      kv_bytes: stats?.kvBytes ?? 0,
      weight_bytes: shard?.weightBytes ?? 0,
      memory_used: totalmem() - freemem(),
      memory_total: totalmem(),
      sequences: now?.sequences ?? 0,
      inbound_hop_p50_us: hops.p50,
      inbound_hop_p99_us: hops.p99,
      batches: now?.batches ?? 0,
      mean_batch_items: batches > 0 ? delta("items") / batches : 0,
      backend: shard?.backend ?? "",
      inbound_hop_count: hops.count,
    };
  }

  // ------------------------------------------------------------ data plane

  private subscribe(call: ServerStream<ResultsRequest, DataFrameOut>): void {
    const problem = this.planProblem(call.request.plan_id);
    if (problem || !this.shard?.request.head) {
      call.emit(
        "error",
        status(grpc.status.FAILED_PRECONDITION, problem ?? "this node is not the last stage of the plan"),
      );
      return;
    }
    this.results.add(call);
    // Headers now tell the coordinator the subscription is registered, so no RESULT can precede it.
    call.sendMetadata(new grpc.Metadata());
    this.openCalls.add(call);
    const stop = (): void => {
      this.openCalls.delete(call);
      this.results.delete(call);
    };
    call.on("cancelled", stop);
    call.on("close", stop);
    call.on("error", stop);
  }

  private data(call: Duplex): void {
    const assembler = new FrameAssemblerRef();
    this.openCalls.add(call);
    call.on("data", (frame: DataFrame) => {
      const stage = this.shard?.stage;
      if (!stage) {
        call.write(refusal(frame, "this node holds no shard"));
        return;
      }
      try {
        stage.accept(frame, assembler.for(stage));
      } catch (err) {
        // accept() reports problems as ERROR frames; reaching here is a bug, which must not end the process.
        this.log(`frame of seq ${frame.seq} could not be handled: ${errorMessage(err)}`);
        call.write(refusal(frame, `frame could not be handled: ${errorMessage(err)}`, "internal"));
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

  async close(): Promise<void> {
    for (const timer of this.statusTimers) clearInterval(timer);
    this.statusTimers.clear();
    for (const call of this.openCalls) {
      try {
        call.end();
      } catch {
        // Already closed by the peer: nothing to end.
      }
    }
    this.openCalls.clear();
    await this.closeShard();
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

function refusal(frame: DataFrame, message: string, code = "cluster_not_ready"): DataFrameOut {
  return {
    kind: FrameKind.ERROR,
    seq: frame.seq,
    step: frame.step,
    error_code: code,
    error: message,
    sent_at_us: nowUs(),
  };
}

/** The host of a grpc-js peer string: "1.2.3.4:5678", "[::1]:5678", "ipv4:1.2.3.4:5678" or "ipv6:[::1]:5678". */
function peerHost(peer: string): string | undefined {
  const bare = peer.replace(/^ipv[46]:/, "");
  const v6 = /^\[([^\]]+)\]:\d+$/.exec(bare);
  if (v6) return v6[1].startsWith("::ffff:") ? v6[1].slice(7) : v6[1];
  const v4 = /^([^:]+):\d+$/.exec(bare);
  return v4?.[1];
}

function progressMessage(p: Partial<LoadProgress>): LoadProgress {
  return {
    bytes_read: 0,
    bytes_total: 0,
    done: false,
    weight_bytes: 0,
    activation_dtype: "",
    hidden_size: 0,
    backend: "",
    error: "",
    kv_bytes_per_token: 0,
    ...p,
  };
}

function status(code: grpc.status, message: string): grpc.ServiceError {
  const err = new Error(message) as grpc.ServiceError;
  err.code = code;
  err.details = message;
  err.metadata = new grpc.Metadata();
  return err;
}

function asStatus(err: unknown): grpc.ServiceError {
  return status(grpc.status.INTERNAL, errorMessage(err));
}

/** Starts the node agent's gRPC server; resolves once it listens. */
export async function startNodeAgent(opts: NodeAgentOptions): Promise<NodeAgent> {
  if (!opts.clusterKey) throw new Error("startNodeAgent: a cluster key is required");
  const agent = new NodeAgentServer(opts);
  const port = await agent.listen();
  agent.measureBandwidth();
  return { port, close: () => agent.close() };
}
