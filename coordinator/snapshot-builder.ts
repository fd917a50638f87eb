// Builds the ClusterSnapshot (dashboard, /metrics) from what the controller knows: the cluster health (members
// with their latest heartbeat, the plan), shard-load progress, and the scheduler's finished-request figures.
import type { ClusterHealth } from "./cluster-health.js";
import type { ClusterSnapshot, NodeHealth, NodeSnapshot, SeriesPoint } from "./cluster-snapshot.js";
import type { RequestFigures } from "./scheduler.js";

/** Points kept per series: ten minutes at one a second. */
const SERIES_LENGTH = 600;

function push(series: SeriesPoint[], point: SeriesPoint): void {
  series.push(point);
  if (series.length > SERIES_LENGTH) series.splice(0, series.length - SERIES_LENGTH);
}

export class SnapshotBuilder {
  private readonly loadProgress = new Map<string, number>();
  private readonly throughput: SeriesPoint[] = [];
  private readonly ttft: SeriesPoint[] = [];
  /** Output tokens of requests that finished since the last throughput sample. */
  private finishedTokens = 0;
  private lastSampleAt = Date.now();

  /** Shard loading of one node, 0..1 (cleared when a plan is ready). */
  progress(nodeId: string, bytesRead: number, bytesTotal: number): void {
    this.loadProgress.set(nodeId, bytesTotal > 0 ? Math.min(1, bytesRead / bytesTotal) : 0);
  }

  clearProgress(): void {
    this.loadProgress.clear();
  }

  /** A finished request, from the scheduler's "request" event. */
  request(figures: RequestFigures): void {
    this.finishedTokens += figures.outputTokens;
    if (figures.ttftMs !== undefined) push(this.ttft, { t: Date.now(), v: figures.ttftMs });
  }

  /**
   * One throughput point per second: output tokens of the requests that finished in that second, spread over
   * it (the scheduler reports requests when they end, so long generations show as one burst at their end).
   */
  private sample(now: number): void {
    if (now - this.lastSampleAt < 1000) return;
    const seconds = (now - this.lastSampleAt) / 1000;
    push(this.throughput, { t: now, v: this.finishedTokens / seconds });
    this.finishedTokens = 0;
    this.lastSampleAt = now;
  }

  build(health: ClusterHealth, numLayers: number): ClusterSnapshot {
    const now = Date.now();
    this.sample(now);
    const stages = health.plan?.stages ?? [];
    const live = new Set(health.members.map((m) => m.id));
    const nodes: NodeSnapshot[] = health.members.map((m) => {
      const stageIndex = stages.findIndex((s) => s.nodeId === m.id);
      const stage = stages[stageIndex];
      const downstream = stages[stageIndex + 1];
      const downstreamMember = downstream && health.members.find((d) => d.id === downstream.nodeId);
      const loading = health.state === "loading" && stage !== undefined;
      const nodeHealth: NodeHealth = loading ? "loading" : m.lastSeenMs > 1500 ? "degraded" : "ok";
      return {
        id: m.id,
        name: m.name,
        address: m.address,
        role: m.role,
        chip: m.chip,
        backend: health.plan?.backend ?? m.backends[0] ?? "",
        cores: m.cores,
        memoryTotalBytes: m.memoryTotalBytes,
        memoryUsedBytes: m.memoryUsedBytes,
        layerStart: m.loaded ? m.layerStart : stage?.layerStart,
        layerEnd: m.loaded ? m.layerEnd : stage?.layerEnd,
        embed: stage?.embed ?? false,
        head: stage?.head ?? false,
        weightBytes: m.weightBytes,
        kvBytes: m.kvBytes,
        tokensPerSecond: m.tokensPerSecond,
        busyFraction: m.busyFraction,
        queueDepth: m.queueDepth,
        health: nodeHealth,
        linkLatencyUs: downstreamMember?.inboundHopP50Us || undefined,
        loadProgress: loading ? (this.loadProgress.get(m.id) ?? 0) : undefined,
      };
    });
    // Stages of the plan whose node left: shown as lost until the next plan replaces them.
    for (const s of stages) {
      if (live.has(s.nodeId)) continue;
      nodes.push({
        id: s.nodeId,
        name: s.name,
        address: s.address,
        role: "node",
        chip: "",
        backend: health.plan?.backend ?? "",
        cores: 0,
        memoryTotalBytes: 0,
        memoryUsedBytes: 0,
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
      });
    }
    return {
      clusterId: health.clusterId,
      modelId: health.modelId,
      numLayers,
      coordinatorId: health.coordinator?.id ?? "",
      state: health.state === "following" ? (health.ok ? "ready" : "not_ready") : health.state,
      message: health.message,
      nodes,
      // The scheduler reports requests when they finish, without the API kind: in-flight and recent request
      // lists belong to the HTTP layer, which knows both.
      inFlight: [],
      recent: [],
      throughput: [...this.throughput],
      ttftMs: [...this.ttft],
    };
  }
}
