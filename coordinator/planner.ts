// The planner: which node runs which contiguous range of layers. Pure functions, no I/O.
//
// Rule (deterministic for the same inputs):
// 1. Stage order: nodes sorted by node id (the same order the election uses, so the coordinator, which has the
//    smallest id, runs stage 0 when it holds layers). Layer 0 (with the embedding) goes to the first node that
//    holds layers, the last layer (with final norm + lm_head) to the last one.
// 2. A node can hold a range when its available memory covers the range's weights + embedding/head if it has
//    them + the KV reserve for the configured context (2 * kv_heads * head_dim * dtype bytes per token per
//    layer; the dtype is bf16 on mlx, and on cpu f32 or the f16 a node caches with --kv-dtype f16) + headroom.
// 3. Among the ranges that fit, pick the split with the smallest bottleneck: the largest per-token time of any
//    stage, time = bytes read per token / memory bandwidth. Pipelined throughput is set by the slowest stage, so
//    this gives layers in proportion to bandwidth. Ties: the most even split (smallest sum of squared stage
//    times), which also uses every node that can help.
// 4. If no split fits, a ClusterError("cluster_not_ready") states the bytes needed and available per node.
// 5. On the mlx backend a Mac's GPU keeps weights and KV wired, up to its working-set limit (the system default,
//    about three quarters of memory, or `iogpu.wired_limit_mb`). A stage's weights + KV + GPU headroom must fit
//    under that limit as well as in available memory. When only the limit stands in the way, the error prints
//    the sysctl line that would make the plan fit.
import { randomBytes } from "node:crypto";
import { effectiveBandwidthBps } from "../common/chip-bandwidth.js";
import type { BackendName, KvDtype } from "../common/engine-api.js";
import { ClusterError } from "../common/errors.js";
import { wiredLimitCommand } from "../common/wired-limit.js";
import { kvBytesPerTokenPerLayer, type ModelFootprint } from "./model-footprint.js";

export interface PlannerNode {
  nodeId: string;
  name: string;
  /** host:port of the node's gRPC endpoint. */
  address: string;
  /** Bytes this node can give the shard: free memory, plus what its current shard holds on a re-plan. */
  memoryAvailableBytes: number;
  memoryTotalBytes: number;
  /** Measured bandwidth in bytes/s; 0 = unknown (the chip table decides). */
  memoryBandwidthBps: number;
  chip: string;
  /** Backends the node can run. */
  backends: BackendName[];
  /** macOS: bytes the GPU may keep wired (0 = no such limit: not a Mac, or unknown). */
  gpuWorkingSetLimitBytes?: number;
  /** Where that limit came from ("sysctl iogpu.wired_limit_mb=N", "estimate: ..."). */
  gpuWorkingSetSource?: string;
  /** What the node's cpu backend caches keys and values as (default f32). */
  cpuKvDtype?: KvDtype;
}

export interface PlanOptions {
  /** Tokens of context every sequence may reach; the KV reserve is sized for it. */
  contextTokens: number;
  /** Memory kept free on a node; default: 1 GiB + 5% of its total memory. */
  headroomBytes?: (node: PlannerNode) => number;
  /** Defaults to a fresh random id. */
  planId?: string;
}

export interface PlanStage {
  nodeId: string;
  name: string;
  address: string;
  layerStart: number;
  /** One past the last layer. */
  layerEnd: number;
  embed: boolean;
  head: boolean;
  weightBytes: number;
  kvReserveBytes: number;
  headroomBytes: number;
  /** weights + KV reserve + headroom. */
  needBytes: number;
  availableBytes: number;
  bandwidthBps: number;
  /** Bytes read per decoded token / bandwidth. */
  secondsPerToken: number;
}

export interface Plan {
  planId: string;
  backend: BackendName;
  numLayers: number;
  contextTokens: number;
  stages: PlanStage[];
  /** Members that hold no layers in this plan. */
  idle: Array<{ nodeId: string; name: string }>;
  /** Per-token time of the slowest stage: the plan's throughput bound for one stream of work. */
  bottleneckSecondsPerToken: number;
}

