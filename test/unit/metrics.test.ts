// /metrics renders the cluster snapshot: per-node series follow the snapshot between scrapes, request
// counters count each finished request once, and nodes that leave drop their series.
import Fastify, { type FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerMetrics } from "../../api/metrics.js";
import { RequestLog } from "../../api/request-log.js";
import { fixtureSnapshot } from "../helpers/dashboard-fixture.js";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (enough of it for prom-client's output). */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line.startsWith("# TYPE ")) {
      const [name, type] = line.slice(7).split(" ");
      types.set(name, type);
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparseable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const hit = samples.find(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return hit?.value;
}

describe("/metrics", () => {
  let app: FastifyInstance;
  let tick = 1;
  let nodes = 3;

  beforeAll(async () => {
    app = Fastify();
    registerMetrics(app, { snapshot: () => fixtureSnapshot(tick, { nodes }) });
    await app.ready();
  });
  afterAll(async () => {
    await app.close();
  });

  async function scrape() {
    const res = await app.inject({ method: "GET", url: "/metrics" });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/plain/);
    return parseExposition(res.body);
  }

  it("exports per-node gauges that change when the snapshot changes", async () => {
    tick = 1;
    const first = await scrape();
    expect(first.types.get("studio_cluster_node_tokens_per_second")).toBe("gauge");
    expect(first.types.get("studio_cluster_time_to_first_token_seconds")).toBe("histogram");
    const beta = { node_id: "node-1", node_name: "studio-beta" };
    const snap1 = fixtureSnapshot(1);
    expect(value(first.samples, "studio_cluster_node_tokens_per_second", beta)).toBe(
      snap1.nodes[1].tokensPerSecond,
    );
    expect(value(first.samples, "studio_cluster_node_kv_bytes", beta)).toBe(snap1.nodes[1].kvBytes);
    expect(value(first.samples, "studio_cluster_node_layer_start", beta)).toBe(snap1.nodes[1].layerStart);
    const cache = snap1.nodes[1].prefixCache!;
    expect(value(first.samples, "studio_cluster_node_prefix_cache_ram_bytes", beta)).toBe(cache.ramBytes);
    expect(value(first.samples, "studio_cluster_node_prefix_cache_disk_bytes", beta)).toBe(cache.diskBytes);
    expect(value(first.samples, "studio_cluster_node_prefix_cache_disk_budget_bytes", beta)).toBe(
      cache.diskBudgetBytes,
    );
    const served = cache.ramHitTokens + cache.diskHitTokens + cache.computedTokens;
    expect(value(first.samples, "studio_cluster_node_prefix_cache_ram_hit_ratio", beta)).toBeCloseTo(
      cache.ramHitTokens / served,
    );
    expect(value(first.samples, "studio_cluster_node_prefix_cache_disk_hit_ratio", beta)).toBeCloseTo(
      cache.diskHitTokens / served,
    );
    expect(value(first.samples, "studio_cluster_node_prompt_tokens_computed", beta)).toBe(
      cache.computedTokens,
    );
    expect(value(first.samples, "studio_cluster_node_layer_end", beta)).toBe(snap1.nodes[1].layerEnd);
    expect(value(first.samples, "studio_cluster_node_memory_total_bytes", beta)).toBe(512 * 1024 ** 3);
    expect(value(first.samples, "studio_cluster_node_link_latency_seconds", beta)).toBeCloseTo(190e-6);
    expect(
      value(first.samples, "studio_cluster_node_health", { node_id: "node-2", health: "degraded" }),
    ).toBe(1);
    expect(value(first.samples, "studio_cluster_node_health", { node_id: "node-2", health: "ok" })).toBe(0);
    expect(value(first.samples, "studio_cluster_node_is_coordinator", { node_id: "node-0" })).toBe(1);
    expect(value(first.samples, "studio_cluster_state", { state: "ready" })).toBe(1);
    expect(value(first.samples, "studio_cluster_info", { model_id: "MiniMax-M2.1-4bit" })).toBe(1);

    tick = 4;
    const second = await scrape();
    const snap4 = fixtureSnapshot(4);
    for (const [i, n] of snap4.nodes.entries()) {
      const labels = { node_id: n.id, node_name: n.name };
      const before = value(first.samples, "studio_cluster_node_tokens_per_second", labels);
      const after = value(second.samples, "studio_cluster_node_tokens_per_second", labels);
      expect(after, `node ${i}`).toBe(n.tokensPerSecond);
      expect(after).not.toBe(before);
      expect(value(second.samples, "studio_cluster_node_busy_ratio", labels)).toBe(n.busyFraction);
      expect(value(second.samples, "studio_cluster_node_queue_depth", labels)).toBe(n.queueDepth);
      expect(value(second.samples, "studio_cluster_node_memory_used_bytes", labels)).toBe(n.memoryUsedBytes);
    }
    expect(value(second.samples, "studio_cluster_node_health", { node_id: "node-2", health: "ok" })).toBe(1);
  });

  it("counts each finished request once and observes its TTFT", async () => {
    tick = 5;
    const a = await scrape();
    const countA = value(a.samples, "studio_cluster_time_to_first_token_seconds_count", { api: "responses" });
    const outA = value(a.samples, "studio_cluster_output_tokens_total", { api: "responses" }) ?? 0;
    // Scraping the same snapshot again counts nothing new.
    const again = await scrape();
    expect(
      value(again.samples, "studio_cluster_time_to_first_token_seconds_count", { api: "responses" }),
    ).toBe(countA);

    tick = 8; // requests 5, 6, 7 finished since tick 5: 6 is a "responses" one (even id), 5 and 7 chat.
    const b = await scrape();
    const countB = value(b.samples, "studio_cluster_time_to_first_token_seconds_count", { api: "responses" });
    expect(countB).toBe((countA ?? 0) + 1);
    const outB = value(b.samples, "studio_cluster_output_tokens_total", { api: "responses" });
    expect(outB).toBe(outA + 300 + 6);
    const total = b.samples
      .filter((s) => s.name === "studio_cluster_requests_total")
      .reduce((sum, s) => sum + s.value, 0);
    expect(total).toBe(8); // ids 0..7 finished by tick 8, each counted once across all scrapes
    expect(value(b.samples, "studio_cluster_requests_in_flight", { status: "decoding" })).toBe(1);
  });

  it("drops the series of a node that left the snapshot", async () => {
    nodes = 3;
    const withGamma = await scrape();
    expect(value(withGamma.samples, "studio_cluster_node_up", { node_id: "node-2" })).toBe(1);
    nodes = 2;
    const without = await scrape();
    expect(without.samples.some((s) => s.labels.node_id === "node-2")).toBe(false);
    expect(value(without.samples, "studio_cluster_nodes")).toBe(2);
  });
});

