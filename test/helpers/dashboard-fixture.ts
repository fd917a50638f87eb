// A cluster snapshot whose figures are driven by the test (tick by tick), for the renderers' tests:
// the dashboard and /metrics only render snapshots, so a snapshot the test controls exercises them fully.
import type { NodeView } from "../../cluster/health.js";
import type { ClusterSnapshot, RequestSnapshot } from "../../cluster/snapshot.js";

const GiB = 1024 ** 3;
/** Tick 0 is the moment the fixture was loaded, so the series end "now" for the viewer. */
const EPOCH = Date.now();

export interface FixtureOptions {
  /** Number of nodes (2 or 3). */
  nodes?: number;
}

function node(i: number, tick: number, count: number, numLayers: number): NodeView {
  const names = ["studio-alpha", "studio-beta", "studio-gamma"];
  const per = Math.ceil(numLayers / count);
  const layerStart = i * per;
  const layerEnd = Math.min(numLayers, layerStart + per);
  const total = 512 * GiB;
  const weightBytes = Math.round((130 * GiB * (layerEnd - layerStart)) / numLayers);
  const kvBytes = (2 + tick * 0.5 + i) * GiB;
  return {
    id: `node-${i}`,
    name: names[i],
    address: `10.0.0.${i + 10}:7400`,
    role: i === 0 ? "coordinator" : "node",
    chip: "Apple M3 Ultra",
    backends: ["cpu", "mlx"],
    backend: "mlx",
    memoryBandwidthBps: 819e9,
    planId: "plan-demo",
    loaded: true,
    cores: 32,
    memoryTotalBytes: total,
    memoryUsedBytes: weightBytes + kvBytes + 20 * GiB,
    layerStart,
    layerEnd,
    embed: i === 0,
    head: i === count - 1,
    weightBytes,
    kvBytes,
    tokensPerSecond: 40 + tick * 3 + i * 5,
    busyFraction: Math.min(1, 0.3 + tick * 0.05 + i * 0.1),
    queueDepth: (tick + i) % 5,
    health: i === 2 && tick % 2 === 1 ? "degraded" : "ok",
    inboundHopP50Us: i === 0 ? 0 : 180 + tick * 10,
    linkLatencyUs: i === count - 1 ? undefined : 180 + tick * 10,
    lastSeenMs: 200,
    prefixCache: {
      ramBytes: (1 + tick * 0.25) * GiB,
      diskBytes: (10 + tick) * GiB,
      diskBudgetBytes: 400 * GiB,
      ramHitTokens: 6000 + tick * 1000,
      diskHitTokens: 2000 + i * 500,
      computedTokens: 2000,
    },
  };
}

function request(id: number, tick: number, finished: boolean): RequestSnapshot {
  const now = EPOCH + tick * 1000;
  // Request `id` finished at tick id+1; the ones in flight started a few seconds ago.
  const startedAt = finished ? now - (tick - id) * 1000 - 4000 : now - 1500 - (id % 3) * 2500;
  return {
    id: `resp_${id.toString(16).padStart(6, "0")}`,
    api: id % 2 === 0 ? "responses" : "chat.completions",
    startedAt,
    status: finished ? (id % 7 === 3 ? "incomplete" : "completed") : id % 2 === 0 ? "decoding" : "prefill",
    promptTokens: 12_000 + id * 37,
    cachedTokens: finished ? 11_000 : 0,
    outputTokens: finished ? 300 + id : tick * 4,
    ttftMs: finished ? 400 + id * 10 : undefined,
    tokensPerSecond: finished ? 45 + (id % 9) : undefined,
  };
}

/** The cluster at time `tick`: every per-node figure, the series and the request lists change with it. */
export function fixtureSnapshot(tick: number, options: FixtureOptions = {}): ClusterSnapshot {
  const count = options.nodes ?? 3;
  const numLayers = 62;
  const now = EPOCH + tick * 1000;
  const finishedCount = tick;
  const points = 120 + tick;
  return {
    clusterId: "c-7f3a",
    modelId: "MiniMax-M2.1-4bit",
    numLayers,
    coordinatorId: "node-0",
    state: "ready",
    nodes: Array.from({ length: count }, (_, i) => node(i, tick, count, numLayers)),
    inFlight: [request(1000 + tick, tick, false), request(1001 + tick, tick, false)],
    recent: Array.from({ length: Math.min(finishedCount, 20) }, (_, k) =>
      request(finishedCount - 1 - k, tick, true),
    ),
    throughput: Array.from({ length: points }, (_, k) => ({
      t: now - (points - 1 - k) * 1000,
      v: 60 + 30 * Math.sin(k / 9) + (k % 7) * 2 + tick,
    })),
    ttftMs: Array.from({ length: Math.min(finishedCount + 10, 40) }, (_, k) => ({
      t: now - (40 - k) * 4000,
      v: 350 + ((k * 97) % 400) + tick * 5,
    })),
  };
}
