// The live picture the dashboard and /metrics render: the cluster's health (health.ts: one view per node)
// as the coordinator sees it, plus the HTTP API's request figures (api/request-log.ts merges them in).
import type { ClusterHealth, NodeView, PlanView } from "./health.js";

export interface RequestSnapshot {
  id: string;
  api: "responses" | "chat.completions" | "completions" | "messages";
  startedAt: number;
  status: "prefill" | "decoding" | "completed" | "incomplete" | "failed" | "cancelled";
  promptTokens: number;
  cachedTokens: number;
  outputTokens: number;
  ttftMs?: number;
  tokensPerSecond?: number;
  /** Why a failed request failed (its error's message). */
  error?: string;
}

export interface SeriesPoint {
  /** Unix time in ms. */
  t: number;
  v: number;
}

export interface RequestFigures {
  inFlight: RequestSnapshot[];
  recent: RequestSnapshot[];
  /** Aggregate output tokens/s, one point per second over the last minutes. */
  throughput: SeriesPoint[];
  /** Time to first token of finished requests, ms. */
  ttftMs: SeriesPoint[];
}

export type SnapshotState = "ready" | "loading" | "planning" | "not_ready";

export interface ClusterSnapshot extends RequestFigures {
  clusterId: string;
  modelId: string;
  numLayers: number;
  coordinatorId: string;
  /** "ready" when the cluster serves (itself or through its coordinator); otherwise why not. */
  state: SnapshotState;
  message?: string;
  nodes: NodeView[];
  /** The plan, where it is known (the coordinator's): what a follower's `cluster status` and `cluster bench` show. */
  plan?: PlanView;
}

/** The health as a snapshot, its request figures still empty. */
export function snapshotOf(health: ClusterHealth): ClusterSnapshot {
  const state = health.state === "following" ? (health.ok ? "ready" : "not_ready") : health.state;
  return {
    clusterId: health.clusterId,
    modelId: health.modelId,
    numLayers: health.numLayers,
    coordinatorId: health.coordinator?.id ?? "",
    state,
    // The message says why the cluster does not serve (the dashboard shows it as a warning banner); a ready
    // cluster's "serving with ..." line is what the cards and the layer map already show.
    message: state === "ready" ? undefined : health.message,
    nodes: health.nodes,
    plan: health.plan,
    inFlight: [],
    recent: [],
    throughput: [],
    ttftMs: [],
  };
}
