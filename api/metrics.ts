// GET /metrics: the cluster snapshot in Prometheus text format.
// Gauges are read from the snapshot at scrape time (so a node that leaves drops its series); request counters
// and the TTFT histogram count each finished request once: at the moment it finishes when the API's request log
// reports it (`finished`), else as it shows up in the snapshot's `recent` list (which keeps only the latest).
import type { FastifyInstance } from "fastify";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { type NodeHealth, type NodeView, prefixCacheHitRates } from "../cluster/health.js";
import type { ClusterSnapshot, RequestSnapshot } from "../cluster/snapshot.js";

export interface MetricsOptions {
  snapshot: () => ClusterSnapshot;
  /** Also export Node.js process metrics (heap, event loop lag, ...). Default true. */
  processMetrics?: boolean;
  /**
   * Subscribes to every request as it finishes (RequestLog.onFinished): the counters then count at the event,
   * and none is missed however many finish between scrapes. Without it they fold in the snapshot's `recent`.
   */
  finished?: (listener: (request: RequestSnapshot) => void) => void;
}

const PREFIX = "studio_cluster_";
const NODE_LABELS = ["node_id", "node_name"] as const;
const HEALTHS: NodeHealth[] = ["ok", "loading", "degraded", "lost"];
const CLUSTER_STATES: ClusterSnapshot["state"][] = ["ready", "loading", "planning", "not_ready"];
const FINISHED: ReadonlySet<RequestSnapshot["status"]> = new Set([
  "completed",
  "incomplete",
  "failed",
  "cancelled",
]);
/** TTFT buckets in seconds: interactive answers land in the low buckets, long cold prefills in the high ones. */
const TTFT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60];

type NodeGaugeSpec = [name: string, help: string, value: (n: NodeView) => number | undefined];

const nodeGaugeSpecs: NodeGaugeSpec[] = [
  ["node_tokens_per_second", "Tokens per second processed by the node's engine", (n) => n.tokensPerSecond],
  ["node_busy_ratio", "Fraction of the last second the node's engine was computing", (n) => n.busyFraction],
  ["node_queue_depth", "Work items queued at the node", (n) => n.queueDepth],
  ["node_kv_bytes", "Bytes of KV cache held by the node", (n) => n.kvBytes],
  ["node_weight_bytes", "Bytes of model weights held by the node", (n) => n.weightBytes],
  ["node_memory_used_bytes", "Memory in use on the node", (n) => n.memoryUsedBytes],
  ["node_memory_total_bytes", "Total memory of the node", (n) => n.memoryTotalBytes],
  ["node_layer_start", "First layer held by the node (inclusive)", (n) => n.layerStart],
  ["node_layer_end", "End of the node's layer range (exclusive)", (n) => n.layerEnd],
  ["node_layers", "Number of layers held by the node", layerCount],
  [
    "node_link_latency_seconds",
    "Median latency of the node's data link to its downstream stage over the last minute",
    (n) => (n.linkLatencyUs === undefined ? undefined : n.linkLatencyUs / 1e6),
  ],
  ["node_load_progress_ratio", "Shard load progress while the node is loading", (n) => n.loadProgress],
  [
    "node_prefix_cache_ram_bytes",
    "Bytes of prefix-cache blocks in the node's RAM",
    (n) => n.prefixCache?.ramBytes,
  ],
  [
    "node_prefix_cache_disk_bytes",
    "Bytes of prefix-cache blocks on the node's disk",
    (n) => n.prefixCache?.diskBytes,
  ],
  [
    "node_prefix_cache_disk_budget_bytes",
    "Disk bytes the node's prefix-cache blocks may take",
    (n) => n.prefixCache?.diskBudgetBytes,
  ],
  [
    "node_prefix_cache_ram_hit_tokens",
    "Prompt positions the node assembled from RAM blocks since its shard loaded",
    (n) => n.prefixCache?.ramHitTokens,
  ],
  [
    "node_prefix_cache_disk_hit_tokens",
    "Prompt positions the node assembled from disk blocks since its shard loaded",
    (n) => n.prefixCache?.diskHitTokens,
  ],
  [
    "node_prompt_tokens_computed",
    "Prompt positions the node computed by a prefill since its shard loaded",
    (n) => n.prefixCache?.computedTokens,
  ],
  [
    "node_prefix_cache_ram_hit_ratio",
    "Share of the node's prompt positions assembled from RAM blocks since its shard loaded",
    (n) => n.prefixCache && prefixCacheHitRates(n.prefixCache).ram,
  ],
  [
    "node_prefix_cache_disk_hit_ratio",
    "Share of the node's prompt positions assembled from disk blocks since its shard loaded",
    (n) => n.prefixCache && prefixCacheHitRates(n.prefixCache).disk,
  ],
  ["node_up", "1 unless the node is lost", (n) => (n.health === "lost" ? 0 : 1)],
  [
    "node_is_coordinator",
    "1 on the node currently acting as coordinator",
    (n) => Number(n.role === "coordinator"),
  ],
];

