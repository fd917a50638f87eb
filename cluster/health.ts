// The one picture of the cluster: who is in it, who coordinates, the plan, whether it serves, and one view per
// node (its shard, its live figures from the heartbeat, its health). GET /health answers it; the dashboard,
// /metrics and `cluster status` render it (the snapshot in snapshot.ts adds the API's request figures). The
// controller keeps the inputs; buildClusterHealth turns them into this picture.
import { networkInterfaces } from "node:os";
import type { Plan, PlanStage } from "../coordinator/planner.js";
import type { Member } from "./membership.js";

export type ClusterState = "ready" | "loading" | "planning" | "not_ready" | "following";

export type NodeHealth = "ok" | "loading" | "degraded" | "lost";

/** One node as every view shows it. */
export interface NodeView {
  id: string;
  name: string;
  /** host:port of its gRPC endpoint. */
  address: string;
  role: "coordinator" | "node";
  /** Its HTTP API, when it serves one. */
  apiUrl?: string;
  chip: string;
  cores: number;
  /** Package version the node runs (absent for a lost stage). */
  version?: string;
  /**
   * Its clock minus ours, in ms, from its last heartbeat's timestamp and when it arrived (includes the one-way
   * delay, under a millisecond on a LAN). Absent before the first heartbeat.
   */
  clockSkewMs?: number;
  /** Backends it can run, and the one its shard runs on (the plan's). */
  backends: string[];
  backend: string;
  memoryTotalBytes: number;
  memoryUsedBytes: number;
  memoryBandwidthBps: number;
  /** Plan whose shard it holds now (from its heartbeat). */
  planId: string;
  loaded: boolean;
  /** Layer range held (or being loaded), [layerStart, layerEnd); absent when it has none. */
  layerStart?: number;
  layerEnd?: number;
  embed: boolean;
  head: boolean;
  weightBytes: number;
  kvBytes: number;
  tokensPerSecond: number;
  /** Fraction of the last interval its engine was computing, 0..1. */
  busyFraction: number;
  queueDepth: number;
  health: NodeHealth;
  /** Median latency of frames arriving on its inbound data stream (the hop from the previous stage). */
  inboundHopP50Us: number;
  /** Latency of its data link to its downstream stage (the downstream's inbound median). */
  linkLatencyUs?: number;
  /** Shard load progress 0..1 while health is "loading" (of the weight transfer while fetch is set). */
  loadProgress?: number;
  /** The node is receiving weights it lacks (docs/weights.md): bytes so far, of total, from source. */
  fetch?: { doneBytes: number; totalBytes: number; source: string };
  /** Age of its latest heartbeat (absent for a lost node). */
  lastSeenMs?: number;
  /** Its prefix cache, from its heartbeat (absent for a lost node). */
  prefixCache?: PrefixCacheView;
  /** For a lost node: when it was lost (ms since the epoch) and why. */
  lostAt?: number;
  lostReason?: string;
}

/** A node's prefix cache (docs/architecture.md "Prefix cache"). */
export interface PrefixCacheView {
  ramBytes: number;
  diskBytes: number;
  diskBudgetBytes: number;
  /** Since its shard loaded: prompt positions assembled from RAM blocks, from disk blocks, and computed. */
  ramHitTokens: number;
  diskHitTokens: number;
  computedTokens: number;
}

/** Shares of a node's prompt positions served from RAM and from disk (0 before any prompt). */
export function prefixCacheHitRates(c: PrefixCacheView): { ram: number; disk: number } {
  const all = c.ramHitTokens + c.diskHitTokens + c.computedTokens;
  return all > 0 ? { ram: c.ramHitTokens / all, disk: c.diskHitTokens / all } : { ram: 0, disk: 0 };
}

export type PlanStageView = Pick<
  PlanStage,
  | "nodeId"
  | "name"
  | "address"
  | "layerStart"
  | "layerEnd"
  | "embed"
  | "head"
  | "weightBytes"
  | "kvReserveBytes"
  | "needBytes"
  | "availableBytes"
>;

export interface PlanView {
  planId: string;
  backend: string;
  contextTokens: number;
  numLayers: number;
  stages: PlanStageView[];
}