const GIB = 1024 ** 3;
/** What MLX needs beyond weights and KV inside the GPU's wired set: activations and scratch buffers. */
export const GPU_HEADROOM_BYTES = GIB;
/** What a Mac keeps for macOS and its apps when the user raises the wired limit. */
const MAC_SYSTEM_RESERVE_BYTES = 8 * GIB;

/** Memory kept free on a machine of `totalBytes`: 1 GiB + 5% of it. */
export function headroomForMemory(totalBytes: number): number {
  return GIB + Math.round(totalBytes * 0.05);
}

export function defaultHeadroomBytes(node: PlannerNode): number {
  return headroomForMemory(node.memoryTotalBytes);
}

/** "128.7 GB (128700000000 B)": readable and exact. */
export function formatBytes(bytes: number): string {
  return `${(bytes / 1e9).toFixed(1)} GB (${Math.round(bytes)} B)`;
}

/** One backend for the whole pipeline: activations must have one dtype on every hop. */
export function chooseBackend(nodes: PlannerNode[]): BackendName {
  return nodes.length > 0 && nodes.every((n) => n.backends.includes("mlx")) ? "mlx" : "cpu";
}

/** Stage order: by node id. */
export function orderNodes(nodes: PlannerNode[]): PlannerNode[] {
  return [...nodes].sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
}

interface RangeCosts {
  need(node: number, start: number, end: number): number;
  seconds(node: number, start: number, end: number): number;
  weights(start: number, end: number): number;
  /** Node i's KV reserve for layers [start, end). */
  kv(i: number, start: number, end: number): number;
}

function prefixSums(values: number[]): number[] {
  const sums = [0];
  for (const v of values) sums.push(sums[sums.length - 1] + v);
  return sums;
}

function rangeCosts(
  model: ModelFootprint,
  headroom: number[],
  bandwidth: number[],
  kvPerLayer: number[],
): RangeCosts {
  const L = model.numLayers;
  const held = prefixSums(model.layerBytes);
  const read = prefixSums(model.layerReadBytes);
  const weights = (s: number, e: number) =>
    held[e] - held[s] + (s === 0 ? model.embedBytes : 0) + (e === L ? model.headBytes : 0);
  const kv = (i: number, s: number, e: number) => (e - s) * kvPerLayer[i];
  return {
    weights,
    kv,
    need: (i, s, e) => (e === s ? 0 : weights(s, e) + kv(i, s, e) + headroom[i]),
    seconds: (i, s, e) =>
      e === s ? 0 : (read[e] - read[s] + (e === L ? model.headBytes : 0)) / bandwidth[i],
  };
}

/** Relative slack for comparing float stage times (so equal splits compare equal). */
const EPS = 1e-9;

/** Smallest achievable bottleneck over contiguous splits that fit; Infinity when none fits. */
function minBottleneck(N: number, L: number, costs: RangeCosts, available: number[]): number {
  let best = new Array<number>(L + 1).fill(Number.POSITIVE_INFINITY);
  best[0] = 0;
  for (let i = 0; i < N; i++) {
    const next = new Array<number>(L + 1).fill(Number.POSITIVE_INFINITY);
    for (let end = 0; end <= L; end++) {
      for (let start = 0; start <= end; start++) {
        if (best[start] === Number.POSITIVE_INFINITY) continue;
        if (costs.need(i, start, end) > available[i]) continue;
        const value = Math.max(best[start], costs.seconds(i, start, end));
        if (value < next[end]) next[end] = value;
      }
    }
    best = next;
  }
  return best[L];
}