function layerCount(n: NodeView): number {
  if (n.layerStart === undefined || n.layerEnd === undefined) return 0;
  return n.layerEnd - n.layerStart;
}

function nodeLabels(n: NodeView): Record<(typeof NODE_LABELS)[number], string> {
  return { node_id: n.id, node_name: n.name };
}

/** The Prometheus registry for one cluster; `render()` reads a fresh snapshot and returns the text format. */
export class ClusterMetrics {
  readonly registry = new Registry();
  private readonly snapshot: () => ClusterSnapshot;
  /** Ids of finished requests already counted that are still in `recent` (older ids cannot come back). */
  private counted = new Set<string>();
  private readonly requests: Counter<"api" | "status">;
  private readonly promptTokens: Counter<"api">;
  private readonly cachedTokens: Counter<"api">;
  private readonly outputTokens: Counter<"api">;
  private readonly ttft: Histogram<"api">;
  private current: ClusterSnapshot | undefined;
  /** Counted as requests finish (no folding of `recent` at scrape time). */
  private readonly atEvent: boolean;

  constructor(options: MetricsOptions) {
    this.snapshot = options.snapshot;
    const registers = [this.registry];
    for (const [name, help, value] of nodeGaugeSpecs) this.addNodeGauge(name, help, value);
    this.addNodeHealthGauge();
    this.addClusterGauges();
    this.requests = new Counter({
      name: `${PREFIX}requests_total`,
      help: "Finished requests by API and final status",
      labelNames: ["api", "status"],
      registers,
    });
    this.promptTokens = this.tokenCounter("prompt_tokens_total", "Prompt tokens of finished requests");
    this.cachedTokens = this.tokenCounter(
      "cached_prompt_tokens_total",
      "Prompt tokens of finished requests served from the prefix cache",
    );
    this.outputTokens = this.tokenCounter("output_tokens_total", "Output tokens of finished requests");
    this.ttft = new Histogram({
      name: `${PREFIX}time_to_first_token_seconds`,
      help: "Time to first token of finished requests",
      labelNames: ["api"],
      buckets: TTFT_BUCKETS,
      registers,
    });
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
    this.atEvent = options.finished !== undefined;
    options.finished?.((r) => this.countOne(r));
  }

