// The dashboard and /metrics on a real two-node cluster (two `cluster up` processes from dist/ on loopback, joined
// with --peer, an API key set): the other node serves the page itself with the coordinator's live picture, read
// over the gRPC plane (no redirect to the coordinator's API, which may listen on its own loopback); the page shows
// both nodes and the layer map of the real plan, and a generation through the API moves the live figures (a
// request in flight, tokens/s, the recent table, throughput). /metrics, scraped during a generation, shows every
// node's tokens/s and KV bytes move and counts the request. Saves test-output/dashboard-cluster.png.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { DASHBOARD_LIVE_PATH } from "../../dashboard/plugin.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const CHROMIUM = "/usr/bin/chromium";
const OUTPUT = join(import.meta.dirname, "..", "test-output");
const API_KEY = "dashboard-test-key";
const auth = { authorization: `Bearer ${API_KEY}` };

const home = mkdtempSync(join(tmpdir(), "dashboard-cluster-"));
const running: CliProcess[] = [];

interface Cluster {
  coordinatorUrl: string;
  followerUrl: string;
  coordinator: ClusterHealth;
  /** Token ids that would end a reply early: banned, so a generation runs its whole budget. */
  stopTokenIds: number[];
}

async function startTwoNodes(): Promise<Cluster> {
  const modelDir = await ensureModel("tiny", "tiny");
  const key = generateClusterKey();
  const [grpcA, grpcB, apiA, apiB] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const common = ["--model", modelDir, "--key", key, "--no-bonjour", "--threads", "1"];
  common.push("--memory-bandwidth", "50", "--api-key", API_KEY);
  const env = { STUDIO_CLUSTER_HOME: home };
  const a = runCli(["up", ...common, "--name", "alpha", "--port", `${grpcA}`, "--api-port", `${apiA}`], env);
  running.push(a);
  // Only beta names alpha: alpha learns of beta from its Hello.
  const b = runCli(
    [
      "up",
      ...common,
      "--name",
      "beta",
      "--port",
      `${grpcB}`,
      "--api-port",
      `${apiB}`,
      "--peer",
      `127.0.0.1:${grpcA}`,
    ],
    env,
  );
  running.push(b);
  return settle(a, b, [`http://127.0.0.1:${apiA}`, `http://127.0.0.1:${apiB}`], modelDir);
}

async function settle(a: CliProcess, b: CliProcess, urls: string[], modelDir: string): Promise<Cluster> {
  let coordinatorUrl = "";
  await waitForHealth(
    urls[0],
    (h) => {
      // Until alpha has re-elected with both members it may still name itself: wait for the smallest id.
      const elected =
        h.coordinator?.id ===
        liveNodes(h)
          .map((m) => m.id)
          .sort()[0];
      if (liveNodes(h).length === 2 && elected && h.coordinator?.apiUrl)
        coordinatorUrl = h.coordinator.apiUrl;
      return coordinatorUrl !== "";
    },
    "alpha to see two members",
    [a, b],
    60_000,
    API_KEY,
  );
  const coordinator = await waitForHealth(
    coordinatorUrl,
    (h) => h.state === "ready" && h.plan?.stages.length === 2,
    "a two-stage plan",
    [a, b],
    60_000,
    API_KEY,
  );
  const followerUrl = urls.find((u) => u !== coordinatorUrl) ?? "";
  await waitForHealth(followerUrl, (h) => h.state === "following", "the follower", [a, b], 30_000, API_KEY);
  return {
    coordinatorUrl,
    followerUrl,
    coordinator,
    stopTokenIds: ChatFormatter.forModelDir(modelDir).stopTokenIds,
  };
}

/**
 * Tokens of the long generations: at a few hundred tokens/s here, several seconds of decoding, long enough to be
 * watched while it runs (the checks wait on what they see, so a slower machine only takes longer).
 */
const LONG = 2500;

