// The control loop every node runs: membership -> election -> (on the coordinator) plan -> pipeline ->
// scheduler. It keeps the answers the HTTP API needs: the generator (undefined while not serving), the
// coordinator's URL (when this node is not it) and the cluster's health.
//
// Changes of membership settle for `settleMs` before acting, so a burst (several nodes starting together)
// gives one plan. A lost node (heartbeat silence, or the pipeline's nodeLost) leaves membership, which brings
// a new plan on the rest if it fits, a clear cluster_not_ready state otherwise; a node that answers again is
// re-admitted and the next plan includes it.

import { epochOf, nextTerm } from "../common/coordinator-epoch.js";
import type { BackendName } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import { NodeClient } from "../common/wire/client.js";
import { type CoordinatorRelay, nodeRelay, relayKey } from "../common/wire/http-relay.js";
import type { ModelFootprint } from "../coordinator/model-footprint.js";
import {
  describeLoss,
  type LostNode,
  type NodeLiveness,
  Pipeline,
  type PipelineOptions,
  type PipelinePort,
} from "../coordinator/pipeline.js";
import {
  describePlan,
  type Plan,
  type PlannerNode,
  type PlanStage,
  planLayers,
} from "../coordinator/planner.js";
import { Scheduler } from "../coordinator/scheduler.js";
import type { TokenGenerator } from "../coordinator/token-generator.js";
import { weightSources } from "../coordinator/weight-sources.js";
import { electCoordinator, seesUs } from "./election.js";
import { buildClusterHealth, type ClusterHealth, type ClusterState } from "./health.js";
import type { Member } from "./membership.js";
import { type ClusterSnapshot, snapshotOf } from "./snapshot.js";

/** What the controller reads of membership (cluster/membership.ts): the live members, their changes, and the
 * liveness the pipeline watches. */
export interface MemberSource extends NodeLiveness {
  live(): Member[];
  /** Members lost and not back (optional: test doubles may have none). */
  departed?(): Array<{ member: Member; lostAt: number; reason: string }>;
  get(nodeId: string): Member | undefined;
  /** The pipeline found the node dead: drop it now (membership probes it again later). */
  markLost(nodeId: string, reason: string): void;
  on(event: "change", listener: (members: Member[]) => void): unknown;
}

export interface ControllerOptions {
  self: { nodeId: string; name: string; apiUrl: string };
  /** Host for the APIs of members on this machine (e.g. "127.0.0.1" when this node's API is on loopback). */
  localApiHost?: string;
  clusterId: string;
  clusterKey: string;
  version: string;
  modelId: string;
  /** The model's tensor fingerprint (model-table.ts): members holding other tensors are left out. */
  fingerprint?: string;
  footprint: ModelFootprint;
  contextTokens: number;
  /** Engine threads per stage (absent: each node's default). */
  threads?: number;
  /** Sequences generating at once; more wait (the scheduler's default when absent). */
  maxSequences?: number;
  /** Requests that may wait for a slot; more are refused with 429 (the scheduler's default when absent). */
  maxQueue?: number;
  /** The prefix cache's RAM tier, bytes per node (absent: what the sequences in flight leave; 0: no cache). */
  prefixCacheRamBytes?: number;
  membership: MemberSource;
  /** Loads a plan's shards and wires them (default Pipeline.start: the nodes over gRPC). */
  startPipeline?: (options: PipelineOptions) => Promise<PipelinePort>;
  settleMs?: number;
  /**
   * How long a member with a smaller id that does not list us yet is waited for before this node coordinates
   * without it (default 3000 ms; see awaitSmallerMembers).
   */
  reachGraceMs?: number;
  /** Delay before trying again after a failed load. */
  retryMs?: number;
  onProgress?(stage: PlanStage, bytesRead: number, bytesTotal: number): void;
  /** A stage's node receives weights it lacks: bytes so far, of total, from source (an address or "hub"). */
  onFetchProgress?(stage: PlanStage, done: number, total: number, source: string): void;
  /** A stage's node received `bytes` of weights for this plan (only called when it fetched any). */
  onStageFetched?(stage: PlanStage, bytes: number, sources: string): void;
  onStageLoaded?(stage: PlanStage, weightBytes: number): void;
  /** Called when the state or the coordinator changes, with a one-line summary. */
  onState?(line: string): void;
  log?: (line: string) => void;
}

