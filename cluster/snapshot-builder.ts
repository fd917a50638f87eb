// Builds the ClusterSnapshot (dashboard, /metrics) from what the controller knows: the cluster health (members
// with their latest heartbeat, the plan) and shard-load progress. The request part (in flight, recent,
// throughput and TTFT series) comes from the HTTP API's request log (request-log.ts), merged in by
// api/server.ts: only the API knows a request's API kind, and one source keeps the figures consistent.
import type { ClusterHealth } from "./health.js";
import type { ClusterSnapshot, NodeHealth, NodeSnapshot } from "./snapshot.js";

export class SnapshotBuilder {
  private readonly loadProgress = new Map<string, number>();

  /** Shard loading of one node, 0..1 (cleared when a plan is ready). */
  progress(nodeId: string, bytesRead: number, bytesTotal: number): void {
    this.loadProgress.set(nodeId, bytesTotal > 0 ? Math.min(1, bytesRead / bytesTotal) : 0);
  }

  clearProgress(): void {
    this.loadProgress.clear();
  }

  build(health: ClusterHealth, numLayers: number): ClusterSnapshot {
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
    const state = health.state === "following" ? (health.ok ? "ready" : "not_ready") : health.state;
    return {
      clusterId: health.clusterId,
      modelId: health.modelId,
      numLayers,
      coordinatorId: health.coordinator?.id ?? "",
      state,
      // The message says why the cluster does not serve (the dashboard shows it as a warning banner); a ready
      // cluster's "serving with ..." line is what the cards and the layer map already show.
      message: state === "ready" ? undefined : health.message,
      nodes,
      // Filled from the API's request log (see the top of this file).
      inFlight: [],
      recent: [],
      throughput: [],
      ttftMs: [],
    };
  }
}
