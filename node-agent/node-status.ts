// The figures a node reports on its Status stream (the heartbeat membership watches): its shard, its engine's
// throughput and busy share over the last interval, its queue, memory and KV, and the latency of frames
// arriving on its inbound data stream.
import { nowUs } from "../common/wire/frames.js";
import type { NodeStatus } from "../common/wire/types.js";
import { systemMemory } from "./memory-gauge.js";
import type { LoadedShard } from "./shard.js";
import type { StageCounters } from "./stage.js";

/** Successive NodeStatus messages of one Status stream: rates are taken between two of them. */
export class StatusReporter {
  private previous: { at: number; counters: StageCounters | undefined } = {
    at: performance.now(),
    counters: undefined,
  };

  constructor(
    private readonly nodeId: string,
    /** Hop figures cover frames received since this wall-clock time (ms; 0 = the last minute). */
    private readonly hopsSinceMs: number,
  ) {}

  next(shard: LoadedShard | undefined): NodeStatus {
    const now = shard?.stage.snapshot();
    const at = performance.now();
    const status = this.build(shard, now, this.previous.counters, at - this.previous.at);
    this.previous = { at, counters: now };
    return status;
  }

  private build(
    shard: LoadedShard | undefined,
    now: StageCounters | undefined,
    before: StageCounters | undefined,
    elapsedMs: number,
  ): NodeStatus {
    // Counters of another stage (a new shard) start again: no rate across the change.
    const sameStage = now && before && now.batches >= before.batches;
    const delta = (key: "tokens" | "busyMs" | "batches" | "items"): number =>
      now ? now[key] - (sameStage ? before[key] : now[key]) : 0;
    const seconds = Math.max(elapsedMs, 1) / 1000;
    const stats = shard?.engine.stats();
    const hops = shard?.stage.hopPercentiles(this.hopsSinceMs) ?? { p50: 0, p99: 0, count: 0 };
    const batches = delta("batches");
    const cache = shard?.blocks.figures();
    const memory = systemMemory.read();
    return {
      node_id: this.nodeId,
      time_us: nowUs(),
      plan_id: shard?.request.plan_id ?? "",
      loaded: shard !== undefined,
      layer_start: shard?.request.layer_start ?? 0,
      layer_end: shard?.request.layer_end ?? 0,
      embed: shard?.request.embed ?? false,
      head: shard?.request.head ?? false,
      tokens_per_s: delta("tokens") / seconds,
      busy_fraction: Math.min(1, delta("busyMs") / Math.max(elapsedMs, 1)),
      queue_depth: now?.queueDepth ?? 0,
      kv_bytes: stats?.kvBytes ?? 0,
      weight_bytes: shard?.weightBytes ?? 0,
      memory_used: memory.totalBytes - memory.availableBytes,
      memory_total: memory.totalBytes,
      sequences: now?.sequences ?? 0,
      inbound_hop_p50_us: hops.p50,
      inbound_hop_p99_us: hops.p99,
      batches: now?.batches ?? 0,
      mean_batch_items: batches > 0 ? delta("items") / batches : 0,
      backend: shard?.backend ?? "",
      inbound_hop_count: hops.count,
      cache_ram_bytes: cache?.ramBytes ?? 0,
      cache_disk_bytes: cache?.diskBytes ?? 0,
      cache_disk_budget_bytes: cache?.diskBudgetBytes ?? 0,
      cache_ram_hit_tokens: cache?.ramHitTokens ?? 0,
      cache_disk_hit_tokens: cache?.diskHitTokens ?? 0,
      prompt_tokens_computed: now?.promptTokens ?? 0,
    };
  }
}
