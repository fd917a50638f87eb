// The control loop every node runs: membership -> election -> (on the coordinator) plan -> pipeline ->
// scheduler. It keeps the answers the HTTP API needs: the generator (undefined while not serving), the
// coordinator's URL (when this node is not it) and the cluster's health.
//
// Changes of membership settle for `settleMs` before acting, so a burst (several nodes starting together)
// gives one plan. A lost node (heartbeat silence, or the pipeline's nodeLost) leaves membership, which brings
// a new plan on the rest if it fits, a clear cluster_not_ready state otherwise; a node that answers again is
// re-admitted and the next plan includes it.
import { networkInterfaces } from "node:os";
import type { BackendName } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import type { ModelFootprint } from "../coordinator/model-footprint.js";
import { describeLoss, type LostNode, Pipeline } from "../coordinator/pipeline.js";
import {
  describePlan,
  type Plan,
  type PlannerNode,
  type PlanStage,
  planLayers,
} from "../coordinator/planner.js";
import { Scheduler } from "../coordinator/scheduler.js";
import type { TokenGenerator } from "../coordinator/token-generator.js";
import { electCoordinator } from "./election.js";
import type { ClusterHealth, ClusterState, MemberHealth, PlanHealth } from "./health.js";
import type { Member, Membership } from "./membership.js";
import type { ClusterSnapshot } from "./snapshot.js";
import { SnapshotBuilder } from "./snapshot-builder.js";

export interface ControllerOptions {
  self: { nodeId: string; name: string; apiUrl: string };
  /** Host for the APIs of members on this machine (e.g. "127.0.0.1" when this node's API is on loopback). */
  localApiHost?: string;
  clusterId: string;
  clusterKey: string;
  version: string;
  modelId: string;
  footprint: ModelFootprint;
  contextTokens: number;
  /** Engine threads per stage (absent: each node's default). */
  threads?: number;
  /** Sequences generating at once; more wait (the scheduler's default when absent). */
  maxSequences?: number;
  /** Requests that may wait for a slot; more are refused with 429 (the scheduler's default when absent). */
  maxQueue?: number;
  membership: Membership;
  settleMs?: number;
  /** Delay before trying again after a failed load. */
  retryMs?: number;
  onProgress?(stage: PlanStage, bytesRead: number, bytesTotal: number): void;
  onStageLoaded?(stage: PlanStage, weightBytes: number): void;
  /** Called when the state or the coordinator changes, with a one-line summary. */
  onState?(line: string): void;
  log?: (line: string) => void;
}

interface Serving {
  plan: Plan;
  pipeline: Pipeline;
}

/**
 * KV kept per node for finished sequences (prefix reuse: OpenClaw resends its long system prompt every turn).
 * MiniMax M2.1 costs ~127 KB of KV per token on a node holding half the layers (bf16), so 4 GiB keeps ~33k
 * tokens: a couple of whole conversations.
 */
const prefixCacheBytesPerNode = 4 * 1024 ** 3;

export class ClusterController {
  private readonly opts: ControllerOptions;
  private readonly log: (line: string) => void;
  /** One scheduler for the node's life: it serves whichever pipeline is attached and explains when none is. */
  private readonly scheduler: Scheduler;
  private readonly snapshots = new SnapshotBuilder();
  private state: ClusterState = "planning";
  private message: string | undefined = "waiting for members";
  private coordinator: Member | undefined;
  private serving: Serving | undefined;
  private plan: Plan | undefined;
  private timer: NodeJS.Timeout | undefined;
  private dueAt = 0;
  private running = false;
  private again = false;
  private closed = false;
  private lastSummary = "";