/** Ranges [start, end) per node (empty = idle) with every stage within `limit`, most even first. */
function evenestSplit(
  N: number,
  L: number,
  costs: RangeCosts,
  available: number[],
  limit: number,
): Array<[number, number]> {
  // cost[i][end]: smallest sum of squared stage times for nodes < i covering layers [0, end).
  const cost: number[][] = [new Array<number>(L + 1).fill(Number.POSITIVE_INFINITY)];
  const from: number[][] = [new Array<number>(L + 1).fill(-1)];
  cost[0][0] = 0;
  for (let i = 0; i < N; i++) {
    const row = new Array<number>(L + 1).fill(Number.POSITIVE_INFINITY);
    const back = new Array<number>(L + 1).fill(-1);
    for (let end = 0; end <= L; end++) {
      for (let start = 0; start <= end; start++) {
        if (cost[i][start] === Number.POSITIVE_INFINITY) continue;
        if (costs.need(i, start, end) > available[i]) continue;
        const t = costs.seconds(i, start, end);
        if (t > limit) continue;
        const value = cost[i][start] + t * t;
        // Strictly better only: among equals the earliest start wins, which is deterministic.
        if (value < row[end] * (1 - EPS)) {
          row[end] = value;
          back[end] = start;
        }
      }
    }
    cost.push(row);
    from.push(back);
  }
  const ranges: Array<[number, number]> = new Array(N);
  let end = L;
  for (let i = N; i >= 1; i--) {
    const start = from[i][end];
    ranges[i - 1] = [start, end];
    end = start;
  }
  return ranges;
}

function notFitting(
  model: ModelFootprint,
  nodes: PlannerNode[],
  headroom: number[],
  kvPerLayer: number[],
  contextTokens: number,
): ClusterError {
  const weights = model.layerBytes.reduce((a, b) => a + b, 0) + model.embedBytes + model.headBytes;
  // The nodes' caches may differ (--kv-dtype): the largest per-layer reserve names the most it may take.
  const kv = Math.max(...kvPerLayer) * model.numLayers;
  const perNode = nodes
    .map((n, i) => {
      const usable = Math.max(0, n.memoryAvailableBytes - headroom[i]);
      return `${n.name} (${n.nodeId}) has ${formatBytes(n.memoryAvailableBytes)} available, ${formatBytes(usable)} after ${formatBytes(headroom[i])} headroom`;
    })
    .join("; ");
  const usableTotal = nodes.reduce((sum, n, i) => sum + Math.max(0, n.memoryAvailableBytes - headroom[i]), 0);
  return new ClusterError(
    "cluster_not_ready",
    `the model does not fit on ${nodes.length} node(s): it needs ${formatBytes(weights + kv)} ` +
      `(weights ${formatBytes(weights)} + KV reserve ${formatBytes(kv)} for ${contextTokens} tokens of context), ` +
      `the nodes have ${formatBytes(usableTotal)} usable in all: ${perNode}. ` +
      `Add a machine, lower --context, or use a smaller quantization.`,
  );
}

export function planLayers(model: ModelFootprint, members: PlannerNode[], opts: PlanOptions): Plan {
  if (members.length === 0) throw new ClusterError("cluster_not_ready", "no live nodes to plan on");
  if (!Number.isInteger(opts.contextTokens) || opts.contextTokens <= 0)
    throw new ClusterError("bad_request", `context must be a positive integer (got ${opts.contextTokens})`);
  const nodes = orderNodes(members);
  const backend = chooseBackend(nodes);
  const headroomOf = opts.headroomBytes ?? defaultHeadroomBytes;
  const headroom = nodes.map(headroomOf);
  const bandwidth = nodes.map((n) => effectiveBandwidthBps(n.memoryBandwidthBps, n.chip));
  const memory = nodes.map((n) => n.memoryAvailableBytes);
  const available = nodes.map((n, i) => usableBytes(n, backend, headroom[i]));
  const kvPerLayer = nodes.map(
    (n) => kvBytesPerTokenPerLayer(model, backend, n.cpuKvDtype) * opts.contextTokens,
  );
  const costs = rangeCosts(model, headroom, bandwidth, kvPerLayer);
  const L = model.numLayers;

  const bottleneck = minBottleneck(nodes.length, L, costs, available);
  if (bottleneck === Number.POSITIVE_INFINITY) {
    if (minBottleneck(nodes.length, L, costs, memory) < Number.POSITIVE_INFINITY)
      throw overWiredLimit(nodes, costs, memory, L);
    throw notFitting(model, nodes, headroom, kvPerLayer, opts.contextTokens);
  }
  const ranges = evenestSplit(nodes.length, L, costs, available, bottleneck * (1 + EPS));

  const stages: PlanStage[] = [];
  const idle: Plan["idle"] = [];
  nodes.forEach((node, i) => {
    const [start, end] = ranges[i];
    if (start === end) {
      idle.push({ nodeId: node.nodeId, name: node.name });
      return;
    }
    stages.push({
      nodeId: node.nodeId,
      name: node.name,
      address: node.address,
      layerStart: start,
      layerEnd: end,
      embed: start === 0,
      head: end === L,
      weightBytes: costs.weights(start, end),
      kvReserveBytes: costs.kv(i, start, end),
      headroomBytes: headroom[i],
      needBytes: costs.need(i, start, end),
      availableBytes: available[i],
      bandwidthBps: bandwidth[i],
      secondsPerToken: costs.seconds(i, start, end),
    });
  });
  return {
    planId: opts.planId ?? randomBytes(6).toString("hex"),
    backend,
    numLayers: L,
    contextTokens: opts.contextTokens,
    stages,
    idle,
    bottleneckSecondsPerToken: bottleneck,
  };
}