describe("/metrics request counters, counted as requests finish", () => {
  it("miss none of the requests that scrolled out of the recent list between two scrapes", async () => {
    const requests = new RequestLog({ recentLimit: 5 });
    const app = Fastify();
    registerMetrics(app, {
      snapshot: () => ({ ...fixtureSnapshot(1, { nodes: 1 }), ...requests.figures() }),
      finished: (listener) => requests.onFinished(listener),
      processMetrics: false,
    });
    await app.ready();
    const scrape = async () =>
      parseExposition((await app.inject({ method: "GET", url: "/metrics" })).body).samples;
    const finish = (n: number, status: "completed" | "failed") => {
      for (let i = 0; i < n; i++) {
        const t = requests.begin("chat.completions", 10);
        t.token();
        t.token();
        t.finish(status);
      }
    };
    finish(3, "completed");
    await scrape();
    finish(20, "completed"); // 20 between scrapes: only the last 5 are still listed
    finish(2, "failed");
    const samples = await scrape();
    const api = { api: "chat.completions" };
    expect(value(samples, "studio_cluster_requests_total", { ...api, status: "completed" })).toBe(23);
    expect(value(samples, "studio_cluster_requests_total", { ...api, status: "failed" })).toBe(2);
    expect(value(samples, "studio_cluster_prompt_tokens_total", api)).toBe(250);
    expect(value(samples, "studio_cluster_output_tokens_total", api)).toBe(50);
    expect(value(samples, "studio_cluster_time_to_first_token_seconds_count", api)).toBe(25);
    // A second scrape counts nothing twice.
    expect(value(await scrape(), "studio_cluster_requests_total", { ...api, status: "completed" })).toBe(23);
    await app.close();
  });
});