  constructor(opts: ControllerOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => console.error(line));
    this.scheduler = new Scheduler({
      contextWindow: opts.contextTokens,
      maxSequences: opts.maxSequences,
      maxQueue: opts.maxQueue,
      prefixCacheBytesPerNode,
    });
    opts.membership.on("change", () => this.schedule(opts.settleMs ?? 500));
    this.schedule(0);
  }

  /**
   * The scheduler unless another node coordinates (then the API forwards). While no pipeline is loaded it
   * refuses requests with cluster_not_ready and the reason (e.g. the bytes a plan needs and the nodes have).
   */
  generator(): TokenGenerator | undefined {
    return this.state === "following" ? undefined : this.scheduler;
  }

  /** The coordinator's API base URL while another node coordinates. */
  coordinatorUrl(): string | undefined {
    if (this.state !== "following" || !this.coordinator) return undefined;
    return apiUrlOf(this.coordinator, this.opts.localApiHost);
  }

  currentPlan(): Plan | undefined {
    return this.plan;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.stopServing("this node is shutting down");
  }

  // ---------------------------------------------------------------- the loop

  /** Runs a reconcile after delayMs, unless one is already due sooner (a lost node's re-plan stays immediate). */
  private schedule(delayMs: number): void {
    if (this.closed) return;
    const dueAt = Date.now() + delayMs;
    if (this.timer && this.dueAt <= dueAt) return;
    clearTimeout(this.timer);
    this.dueAt = dueAt;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reconcileSerialized();
    }, delayMs);
    this.timer.unref();
  }

  /** One reconcile at a time; a change that arrives meanwhile runs one more afterwards. */
  private async reconcileSerialized(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      await this.reconcile();
    } catch (err) {
      this.setState("not_ready", `internal error while planning: ${errorMessage(err)}`);
    } finally {
      this.running = false;
      if (this.again && !this.closed) {
        this.again = false;
        this.schedule(0);
      }
    }
  }

  private async reconcile(): Promise<void> {
    if (this.closed) return;
    const live = this.opts.membership.live();
    const coordinator = electCoordinator(live);
    this.coordinator = coordinator;
    if (!coordinator) {
      this.stopServing("waiting for members");
      this.setState("planning", "waiting for members");
      return;
    }
    if (coordinator.nodeId !== this.opts.self.nodeId) {
      this.stopServing(`${coordinator.name} coordinates the cluster`);
      this.plan = undefined;
      this.setState("following", undefined);
      return;
    }
    await this.coordinate(live);
  }

  private async coordinate(live: Member[]): Promise<void> {
    const usable = live.filter((m) => this.holdsOurModel(m));
    let plan: Plan;
    try {
      plan = planLayers(this.opts.footprint, usable.map(toPlannerNode), {
        contextTokens: this.opts.contextTokens,
      });
    } catch (err) {
      this.stopServing(errorMessage(err));
      this.plan = undefined;
      this.setState("not_ready", errorMessage(err));
      return;
    }
    if (this.serving && samePlan(this.serving.plan, plan)) return;
    this.stopServing(`a new plan is loading: ${describePlan(plan)}`);
    this.plan = plan;
    this.setState("loading", `loading plan ${plan.planId}: ${describePlan(plan)}`);
    let pipeline: Pipeline;
    try {
      // A node that leaves membership while loading fails the start (its LoadShard would otherwise hang it).
      pipeline = await Pipeline.start({
        plan,
        clusterKey: this.opts.clusterKey,
        liveness: this.opts.membership,
        threads: this.opts.threads,
        modelId: this.opts.modelId,
        onProgress: (i, p) => {
          this.snapshots.progress(plan.stages[i].nodeId, p.bytes_read, p.bytes_total);
          this.opts.onProgress?.(plan.stages[i], p.bytes_read, p.bytes_total);
        },
        log: this.log,
      });
    } catch (err) {
      const message = `loading plan ${plan.planId} failed: ${errorMessage(err)}`;
      this.scheduler.detach(message);
      this.setState("not_ready", message);
      this.schedule(this.opts.retryMs ?? 3000);
      return;
    }
    this.snapshots.clearProgress();
    for (const stage of plan.stages) this.opts.onStageLoaded?.(stage, stage.weightBytes);
    if (this.closed || this.plan !== plan) {
      pipeline.close();
      return;
    }
    pipeline.once("nodeLost", (lost) => this.nodeLost(pipeline, lost));
    this.serving = { plan, pipeline };
    this.scheduler.attach(pipeline, kvBytesForSequences(plan));
    this.setState("ready", `serving with ${plan.stages.length} stage(s): ${describePlan(plan)}`);
  }

  /** The pipeline lost a node: the scheduler fails its sequences; membership drops the node; re-plan. */
  private nodeLost(pipeline: Pipeline, lost: LostNode): void {
    if (this.serving?.pipeline !== pipeline) return;
    this.serving = undefined;
    const message = describeLoss(lost);
    this.log(`controller: ${message}`);
    this.setState("not_ready", `${message}; re-planning`);
    this.opts.membership.markLost(lost.nodeId, message);
    this.schedule(0);
  }

  private holdsOurModel(member: Member): boolean {
    const model = member.capabilities.model;
    if (member.capabilities.model_present && model && model.id === this.opts.modelId) return true;
    this.log(
      `controller: ${member.name} (${member.nodeId}) holds ${model?.id ?? "no model"}, not ${this.opts.modelId}: left out of the plan`,
    );
    return false;
  }

  /** Takes the pipeline down (in-flight sequences fail with the reason; new requests are refused with it). */
  private stopServing(reason: string): void {
    this.serving = undefined;
    this.scheduler.detach(reason);
  }

  private setState(state: ClusterState, message: string | undefined): void {
    this.state = state;
    this.message = message;
    const who = this.coordinator ? `${this.coordinator.name} (${this.coordinator.nodeId})` : "none";
    const summary = `state ${state}; coordinator ${who}${message ? `; ${message}` : ""}`;
    if (summary === this.lastSummary) return;
    this.lastSummary = summary;
    this.opts.onState?.(summary);
  }

  // ---------------------------------------------------------------- health

  /** The live picture for the dashboard and /metrics (coordinator/cluster-snapshot.ts). */
  snapshot(): ClusterSnapshot {
    return this.snapshots.build(this.health(), this.opts.footprint.numLayers);
  }

  /** What GET /health answers and `cluster status` prints. */
  health(): ClusterHealth {
    const coordinator = this.coordinator;
    const selfIsCoordinator = coordinator?.nodeId === this.opts.self.nodeId;
    const now = Date.now();
    const members = this.opts.membership
      .live()
      .map((m) => memberHealth(m, coordinator?.nodeId, now, this.opts.localApiHost));
    const ok = this.state === "ready" || (this.state === "following" && coordinator !== undefined);
    return {
      ok,
      state: this.state,
      message: this.message,
      clusterId: this.opts.clusterId,
      modelId: this.opts.modelId,
      version: this.opts.version,
      node: {
        id: this.opts.self.nodeId,
        name: this.opts.self.name,
        role: selfIsCoordinator ? "coordinator" : "node",
        apiUrl: this.opts.self.apiUrl,
      },
      coordinator: coordinator
        ? {
            id: coordinator.nodeId,
            name: coordinator.name,
            apiUrl: coordinator.self ? this.opts.self.apiUrl : apiUrlOf(coordinator, this.opts.localApiHost),
          }
        : undefined,
      members,
      plan: this.plan ? planHealth(this.plan) : undefined,
    };
  }
}

