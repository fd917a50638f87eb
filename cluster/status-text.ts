// The cluster snapshot as plain text, for `cluster status`: the same picture as the dashboard (nodes with their
// layers and live figures, link latency, cluster throughput and TTFT, requests in flight).
import { humanBytes } from "./health.js";
import type { ClusterSnapshot, NodeSnapshot, RequestSnapshot } from "./snapshot.js";

function pad(text: string, width: number): string {
  return text.length >= width ? `${text} ` : text.padEnd(width);
}

function layersOf(n: NodeSnapshot): string {
  if (n.layerStart === undefined || n.layerEnd === undefined) return "-";
  const parts = [n.embed ? "E" : "", n.head ? "H" : ""].join("");
  return `[${n.layerStart},${n.layerEnd})${parts}`;
}

function latencyOf(us: number | undefined): string {
  if (us === undefined) return "-";
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${Math.round(us)} µs`;
}

function healthOf(n: NodeSnapshot): string {
  if (n.health === "loading" && n.loadProgress !== undefined)
    return `loading ${Math.round(n.loadProgress * 100)}%`;
  return n.health;
}

function nodeLine(n: NodeSnapshot): string {
  return (
    `  ${n.role === "coordinator" ? "*" : " "} ${pad(n.name, 14)}${pad(healthOf(n), 13)}${pad(layersOf(n), 11)}` +
    `${pad(n.tokensPerSecond.toFixed(1), 8)}${pad(`${Math.round(n.busyFraction * 100)}%`, 6)}${pad(String(n.queueDepth), 7)}` +
    `${pad(`${humanBytes(n.memoryUsedBytes)}/${humanBytes(n.memoryTotalBytes)}`, 20)}${pad(humanBytes(n.kvBytes), 10)}` +
    latencyOf(n.linkLatencyUs)
  );
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

/** `now` is the server's clock when known (request ages do not depend on the caller's clock). */
export function renderSnapshotText(snap: ClusterSnapshot, now = Date.now()): string {
  const lines = [`live (${snap.nodes.length} nodes, ${snap.numLayers} layers, state ${snap.state}):`];
  lines.push(
    `    ${pad("node", 14)}${pad("health", 13)}${pad("layers", 11)}${pad("tok/s", 8)}${pad("busy", 6)}` +
      `${pad("queue", 7)}${pad("memory", 20)}${pad("KV", 10)}link`,
  );
  for (const n of snap.nodes) lines.push(nodeLine(n));
  const last = snap.throughput.at(-1)?.v ?? 0;
  const minute = snap.throughput.slice(-60);
  const average = minute.length ? minute.reduce((a, p) => a + p.v, 0) / minute.length : 0;
  const ttft = median(snap.ttftMs.slice(-20).map((p) => p.v));
  lines.push(
    `throughput ${last.toFixed(1)} tok/s (last second), ${average.toFixed(1)} tok/s (last minute)` +
      `; TTFT median ${ttft === undefined ? "-" : `${Math.round(ttft)} ms`} (last ${Math.min(20, snap.ttftMs.length)})`,
  );
  lines.push(`requests in flight (${snap.inFlight.length}):`);
  for (const r of snap.inFlight) lines.push(requestLine(r, now));
  const byStatus = new Map<string, number>();
  for (const r of snap.recent) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
  const counts = [...byStatus].map(([status, n]) => `${n} ${status}`).join(", ");
  lines.push(`recent requests: ${snap.recent.length}${counts ? ` (${counts})` : ""}`);
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
