// The cluster as plain text, for `cluster status`: the same picture as the dashboard. The health (state, the
// coordinator, one line per node with its layers and live figures, the plan with its byte figures) and, when
// the coordinator's request figures are at hand, the cluster's throughput, TTFT and requests.
import { type ClusterHealth, humanBytes, type NodeView, type PlanView } from "./health.js";
import type { ClusterSnapshot, RequestFigures, RequestSnapshot } from "./snapshot.js";

function pad(text: string, width: number): string {
  return text.length >= width ? `${text} ` : text.padEnd(width);
}

function layersOf(n: NodeView): string {
  if (n.layerStart === undefined || n.layerEnd === undefined) return "-";
  const parts = [n.embed ? "E" : "", n.head ? "H" : ""].join("");
  return `[${n.layerStart},${n.layerEnd})${parts}`;
}

function latencyOf(us: number | undefined): string {
  if (us === undefined) return "-";
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${Math.round(us)} µs`;
}

function healthOf(n: NodeView): string {
  if (n.health === "loading" && n.fetch) return `fetching ${Math.round((n.loadProgress ?? 0) * 100)}%`;
  if (n.health === "loading" && n.loadProgress !== undefined)
    return `loading ${Math.round(n.loadProgress * 100)}%`;
  if (n.health === "lost" && n.lostAt !== undefined)
    return `lost ${Math.max(0, Math.round((Date.now() - n.lostAt) / 1000))}s ago`;
  return n.health;
}

const NODE_HEADER =
  `    ${pad("node", 14)}${pad("id", 18)}${pad("role", 12)}${pad("health", 13)}${pad("layers", 11)}` +
  `${pad("tok/s", 8)}${pad("busy", 6)}${pad("queue", 7)}${pad("memory", 20)}${pad("KV", 10)}${pad("link", 10)}chip`;

function nodeLine(n: NodeView): string {
  return (
    `  ${n.role === "coordinator" ? "*" : " "} ${pad(n.name, 14)}${pad(n.id, 18)}${pad(n.role, 12)}` +
    `${pad(healthOf(n), 13)}${pad(layersOf(n), 11)}${pad(n.tokensPerSecond.toFixed(1), 8)}` +
    `${pad(`${Math.round(n.busyFraction * 100)}%`, 6)}${pad(String(n.queueDepth), 7)}` +
    `${pad(`${humanBytes(n.memoryUsedBytes)}/${humanBytes(n.memoryTotalBytes)}`, 20)}${pad(humanBytes(n.kvBytes), 10)}` +
    `${pad(latencyOf(n.linkLatencyUs), 10)}${n.chip}`
  );
}

function planLines(plan: PlanView | undefined): string[] {
  if (!plan) return ["plan: none"];
  const lines = [
    `plan ${plan.planId} (${plan.backend}, context ${plan.contextTokens} tokens, ${plan.stages.length} stages):`,
  ];
  plan.stages.forEach((s, i) => {
    const parts = [s.embed ? "embed" : "", s.head ? "head" : ""].filter(Boolean).join("+");
    lines.push(
      `  stage ${i}: ${pad(s.name, 14)}layers [${s.layerStart},${s.layerEnd})${parts ? ` ${parts}` : ""}  ` +
        `weights ${humanBytes(s.weightBytes)} + KV ${humanBytes(s.kvReserveBytes)}, needs ${humanBytes(s.needBytes)} of ${humanBytes(s.availableBytes)}`,
    );
  });
  return lines;
}

function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function requestLine(r: RequestSnapshot, now: number): string {
  const ttft = r.ttftMs === undefined ? "-" : `${Math.round(r.ttftMs)} ms`;
  const rate = r.tokensPerSecond === undefined ? "-" : `${r.tokensPerSecond.toFixed(1)} tok/s`;
  return (
    `  ${pad(r.id, 10)}${pad(r.api, 18)}${pad(r.status, 10)}prompt ${r.promptTokens} (cached ${r.cachedTokens})  ` +
    `out ${r.outputTokens}  TTFT ${ttft}  ${rate}  age ${((now - r.startedAt) / 1000).toFixed(1)} s`
  );
}

function requestLines(live: RequestFigures, now: number): string[] {
  const last = live.throughput.at(-1)?.v ?? 0;
  const minute = live.throughput.slice(-60);
  const average = minute.length ? minute.reduce((a, p) => a + p.v, 0) / minute.length : 0;
  const ttft = median(live.ttftMs.slice(-20).map((p) => p.v));
  const lines = [
    `throughput ${last.toFixed(1)} tok/s (last second), ${average.toFixed(1)} tok/s (last minute)` +
      `; TTFT median ${ttft === undefined ? "-" : `${Math.round(ttft)} ms`} (last ${Math.min(20, live.ttftMs.length)})`,
    `requests in flight (${live.inFlight.length}):`,
  ];
  for (const r of live.inFlight) lines.push(requestLine(r, now));
  const byStatus = new Map<string, number>();
  for (const r of live.recent) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
  const counts = [...byStatus].map(([status, n]) => `${n} ${status}`).join(", ");
  lines.push(`recent requests: ${live.recent.length}${counts ? ` (${counts})` : ""}`);
  return lines;
}

/**
 * The coordinator as this node knows it: itself, or its name and gRPC address. Not its HTTP API: that usually
 * listens on the coordinator's own loopback, and a follower reaches it over the gRPC plane
 * (docs/architecture.md, "Relayed requests").
 */
function coordinatorLine(health: ClusterHealth): string {
  const c = health.coordinator;
  if (!c) return "none";
  if (c.id === health.node.id) return `${c.name} (${c.id}), this node`;
  const grpc = health.nodes.find((n) => n.id === c.id)?.address;
  return `${c.name} (${c.id})${grpc ? ` at ${grpc} (gRPC)` : ""}`;
}

/**
 * `health` is the asked node's; `plan` may come from the coordinator when that node follows, `live` (the
 * coordinator's snapshot) adds its nodes' live figures and the requests; `liveError` says why there is no
 * `live` (e.g. the coordinator cannot be reached). `now` is the server's clock when known, so request ages do
 * not depend on the caller's clock.
 */
export function renderClusterStatus(
  health: ClusterHealth,
  options: { plan?: PlanView; live?: ClusterSnapshot; liveError?: string; now?: number } = {},
): string {
  const plan = options.plan ?? health.plan;
  const nodes = options.live?.nodes ?? health.nodes;
  const coordinator = coordinatorLine(health);
  const lines = [
    `cluster ${health.clusterId}  model ${health.modelId}  state ${health.state}${health.ok ? " (serving)" : ""}`,
  ];
  if (health.message) lines.push(`  ${health.message}`);
  lines.push(
    `this node: ${health.node.name} (${health.node.id}), ${health.node.role}, API ${health.node.apiUrl}`,
    `coordinator: ${coordinator}`,
    `nodes (${nodes.length}, ${health.numLayers} layers):`,
    NODE_HEADER,
    ...nodes.map(nodeLine),
    ...planLines(plan),
  );
  if (options.live) lines.push(...requestLines(options.live, options.now ?? Date.now()));
  else if (options.liveError) lines.push(`live figures: unavailable: ${options.liveError}`);
  return `${lines.join("\n")}\n`;
}

/** Runtime check of a snapshot body before rendering it (it comes over the network). */
export function isClusterSnapshot(value: unknown): value is ClusterSnapshot {
  const v = value as Partial<ClusterSnapshot> | null;
  return (
    typeof v === "object" &&
    v !== null &&
    Array.isArray(v.nodes) &&
    Array.isArray(v.inFlight) &&
    Array.isArray(v.recent) &&
    Array.isArray(v.throughput) &&
    Array.isArray(v.ttftMs)
  );
}