function hostOf(address: string): string {
  const i = address.lastIndexOf(":");
  return i > 0 ? address.slice(0, i) : address;
}

/** This machine's own addresses (loopback included): members at one of them run on this machine. */
function localAddresses(): Set<string> {
  const all = Object.values(networkInterfaces()).flatMap((list) => list ?? []);
  return new Set(["localhost", ...all.map((a) => a.address)]);
}

/**
 * A member's HTTP API. Hello gives its port, not the address its API listens on: a member on another machine is
 * reached at its gRPC host (its API must listen beyond loopback, which requires an API key); one on this machine
 * at `localApiHost` when given (nodes of one machine listening on loopback, the default).
 */
function apiUrlOf(member: Member, localApiHost: string | undefined): string | undefined {
  if (!member.apiPort) return undefined;
  const host = hostOf(member.address);
  const local = localApiHost !== undefined && localAddresses().has(host.replace(/^\[|\]$/g, ""));
  return `http://${local ? localApiHost : host}:${member.apiPort}`;
}

/** Memory a node can give a new shard: what is free plus what its current shard holds (LoadShard replaces it). */
function availableMemory(member: Member): number {
  const caps = member.capabilities;
  const status = member.status;
  if (!status) return caps.memory_free;
  const free = Math.max(0, status.memory_total - status.memory_used);
  return free + status.weight_bytes + status.kv_bytes;
}