interface Serving {
  plan: Plan;
  pipeline: PipelinePort;
}

export class ClusterController {
  private readonly opts: ControllerOptions;
  private readonly log: (line: string) => void;
  /** One scheduler for the node's life: it serves whichever pipeline is attached and explains when none is. */
  private readonly scheduler: Scheduler;
  /** Shard load progress 0..1 by node id while a plan loads. */
  private readonly loadProgress = new Map<string, number>();
  /** Weight transfers under way, by node id, while a plan loads. */
  private readonly fetchProgress = new Map<
    string,
    { doneBytes: number; totalBytes: number; source: string }
  >();
  private state: ClusterState = "planning";
  private message: string | undefined = "waiting for members";
  private coordinator: Member | undefined;
  /** Our coordinator term while we coordinate without a break (common/coordinator-epoch.ts), else undefined. */
  private term: number | undefined;
  /** Loads refused in a row by a node serving another coordinator (they back off the retries). */
  private refusals = 0;
  private serving: Serving | undefined;
  private plan: Plan | undefined;
  private timer: NodeJS.Timeout | undefined;
  private dueAt = 0;
  private running = false;
  private again = false;
  private closed = false;
  private lastSummary = "";
  /** The relay to the coordinator this node follows, with its own gRPC channel (heartbeats stay on theirs). */
  private relayTo: { relay: CoordinatorRelay; client: NodeClient } | undefined;