  /** Takes one snapshot, folds its finished requests into the counters and renders every metric. */
  async render(): Promise<string> {
    this.current = this.snapshot();
    if (!this.atEvent) this.countFinished(this.current.recent);
    try {
      return await this.registry.metrics();
    } finally {
      this.current = undefined;
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private countFinished(recent: RequestSnapshot[]): void {
    const stillRecent = new Set<string>();
    for (const r of recent) {
      if (!FINISHED.has(r.status)) continue;
      stillRecent.add(r.id);
      if (!this.counted.has(r.id)) this.countOne(r);
    }
    this.counted = stillRecent;
  }

  private countOne(r: RequestSnapshot): void {
    if (!FINISHED.has(r.status)) return;
    this.requests.inc({ api: r.api, status: r.status });
    this.promptTokens.inc({ api: r.api }, r.promptTokens);
    this.cachedTokens.inc({ api: r.api }, r.cachedTokens);
    this.outputTokens.inc({ api: r.api }, r.outputTokens);
    if (r.ttftMs !== undefined) this.ttft.observe({ api: r.api }, r.ttftMs / 1000);
  }

  private tokenCounter(name: string, help: string): Counter<"api"> {
    return new Counter({ name: PREFIX + name, help, labelNames: ["api"], registers: [this.registry] });
  }

  /** The snapshot of the scrape in progress (collect callbacks run inside render()). */
  private scrape(): ClusterSnapshot {
    return this.current ?? this.snapshot();
  }

  private addNodeGauge(name: string, help: string, value: (n: NodeView) => number | undefined): void {
    const metrics = this;
    new Gauge({
      name: PREFIX + name,
      help,
      labelNames: NODE_LABELS,
      registers: [this.registry],
      collect() {
        // Reset first so that nodes gone from the snapshot do not linger with their last value.
        this.reset();
        for (const n of metrics.scrape().nodes) {
          const v = value(n);
          if (v !== undefined && Number.isFinite(v)) this.set(nodeLabels(n), v);
        }
      },
    });
  }

  private addNodeHealthGauge(): void {
    const metrics = this;
    new Gauge({
      name: `${PREFIX}node_health`,
      help: "1 for the node's current health state, 0 for the others",
      labelNames: [...NODE_LABELS, "health"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const n of metrics.scrape().nodes) {
          for (const h of HEALTHS) this.set({ ...nodeLabels(n), health: h }, Number(n.health === h));
        }
      },
    });
  }

  private addClusterGauges(): void {
    const metrics = this;
    const registers = [this.registry];
    new Gauge({
      name: `${PREFIX}state`,
      help: "1 for the cluster's current state, 0 for the others",
      labelNames: ["state"],
      registers,
      collect() {
        const s = metrics.scrape().state;
        for (const state of CLUSTER_STATES) this.set({ state }, Number(s === state));
      },
    });
    new Gauge({
      name: `${PREFIX}info`,
      help: "Cluster identity: always 1, labelled with the cluster, model and coordinator",
      labelNames: ["cluster_id", "model_id", "coordinator_id"],
      registers,
      collect() {
        const s = metrics.scrape();
        this.reset();
        this.set({ cluster_id: s.clusterId, model_id: s.modelId, coordinator_id: s.coordinatorId }, 1);
      },
    });
    new Gauge({
      name: `${PREFIX}model_layers`,
      help: "Number of transformer layers in the served model",
      registers,
      collect() {
        this.set(metrics.scrape().numLayers);
      },
    });
    new Gauge({
      name: `${PREFIX}nodes`,
      help: "Nodes known to the cluster, lost ones included",
      registers,
      collect() {
        this.set(metrics.scrape().nodes.length);
      },
    });
    new Gauge({
      name: `${PREFIX}requests_in_flight`,
      help: "Requests being prefilled or decoded",
      labelNames: ["status"],
      registers,
      collect() {
        const inFlight = metrics.scrape().inFlight;
        this.set({ status: "prefill" }, inFlight.filter((r) => r.status === "prefill").length);
        this.set({ status: "decoding" }, inFlight.filter((r) => r.status === "decoding").length);
      },
    });
    new Gauge({
      name: `${PREFIX}output_tokens_per_second`,
      help: "Aggregate output tokens per second over the last second",
      registers,
      collect() {
        const series = metrics.scrape().throughput;
        this.set(series.length > 0 ? series[series.length - 1].v : 0);
      },
    });
  }
}

/** Adds GET /metrics to `app`, rendering the snapshot that `options.snapshot` returns at each scrape. */
export function registerMetrics(app: FastifyInstance, options: MetricsOptions): ClusterMetrics {
  const metrics = new ClusterMetrics(options);
  app.get("/metrics", async (_request, reply) => {
    const text = await metrics.render();
    return reply.header("content-type", metrics.contentType).send(text);
  });
  return metrics;
}