export interface ClusterHealth {
  /** True when this node's API can serve generation now (itself or through the coordinator). */
  ok: boolean;
  state: ClusterState;
  /** Why it is not ready (e.g. the bytes a plan needs and the nodes have). */
  message?: string;
  clusterId: string;
  modelId: string;
  version: string;
  numLayers: number;
  node: { id: string; name: string; role: "coordinator" | "node"; apiUrl: string };
  coordinator?: { id: string; name: string; apiUrl?: string };
  /** Live members, then the stages of the plan whose node is gone (health "lost"). */
  nodes: NodeView[];
  /** Known on the coordinator. */
  plan?: PlanView;
}

/** What the controller knows, from which the picture is drawn. */
export interface HealthInputs {
  state: ClusterState;
  message?: string;
  clusterId: string;
  modelId: string;
  version: string;
  numLayers: number;
  self: { nodeId: string; name: string; apiUrl: string };
  coordinator?: Member;
  members: Member[];
  plan?: Plan;
  /** Shard load progress 0..1 by node id, while a plan loads. */
  loadProgress: ReadonlyMap<string, number>;
  /** Weight transfers under way by node id, while a plan loads. */
  fetchProgress?: ReadonlyMap<string, { doneBytes: number; totalBytes: number; source: string }>;
  /** Host for the APIs of members on this machine (see apiUrlOf). */
  localApiHost?: string;
  /** Members lost and not back: shown as lost, with when and why. */
  departed?: Array<{ member: Member; lostAt: number; reason: string }>;
}

/** A member whose heartbeat is older than this shows as degraded. */
const DEGRADED_AFTER_MS = 1500;

export function buildClusterHealth(inputs: HealthInputs): ClusterHealth {
  const { coordinator, plan } = inputs;
  const now = Date.now();
  const stages = plan?.stages ?? [];
  const nodes = inputs.members.map((m) => memberView(m, inputs, now));
  // Each node's link is to its downstream stage, whose inbound hop median is what the node's frames take.
  nodes.forEach((node) => {
    const i = stages.findIndex((s) => s.nodeId === node.id);
    const downstream = i >= 0 ? nodes.find((n) => n.id === stages[i + 1]?.nodeId) : undefined;
    node.linkLatencyUs = downstream?.inboundHopP50Us || undefined;
  });
  const live = new Set(nodes.map((n) => n.id));
  const departed = new Map((inputs.departed ?? []).map((d) => [d.member.nodeId, d]));
  for (const stage of stages)
    if (!live.has(stage.nodeId))
      nodes.push(withLoss(lostStageView(stage, plan!), departed.get(stage.nodeId)));
  // Lost members outside the plan (or after a re-plan without them) stay visible until they return.
  const shown = new Set(nodes.map((n) => n.id));
  for (const d of departed.values())
    if (!shown.has(d.member.nodeId)) nodes.push(withLoss(lostMemberView(d.member, inputs, now), d));
  const ok = inputs.state === "ready" || (inputs.state === "following" && coordinator !== undefined);
  return {
    ok,
    state: inputs.state,
    message: inputs.message,
    clusterId: inputs.clusterId,
    modelId: inputs.modelId,
    version: inputs.version,
    numLayers: inputs.numLayers,
    node: {
      id: inputs.self.nodeId,
      name: inputs.self.name,
      role: coordinator?.nodeId === inputs.self.nodeId ? "coordinator" : "node",
      apiUrl: inputs.self.apiUrl,
    },
    coordinator: coordinator && {
      id: coordinator.nodeId,
      name: coordinator.name,
      apiUrl: coordinator.self ? inputs.self.apiUrl : apiUrlOf(coordinator, inputs.localApiHost),
    },
    nodes,
    plan: plan && planView(plan),
  };
}