/**
 * What a node can give a stage, compared with weights + KV + headroom. On mlx under a GPU working-set limit,
 * weights + KV + GPU headroom must also stay under the limit; expressed on the same scale as `need` (which
 * includes the node's headroom), that is limit - GPU headroom + headroom.
 */
function usableBytes(node: PlannerNode, backend: BackendName, headroom: number): number {
  const limit = node.gpuWorkingSetLimitBytes ?? 0;
  if (backend !== "mlx" || limit <= 0) return node.memoryAvailableBytes;
  return Math.min(node.memoryAvailableBytes, limit - GPU_HEADROOM_BYTES + headroom);
}

/**
 * The model fits in memory but not under the GPU's wired limit: name each node's shortfall in bytes and the
 * sysctl line that lifts it (it resets at reboot), or say the limit cannot go that high on that machine.
 */
function overWiredLimit(nodes: PlannerNode[], costs: RangeCosts, memory: number[], L: number): ClusterError {
  const bottleneck = minBottleneck(nodes.length, L, costs, memory);
  const ranges = evenestSplit(nodes.length, L, costs, memory, bottleneck * (1 + EPS));
  const lines: string[] = [];
  nodes.forEach((node, i) => {
    const [start, end] = ranges[i];
    if (start === end) return;
    const wired = costs.weights(start, end) + costs.kv(i, start, end) + GPU_HEADROOM_BYTES;
    const limit = node.gpuWorkingSetLimitBytes ?? 0;
    if (limit <= 0 || wired <= limit) return;
    const most = node.memoryTotalBytes - MAC_SYSTEM_RESERVE_BYTES;
    const fix =
      wired <= most
        ? `run \`${wiredLimitCommand(wired)}\` on it (the setting resets at reboot)`
        : `that is more than it can wire while keeping ${formatBytes(MAC_SYSTEM_RESERVE_BYTES)} for macOS`;
    lines.push(
      `${node.name} (${node.nodeId}) would hold layers [${start},${end}): ${formatBytes(wired)} of weights, ` +
        `KV and GPU buffers over its GPU working-set limit of ${formatBytes(limit)} ` +
        `(${node.gpuWorkingSetSource ?? "unknown source"}); ${fix}`,
    );
  });
  return new ClusterError(
    "cluster_not_ready",
    `the model fits in the nodes' memory but not under their GPU working-set limit: ${lines.join("; ")}. ` +
      `Or lower --context, or add a machine.`,
  );
}

/** "node-a [0,31) embed | node-b [31,62) head": one line for logs and `cluster status`. */
export function describePlan(plan: Plan): string {
  return plan.stages
    .map((s) => `${s.name} [${s.layerStart},${s.layerEnd})${s.embed ? " embed" : ""}${s.head ? " head" : ""}`)
    .join(" | ");
}
