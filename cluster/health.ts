// The JSON a node serves at GET /health and `cluster status` prints: who is in the cluster, who coordinates,
// the plan, and whether it serves. Built by the controller; this file is the shape and its text rendering.
import type { PlanStage } from "../coordinator/planner.js";

export type ClusterState = "ready" | "loading" | "planning" | "not_ready" | "following";

export interface MemberHealth {
  id: string;
  name: string;
  /** host:port of its gRPC endpoint. */
  address: string;
  role: "coordinator" | "node";
  /** Its HTTP API, when it serves one. */
  apiUrl?: string;
  chip: string;
  cores: number;
  backends: string[];
  memoryTotalBytes: number;
  memoryUsedBytes: number;
  memoryBandwidthBps: number;
  /** Shard it holds now (from its heartbeat). */
  planId: string;
  loaded: boolean;
  layerStart?: number;
  layerEnd?: number;
  tokensPerSecond: number;
  busyFraction: number;
  queueDepth: number;
  kvBytes: number;
  weightBytes: number;
  /** Median latency of frames arriving on its inbound data stream (the hop from the previous stage). */
  inboundHopP50Us: number;
  /** Age of its latest heartbeat. */
  lastSeenMs: number;
}

export type PlanStageHealth = Pick<
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

export interface PlanHealth {
  planId: string;
  backend: string;
  contextTokens: number;
  numLayers: number;
  stages: PlanStageHealth[];
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
  node: { id: string; name: string; role: "coordinator" | "node"; apiUrl: string };
  coordinator?: { id: string; name: string; apiUrl?: string };
  members: MemberHealth[];
  /** Known on the coordinator. */
  plan?: PlanHealth;
}

/** 1.2 GB, 34.5 MB, 12.0 KB: three significant figures at most, whatever the model's size. */
export function humanBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e3).toFixed(1)} KB`;
}

function pad(text: string, width: number): string {
  return text.length >= width ? `${text} ` : text.padEnd(width);
}

/** Plain text for `cluster status`. `plan` may come from the coordinator when `health` is another node's. */
export function renderClusterHealth(health: ClusterHealth, plan = health.plan): string {
  const lines: string[] = [];
  const coordinator = health.coordinator
    ? `${health.coordinator.name} (${health.coordinator.id})${health.coordinator.apiUrl ? ` ${health.coordinator.apiUrl}` : ""}`
    : "none";
  lines.push(
    `cluster ${health.clusterId}  model ${health.modelId}  state ${health.state}${health.ok ? " (serving)" : ""}`,
  );
  if (health.message) lines.push(`  ${health.message}`);
  lines.push(
    `this node: ${health.node.name} (${health.node.id}), ${health.node.role}, API ${health.node.apiUrl}`,
  );
  lines.push(`coordinator: ${coordinator}`);
  lines.push(`members (${health.members.length}):`);
  for (const m of health.members) {
    const layers = m.loaded && m.layerStart !== undefined ? `[${m.layerStart},${m.layerEnd})` : "-";
    lines.push(
      `  ${m.role === "coordinator" ? "*" : " "} ${pad(m.name, 14)}${pad(m.id, 18)}${pad(m.address, 22)}` +
        `${pad(m.role, 12)}layers ${pad(layers, 9)}mem ${humanBytes(m.memoryUsedBytes)}/${humanBytes(m.memoryTotalBytes)}  ` +
        `${m.tokensPerSecond.toFixed(1)} tok/s  busy ${Math.round(m.busyFraction * 100)}%  ` +
        `queue ${m.queueDepth}  seen ${m.lastSeenMs} ms ago  ${m.chip}`,
    );
  }
  if (plan) {
    lines.push(
      `plan ${plan.planId} (${plan.backend}, context ${plan.contextTokens} tokens, ${plan.stages.length} stages):`,
    );
    plan.stages.forEach((s, i) => {
      const parts = [s.embed ? "embed" : "", s.head ? "head" : ""].filter(Boolean).join("+");
      lines.push(
        `  stage ${i}: ${pad(s.name, 14)}layers [${s.layerStart},${s.layerEnd})${parts ? ` ${parts}` : ""}  ` +
          `weights ${humanBytes(s.weightBytes)} + KV ${humanBytes(s.kvReserveBytes)}, needs ${humanBytes(s.needBytes)} of ${humanBytes(s.availableBytes)}`,
      );
    });
  } else {
    lines.push("plan: none");
  }
  return `${lines.join("\n")}\n`;
}

/** Runtime check of a /health body before rendering it (it comes over the network). */
export function isClusterHealth(value: unknown): value is ClusterHealth {
  const v = value as Partial<ClusterHealth> | null;
  return (
    typeof v === "object" &&
    v !== null &&
    typeof v.state === "string" &&
    typeof v.clusterId === "string" &&
    Array.isArray(v.members) &&
    typeof v.node === "object" &&
    v.node !== null
  );
}