export function toPlannerNode(member: Member): PlannerNode {
  const caps = member.capabilities;
  return {
    nodeId: member.nodeId,
    name: member.name,
    address: member.address,
    memoryAvailableBytes: availableMemory(member),
    memoryTotalBytes: caps.memory_total,
    memoryBandwidthBps: caps.memory_bandwidth_bps,
    chip: caps.chip,
    backends: caps.backends.filter((b): b is BackendName => b === "cpu" || b === "mlx"),
  };
}

/** Same nodes at the same addresses with the same ranges and backend: nothing to reload. */
function samePlan(a: Plan, b: Plan): boolean {
  if (a.backend !== b.backend || a.stages.length !== b.stages.length) return false;
  return a.stages.every((s, i) => {
    const t = b.stages[i];
    return (
      s.nodeId === t.nodeId &&
      s.address === t.address &&
      s.layerStart === t.layerStart &&
      s.layerEnd === t.layerEnd
    );
  });
}

function memberHealth(
  m: Member,
  coordinatorId: string | undefined,
  now: number,
  localApiHost: string | undefined,
): MemberHealth {
  const status = m.status;
  const caps = m.capabilities;
  return {
    id: m.nodeId,
    name: m.name,
    address: m.address,
    role: m.nodeId === coordinatorId ? "coordinator" : "node",
    apiUrl: apiUrlOf(m, localApiHost),
    chip: caps.chip,
    cores: caps.cores,
    backends: caps.backends,
    memoryTotalBytes: status?.memory_total || caps.memory_total,
    memoryUsedBytes: status?.memory_used ?? caps.memory_total - caps.memory_free,
    memoryBandwidthBps: caps.memory_bandwidth_bps,
    planId: status?.plan_id ?? m.helloPlanId,
    loaded: status?.loaded ?? false,
    layerStart: status?.loaded ? status.layer_start : undefined,
    layerEnd: status?.loaded ? status.layer_end : undefined,
    tokensPerSecond: status?.tokens_per_s ?? 0,
    busyFraction: status?.busy_fraction ?? 0,
    queueDepth: status?.queue_depth ?? 0,
    kvBytes: status?.kv_bytes ?? 0,
    weightBytes: status?.weight_bytes ?? 0,
    inboundHopP50Us: status?.inbound_hop_p50_us ?? 0,
    lastSeenMs: now - m.lastSeen,
  };
}

function planHealth(plan: Plan): PlanHealth {
  return {
    planId: plan.planId,
    backend: plan.backend,
    contextTokens: plan.contextTokens,
    numLayers: plan.numLayers,
    stages: plan.stages.map((s) => ({
      nodeId: s.nodeId,
      name: s.name,
      address: s.address,
      layerStart: s.layerStart,
      layerEnd: s.layerEnd,
      embed: s.embed,
      head: s.head,
      weightBytes: s.weightBytes,
      kvReserveBytes: s.kvReserveBytes,
      needBytes: s.needBytes,
      availableBytes: s.availableBytes,
    })),
  };
}

/**
 * KV bytes each stage can give to sequences in flight: the memory the plan found free, less the stage's
 * weights, headroom and prefix cache, and never less than the plan's reserve of one full context.
 */
export function kvBytesForSequences(plan: Plan): number[] {
  return plan.stages.map((s) =>
    Math.max(s.kvReserveBytes, s.availableBytes - s.weightBytes - s.headroomBytes - prefixCacheBytesPerNode),
  );
}