  constructor(opts: ControllerOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => console.error(line));
    this.scheduler = new Scheduler({
      contextWindow: opts.contextTokens,
      maxSequences: opts.maxSequences,
      maxQueue: opts.maxQueue,
      // Prefix reuse (OpenClaw resends its long system prompt every turn): by default the RAM tier takes the KV
      // memory the sequences in flight leave, and yields it to them first.
      prefixCacheBytesPerNode: opts.prefixCacheRamBytes ?? "auto",
      log: (line) => this.log(line),
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

  /**
   * How this node's API reaches the coordinator while another node coordinates: RelayHttp over the gRPC plane
   * (api/forward.ts). One client per coordinator; a new coordinator closes the last one's (its relays in flight
   * were broken off already: they watch this).
   */
  coordinatorRelay(): CoordinatorRelay | undefined {
    if (this.state !== "following" || !this.coordinator || this.closed) return undefined;
    if (this.relayTo?.relay.key === relayKey(this.coordinator)) return this.relayTo.relay;
    this.relayTo?.client.close();
    const client = new NodeClient(this.coordinator.address, this.opts.clusterKey);
    this.relayTo = { relay: nodeRelay(client, this.coordinator), client };
    return this.relayTo.relay;
  }

  currentPlan(): Plan | undefined {
    return this.plan;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.relayTo?.client.close();
    this.relayTo = undefined;
    this.serving = undefined;
    // The prefix cache's last stashes reach the nodes (and their disks) before the pipeline closes.
    await this.scheduler.detach("this node is shutting down");
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
    // Only members that see us too (their gossiped member list names us) can take part: one coordinator per
    // group of mutually reachable nodes (election.ts).
    const reachable = this.reachable(this.opts.membership.live());
    const coordinator = electCoordinator(reachable);
    this.coordinator = coordinator;
    if (coordinator?.nodeId !== this.opts.self.nodeId) this.term = undefined;
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
    await this.coordinate(reachable);
  }

  /**
   * The live members that see us (election.ts). One that joined a moment ago and does not list us yet is most
   * likely still probing us back (it learned of us from our Hello or from gossip): it keeps the benefit of the
   * doubt for `reachGraceMs` after it joined, as it had before gossip, so a starting node follows the coordinator
   * at once instead of loading a plan of its own only to drop it a second later. When the grace ends, a reconcile
   * looks again.
   */
  private reachable(live: Member[]): Member[] {
    const grace = this.opts.reachGraceMs ?? 3000;
    const now = Date.now();
    const self = this.opts.self.nodeId;
    const pending = live.filter((m) => !seesUs(m, self) && now - m.joinedAt < grace);
    if (pending.length > 0)
      this.schedule(Math.max(50, Math.max(...pending.map((m) => m.joinedAt + grace - now))));
    return live.filter((m) => pending.includes(m) || seesUs(m, self));
  }

  private async coordinate(live: Member[]): Promise<void> {
    // Our term: one above any other coordinator's our members serve (kept while we coordinate), so they accept
    // our LoadShard once they elect us too (common/coordinator-epoch.ts).
    const term = nextTerm(
      this.term,
      this.opts.self.nodeId,
      live.map((m) => (m.status ? epochOf(m.status) : undefined)),
    );
    if (term !== this.term) this.log(`controller: coordinating under term ${term}`);
    this.term = term;
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
    let pipeline: PipelinePort;
    try {
      // A node that leaves membership while loading fails the start (its LoadShard would otherwise hang it).
      pipeline = await (this.opts.startPipeline ?? Pipeline.start)({
        plan,
        clusterKey: this.opts.clusterKey,
        liveness: this.opts.membership,
        epoch: { term, coordinatorId: this.opts.self.nodeId },
        threads: this.opts.threads,
        modelId: this.opts.modelId,
        sources: plan.stages.map((stage) =>
          weightSources(
            stage,
            usable.map((m) => ({ nodeId: m.nodeId, address: m.address, model: m.capabilities.model })),
          ),
        ),
        onProgress: (i, p) => {
          const stage = plan.stages[i];
          if (p.phase === "fetch") {
            const fetch = {
              doneBytes: p.fetch_bytes ?? 0,
              totalBytes: p.fetch_total ?? 0,
              source: p.fetch_source ?? "",
            };
            this.fetchProgress.set(stage.nodeId, fetch);
            this.loadProgress.set(
              stage.nodeId,
              fetch.totalBytes > 0 ? Math.min(1, fetch.doneBytes / fetch.totalBytes) : 0,
            );
            this.opts.onFetchProgress?.(stage, fetch.doneBytes, fetch.totalBytes, fetch.source);
            return;
          }
          this.fetchProgress.delete(stage.nodeId);
          const total = p.bytes_total;
          this.loadProgress.set(stage.nodeId, total > 0 ? Math.min(1, p.bytes_read / total) : 0);
          this.opts.onProgress?.(stage, p.bytes_read, p.bytes_total);
        },
        onLoaded: (i, done) => {
          if (done.fetch_bytes)
            this.opts.onStageFetched?.(plan.stages[i], done.fetch_bytes, done.fetch_source ?? "");
        },
        log: this.log,
      });
    } catch (err) {
      this.fetchProgress.clear();
      const message = `loading plan ${plan.planId} failed: ${errorMessage(err)}`;
      void this.scheduler.detach(message);
      this.setState("not_ready", message);
      // A node that serves another coordinator refuses us until that one is lost to it
      // (common/coordinator-epoch.ts): in a partial partition that may last, so retry less and less often (a
      // change of membership still re-plans at once).
      this.refusals = /REFUSED LoadShard/.test(message) ? this.refusals + 1 : 0;
      this.schedule((this.opts.retryMs ?? 3000) * 2 ** Math.min(3, Math.max(0, this.refusals - 1)));
      return;
    }
    this.refusals = 0;
    this.loadProgress.clear();
    this.fetchProgress.clear();
    for (const stage of plan.stages) this.opts.onStageLoaded?.(stage, stage.weightBytes);
    if (this.closed || this.plan !== plan) {
      pipeline.close();
      return;
    }
    pipeline.once("nodeLost", (lost) => this.nodeLost(pipeline, lost));
    this.serving = { plan, pipeline };
    this.scheduler.attach(
      pipeline,
      kvBytesForSequences(plan),
      plan.stages.map((s) => s.headroomBytes),
    );
    this.setState("ready", `serving with ${plan.stages.length} stage(s): ${describePlan(plan)}`);
  }

  /** The pipeline lost a node: the scheduler fails its sequences; membership drops the node; re-plan. */
  private nodeLost(pipeline: PipelinePort, lost: LostNode): void {
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
    const fingerprint = this.opts.fingerprint;
    if (fingerprint && model?.fingerprint && model.fingerprint !== fingerprint) {
      this.log(
        `controller: ${member.name} (${member.nodeId}) holds ${model.id} with other tensors (fingerprint ${model.fingerprint}, ours ${fingerprint}): left out of the plan`,
      );
      return false;
    }
    if (member.capabilities.model_present && model && model.id === this.opts.modelId) return true;
    this.log(
      `controller: ${member.name} (${member.nodeId}) holds ${model?.id ?? "no model"}, not ${this.opts.modelId}: left out of the plan`,
    );
    return false;
  }

  /** Takes the pipeline down (in-flight sequences fail with the reason; new requests are refused with it). */
  private stopServing(reason: string): void {
    this.serving = undefined;
    void this.scheduler.detach(reason);
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

  /** What GET /health answers and `cluster status` prints (health.ts). */
  health(): ClusterHealth {
    return buildClusterHealth({
      state: this.state,
      message: this.message,
      clusterId: this.opts.clusterId,
      modelId: this.opts.modelId,
      version: this.opts.version,
      numLayers: this.opts.footprint.numLayers,
      self: this.opts.self,
      coordinator: this.coordinator,
      members: this.opts.membership.live(),
      departed: this.opts.membership.departed?.(),
      plan: this.plan,
      loadProgress: this.loadProgress,
      fetchProgress: this.fetchProgress,
      localApiHost: this.opts.localApiHost,
    });
  }

  /** The live picture for the dashboard and /metrics (snapshot.ts); the API adds its request figures. */
  snapshot(): ClusterSnapshot {
    return snapshotOf(this.health());
  }
}

/**
 * Memory a node can give a new shard: what the OS counts as available, plus what its current shard holds that the
 * OS does not count there (LoadShard replaces it). The KV cache is anonymous memory; mlx copies the weights into
 * its own buffers, but the cpu backend reads them from the mapped file, whose pages the OS already counts as
 * reclaimable cache: adding them again counted them twice (a 25.3 GB machine reported 29.7 GB available).
 */
export function availableMemory(member: Member): number {
  const caps = member.capabilities;
  const status = member.status;
  if (!status) return caps.memory_free;
  const available = Math.max(0, status.memory_total - status.memory_used);
  const held = status.kv_bytes + (status.backend === "mlx" ? status.weight_bytes : 0);
  return Math.min(status.memory_total, available + held);
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
    gpuWorkingSetLimitBytes: caps.gpu_working_set_limit,
    gpuWorkingSetSource: caps.gpu_working_set_source,
    cpuKvDtype: caps.cpu_kv_dtype === "f16" ? "f16" : "f32",
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

/**
 * KV bytes each stage has: the memory the plan found free, less the stage's weights and headroom, and never less
 * than the plan's reserve of one full context. Sequences in flight reserve theirs in it; the prefix cache's RAM
 * tier takes the rest and gives it back as they need it.
 */
export function kvBytesForSequences(plan: Plan): number[] {
  return plan.stages.map((s) =>
    Math.max(s.kvReserveBytes, s.availableBytes - s.weightBytes - s.headroomBytes),
  );
}