/** A streaming chat completion of exactly `tokens` tokens; resolves with the usage when the stream ends. */
async function generate(cluster: Cluster, tokens: number): Promise<{ completionTokens: number }> {
  const response = await fetch(`${cluster.coordinatorUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...auth },
    body: JSON.stringify({
      messages: [{ role: "user", content: "Tell me about the cluster dashboard." }],
      max_tokens: tokens,
      temperature: 0,
      stream: true,
      logit_bias: Object.fromEntries(cluster.stopTokenIds.map((id) => [String(id), -100])),
    }),
    signal: AbortSignal.timeout(60_000),
  });
  expect(response.status).toBe(200);
  const text = await response.text();
  const usage = /"completion_tokens":(\d+)/.exec(text);
  if (!usage) throw new Error(`no usage in the stream: ${text.slice(-500)}`);
  return { completionTokens: Number(usage[1]) };
}

/** Sum of the samples of one metric whose labels include `labels`. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  let found = false;
  for (const line of text.split("\n")) {
    const m = /^([a-z_:]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).some(([k, v]) => have[k] !== v)) continue;
    sum += Number(m[3]);
    found = true;
  }
  return found ? sum : Number.NaN;
}

async function scrape(url: string): Promise<string> {
  const response = await fetch(`${url}/metrics`, { headers: auth });
  expect(response.status).toBe(200);
  return response.text();
}

let cluster: Cluster;

beforeAll(async () => {
  cluster = await startTwoNodes();
}, 90_000);

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGTERM")));
  rmSync(home, { recursive: true, force: true });
});

describe("dashboard and /metrics on a two-node cluster", () => {
  it("keeps the page, its data, /metrics and the live WebSocket under the API key", async () => {
    const url = cluster.coordinatorUrl;
    for (const path of ["/", "/metrics", "/dashboard/snapshot.json"]) {
      expect((await fetch(`${url}${path}`)).status, path).toBe(401);
      expect((await fetch(`${url}${path}?key=wrong`)).status, path).toBe(401);
      expect((await fetch(`${url}${path}?key=${API_KEY}`)).status, path).toBe(200);
      expect((await fetch(`${url}${path}`, { headers: auth })).status, path).toBe(200);
    }
    // The static assets carry no figures: open, so the page loads them without the key.
    expect((await fetch(`${url}/dashboard/dashboard.js`)).status).toBe(200);
    const upgrade = async (query: string) => {
      const ws = new WebSocket(`${url.replace("http", "ws")}${DASHBOARD_LIVE_PATH}${query}`);
      const code = await new Promise<number | undefined>((resolve) => {
        ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
        ws.on("open", () => resolve(101));
        ws.on("error", () => resolve(undefined));
      });
      ws.terminate();
      return code;
    };
    expect(await upgrade("")).toBe(401);
    expect(await upgrade(`?key=${API_KEY}`)).toBe(101);
    // The other node serves the page itself, under its key, and the coordinator's snapshot (with the plan).
    const follower = cluster.followerUrl;
    expect((await fetch(`${follower}/`, { redirect: "manual" })).status).toBe(401);
    expect((await fetch(`${follower}/?key=${API_KEY}`, { redirect: "manual" })).status).toBe(200);
    expect((await fetch(`${follower}/dashboard/snapshot.json`)).status).toBe(401);
    const relayed = await fetch(`${follower}/dashboard/snapshot.json`, { headers: auth });
    expect(relayed.status).toBe(200);
    const snapshot = (await relayed.json()) as { coordinatorId: string; plan?: { planId: string } };
    expect(snapshot.coordinatorId).toBe(cluster.coordinator.coordinator?.id);
    expect(snapshot.plan?.planId).toBe(cluster.coordinator.plan?.planId);
    // Its /metrics answers too, with both nodes (membership runs on every node; requests count on the coordinator).
    const followerMetrics = await scrape(cluster.followerUrl);
    expect(metric(followerMetrics, "studio_cluster_nodes")).toBe(2);
    expect(metric(followerMetrics, "studio_cluster_state", { state: "ready" })).toBe(1);
  });

  it("/metrics scraped during a generation shows every node's figures move and counts the request", async () => {
    const url = cluster.coordinatorUrl;
    const nodes = cluster.coordinator.plan!.stages.map((s) => s.nodeId);
    const before = await scrape(url);
    expect(metric(before, "studio_cluster_nodes")).toBe(2);
    for (const id of nodes) expect(metric(before, "studio_cluster_node_up", { node_id: id })).toBe(1);
    const requestsBefore = metric(before, "studio_cluster_requests_total");
    const outputBefore = metric(before, "studio_cluster_output_tokens_total", { api: "chat.completions" });

    const seen = { tps: new Set<string>(), kv: new Set<string>(), inFlight: 0, throughput: 0 };
    let done = false;
    const generation = generate(cluster, LONG).finally(() => {
      done = true;
    });
    while (!done) {
      const text = await scrape(url);
      for (const id of nodes) {
        if (metric(text, "studio_cluster_node_tokens_per_second", { node_id: id }) > 0) seen.tps.add(id);
        if (metric(text, "studio_cluster_node_kv_bytes", { node_id: id }) > 0) seen.kv.add(id);
      }
      seen.inFlight = Math.max(seen.inFlight, metric(text, "studio_cluster_requests_in_flight"));
      seen.throughput = Math.max(seen.throughput, metric(text, "studio_cluster_output_tokens_per_second"));
      await new Promise((r) => setTimeout(r, 200));
    }
    const { completionTokens } = await generation;
    expect(completionTokens).toBe(LONG);
    expect([...seen.tps].sort()).toEqual([...nodes].sort());
    expect([...seen.kv].sort()).toEqual([...nodes].sort());
    expect(seen.inFlight).toBe(1);
    expect(seen.throughput).toBeGreaterThan(0);

    const after = await scrape(url);
    expect(metric(after, "studio_cluster_requests_total")).toBe(
      (Number.isNaN(requestsBefore) ? 0 : requestsBefore) + 1,
    );
    expect(
      metric(after, "studio_cluster_requests_total", { api: "chat.completions", status: "incomplete" }),
    ).toBe(1);
    expect(metric(after, "studio_cluster_output_tokens_total", { api: "chat.completions" })).toBe(
      (Number.isNaN(outputBefore) ? 0 : outputBefore) + LONG,
    );
    expect(
      metric(after, "studio_cluster_time_to_first_token_seconds_count", { api: "chat.completions" }),
    ).toBe(1);
    expect(metric(after, "studio_cluster_requests_in_flight")).toBe(0);
  }, 60_000);

  it("`cluster status` prints the same live picture: nodes with layers and figures, requests in flight", async () => {
    const generation = generate(cluster, LONG);
    const status = runCli(["status", "--api", cluster.followerUrl, "--api-key", API_KEY], {
      STUDIO_CLUSTER_HOME: home,
    });
    expect(await status.exited, status.output()).toBe(0);
    await generation;
    const text = status.stdout.join("\n");
    expect(text).toMatch(/nodes \(2, \d+ layers\)/);
    for (const s of cluster.coordinator.plan!.stages) {
      const parts = `${s.embed ? "E" : ""}${s.head ? "H" : ""}`;
      const line = text.split("\n").find((l) => l.includes(` ${s.name} `) && l.includes("ok "));
      expect(line, text).toContain(`[${s.layerStart},${s.layerEnd})${parts}`);
    }
    expect(text).toContain("requests in flight (1):");
    expect(text).toMatch(/req-\d+\s+chat\.completions\s+(prefill|decoding)/);
    expect(status.stderr.join("\n")).not.toContain("no live figures");
  }, 60_000);
});

const haveChromium = existsSync(CHROMIUM);
if (!haveChromium)
  console.warn(`dashboard-cluster browser test skipped: ${CHROMIUM} not found (apt-get install chromium)`);

describe.skipIf(!haveChromium)("the dashboard of a two-node cluster in headless Chromium", () => {
  let context: BrowserContext;
  let page: Page;
  let profile: string;

  beforeAll(async () => {
    const { chromium } = await import("playwright-core");
    profile = mkdtempSync(join(tmpdir(), "dashboard-cluster-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1440, height: 1000 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
  });

  afterAll(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  const text = async (selector: string) => (await page.locator(selector).first().textContent()) ?? "";
  const figure = (nodeId: string, name: string) => text(`[data-node-id="${nodeId}"] [data-testid="${name}"]`);

  it("shows both nodes and the real layer map, and a generation moves its live figures", async () => {
    const errors: string[] = [];
    page.on("pageerror", (err) => errors.push(err.message));
    // Opened on the node that does not coordinate: it stays there, live over the key with the coordinator's
    // figures (the follower reads them over the gRPC plane).
    await page.goto(`${cluster.followerUrl}/?key=${API_KEY}`);
    expect(page.url()).toBe(`${cluster.followerUrl}/?key=${API_KEY}`);
    await page.waitForFunction(`document.body.dataset.connection === "live"`);
    await page.waitForFunction(`document.querySelectorAll('[data-testid="node-card"]').length === 2`);
    expect(await page.locator('[data-testid="banner"]').isVisible()).toBe(false); // serving: nothing to warn of
    // The footer's links carry the key too, and it opens the figures.
    const metricsHref = await page.locator('.foot a[href^="/metrics"]').getAttribute("href");
    expect(metricsHref).toBe(`/metrics?key=${API_KEY}`);
    expect((await page.request.get(`${cluster.followerUrl}${metricsHref}`)).status()).toBe(200);

    const stages = cluster.coordinator.plan!.stages;
    expect(await page.locator("[data-layer]").count()).toBe(6);
    for (const s of stages) {
      expect(await figure(s.nodeId, "node-name")).toBe(s.name);
      expect(await figure(s.nodeId, "node-layers")).toContain(`${s.layerStart}–${s.layerEnd - 1}`);
      expect(await figure(s.nodeId, "node-health")).toBe("ok");
      expect(await page.locator(`[data-layer][data-node="${s.nodeId}"]`).count(), s.name).toBe(
        s.layerEnd - s.layerStart,
      );
    }
    const recentRows = '[data-testid="requests-recent"] [data-testid="request-row"]';
    const recentBefore = await page.locator(recentRows).count();

    // A long generation: while it runs the page shows it in flight and both nodes computing.
    let done = false;
    const generation = generate(cluster, LONG).finally(() => {
      done = true;
    });
    await page.waitForFunction(`document.querySelector('[data-testid="kpi-inflight"]')?.textContent === "1"`);
    for (const s of stages)
      await page.waitForFunction(
        `Number(document.querySelector('[data-node-id="${s.nodeId}"] [data-testid="node-tps"]')?.textContent) > 0`,
      );
    await page.waitForFunction(
      `Number(document.querySelector('[data-testid="kpi-throughput"]')?.textContent) > 0`,
    );
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, "dashboard-cluster.png"), fullPage: true });
    expect(done).toBe(false); // the figures above were seen while the request ran
    expect((await generation).completionTokens).toBe(LONG);

    // Finished: it moves to the recent table and the in-flight count drops back.
    await page.waitForFunction(`document.querySelector('[data-testid="kpi-inflight"]')?.textContent === "0"`);
    await page.waitForFunction(`document.querySelectorAll('${recentRows}').length === ${recentBefore + 1}`);
    expect(await page.locator('[data-testid="chart-throughput"] path').count()).toBeGreaterThan(0);
    expect(await page.locator('[data-testid="chart-ttft"] circle').count()).toBeGreaterThan(0);
    expect(errors).toEqual([]);
  }, 60_000);
});
