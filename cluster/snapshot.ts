// The live picture of the cluster that the dashboard, /metrics and `cluster status` all render.
// The coordinator assembles it from membership, the plan, node Status streams and the scheduler.

export type NodeHealth = "ok" | "loading" | "degraded" | "lost";

export interface NodeSnapshot {
  id: string;
  name: string;
  /** host:port of the node's gRPC endpoint. */
  address: string;
  role: "coordinator" | "node";
  chip: string;
  backend: string;
  cores: number;
  memoryTotalBytes: number;
  memoryUsedBytes: number;
  /** Layer range held, [layerStart, layerEnd); absent when the node holds no shard. */
  layerStart?: number;
  layerEnd?: number;
  embed: boolean;
  head: boolean;
  weightBytes: number;
  kvBytes: number;
  tokensPerSecond: number;
  /** Fraction of the last second the engine was computing, 0..1. */
  busyFraction: number;
  queueDepth: number;
  health: NodeHealth;
  /** Latency of this node's data link to its downstream stage, median over the last minute. */
  linkLatencyUs?: number;
  /** Shard load progress 0..1 while health is "loading". */
  loadProgress?: number;
}

export interface RequestSnapshot {
  id: string;
  api: "responses" | "chat.completions" | "completions";
  startedAt: number;
  status: "prefill" | "decoding" | "completed" | "incomplete" | "failed" | "cancelled";
  promptTokens: number;
  cachedTokens: number;
  outputTokens: number;
  ttftMs?: number;
  tokensPerSecond?: number;
}

export interface SeriesPoint {
  /** Unix time in ms. */
  t: number;
  v: number;
}

export interface ClusterSnapshot {
  clusterId: string;
  modelId: string;
  numLayers: number;
  coordinatorId: string;
  /** "ready" when a plan is loaded and serving; otherwise why not. */
  state: "ready" | "loading" | "planning" | "not_ready";
  message?: string;
  nodes: NodeSnapshot[];
  inFlight: RequestSnapshot[];
  recent: RequestSnapshot[];
  /** Aggregate output tokens/s, one point per second over the last minutes. */
  throughput: SeriesPoint[];
  /** Time to first token of finished requests, ms. */
  ttftMs: SeriesPoint[];
}