function memberView(m: Member, inputs: HealthInputs, now: number): NodeView {
  const status = m.status;
  const caps = m.capabilities;
  const stage = inputs.plan?.stages.find((s) => s.nodeId === m.nodeId);
  const loading = inputs.state === "loading" && stage !== undefined;
  const lastSeenMs = now - m.lastSeen;
  const loaded = status?.loaded ?? false;
  return {
    id: m.nodeId,
    name: m.name,
    address: m.address,
    role: m.nodeId === inputs.coordinator?.nodeId ? "coordinator" : "node",
    apiUrl: apiUrlOf(m, inputs.localApiHost),
    chip: caps.chip,
    cores: caps.cores,
    version: m.version,
    clockSkewMs: status?.time_us ? Math.round(status.time_us / 1000 - m.lastSeen) : undefined,
    backends: caps.backends,
    backend: inputs.plan?.backend ?? status?.backend ?? caps.backends[0] ?? "",
    memoryTotalBytes: status?.memory_total || caps.memory_total,
    memoryUsedBytes: status?.memory_used ?? caps.memory_total - caps.memory_free,
    memoryBandwidthBps: caps.memory_bandwidth_bps,
    planId: status?.plan_id ?? m.helloPlanId,
    loaded,
    layerStart: loaded ? status?.layer_start : stage?.layerStart,
    layerEnd: loaded ? status?.layer_end : stage?.layerEnd,
    embed: loaded ? (status?.embed ?? false) : (stage?.embed ?? false),
    head: loaded ? (status?.head ?? false) : (stage?.head ?? false),
    weightBytes: status?.weight_bytes ?? 0,
    kvBytes: status?.kv_bytes ?? 0,
    tokensPerSecond: status?.tokens_per_s ?? 0,
    busyFraction: status?.busy_fraction ?? 0,
    queueDepth: status?.queue_depth ?? 0,
    health: loading ? "loading" : lastSeenMs > DEGRADED_AFTER_MS ? "degraded" : "ok",
    inboundHopP50Us: status?.inbound_hop_p50_us ?? 0,
    loadProgress: loading ? (inputs.loadProgress.get(m.nodeId) ?? 0) : undefined,
    fetch: loading ? inputs.fetchProgress?.get(m.nodeId) : undefined,
    lastSeenMs,
    prefixCache: status && {
      ramBytes: status.cache_ram_bytes ?? 0,
      diskBytes: status.cache_disk_bytes ?? 0,
      diskBudgetBytes: status.cache_disk_budget_bytes ?? 0,
      ramHitTokens: status.cache_ram_hit_tokens ?? 0,
      diskHitTokens: status.cache_disk_hit_tokens ?? 0,
      computedTokens: status.prompt_tokens_computed ?? 0,
    },
  };
}

function withLoss(view: NodeView, loss: { lostAt: number; reason: string } | undefined): NodeView {
  return loss ? { ...view, lostAt: loss.lostAt, lostReason: loss.reason } : view;
}

/** A member that was lost, as it was last seen: marked lost, no live figures. */
function lostMemberView(m: Member, inputs: HealthInputs, now: number): NodeView {
  const view = memberView(m, inputs, now);
  return {
    ...view,
    health: "lost",
    loaded: false,
    tokensPerSecond: 0,
    busyFraction: 0,
    queueDepth: 0,
    lastSeenMs: undefined,
    prefixCache: undefined,
  };
}

/** A stage of the plan whose node left: shown as lost until the next plan replaces it. */
function lostStageView(s: PlanStage, plan: Plan): NodeView {
  return {
    id: s.nodeId,
    name: s.name,
    address: s.address,
    role: "node",
    chip: "",
    cores: 0,
    backends: [],
    backend: plan.backend,
    memoryTotalBytes: 0,
    memoryUsedBytes: 0,
    memoryBandwidthBps: 0,
    planId: plan.planId,
    loaded: false,
    layerStart: s.layerStart,
    layerEnd: s.layerEnd,
    embed: s.embed,
    head: s.head,
    weightBytes: 0,
    kvBytes: 0,
    tokensPerSecond: 0,
    busyFraction: 0,
    queueDepth: 0,
    health: "lost",
    inboundHopP50Us: 0,
  };
}

function planView(plan: Plan): PlanView {
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
export function apiUrlOf(member: Member, localApiHost: string | undefined): string | undefined {
  if (!member.apiPort) return undefined;
  const host = hostOf(member.address);
  const local = localApiHost !== undefined && localAddresses().has(host.replace(/^\[|\]$/g, ""));
  return `http://${local ? localApiHost : host}:${member.apiPort}`;
}

/** Nodes that answer (every node but the lost stages of the plan). */
export function liveNodes(health: Pick<ClusterHealth, "nodes">): NodeView[] {
  return health.nodes.filter((n) => n.health !== "lost");
}

/** 1.2 GB, 34.5 MB, 12.0 KB: three significant figures at most, whatever the model's size. */
export function humanBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e3).toFixed(1)} KB`;
}

/** Runtime check of a /health body before rendering it (it comes over the network). */
export function isClusterHealth(value: unknown): value is ClusterHealth {
  const v = value as Partial<ClusterHealth> | null;
  return (
    typeof v === "object" &&
    v !== null &&
    typeof v.state === "string" &&
    typeof v.clusterId === "string" &&
    Array.isArray(v.nodes) &&
    typeof v.node === "object" &&
    v.node !== null
  );
}
