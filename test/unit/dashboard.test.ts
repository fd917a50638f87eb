// The dashboard renders the cluster snapshot live: served by its fastify plugin, driven by a snapshot whose
// figures the test changes, viewed in headless Chromium. Saves test-output/dashboard.png.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Fastify, { type FastifyInstance } from "fastify";
import type { BrowserContext, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { registerMetrics } from "../../api/metrics.js";
import type { ClusterSnapshot } from "../../cluster/snapshot.js";
import { DASHBOARD_LIVE_PATH, registerDashboard } from "../../dashboard/plugin.js";
import { fixtureSnapshot } from "../helpers/dashboard-fixture.js";

const CHROMIUM = "/usr/bin/chromium";
const OUTPUT = join(import.meta.dirname, "..", "test-output");

async function serve(
  snapshot: () => ClusterSnapshot,
  port = 0,
): Promise<{ app: FastifyInstance; url: string }> {
  const app = Fastify();
  registerDashboard(app, { snapshot });
  registerMetrics(app, { snapshot, processMetrics: false });
  const address = await app.listen({ host: "127.0.0.1", port });
  return { app, url: address };
}

/** Resolves with the next `count` messages of a WebSocket. */
function messages(ws: WebSocket, count: number): Promise<{ type: string; snapshot: ClusterSnapshot }[]> {
  return new Promise((resolve, reject) => {
    const got: { type: string; snapshot: ClusterSnapshot }[] = [];
    ws.on("error", reject);
    ws.on("message", (data) => {
      got.push(JSON.parse(String(data)));
      if (got.length === count) resolve(got);
    });
  });
}

describe("dashboard plugin", () => {
  it("serves the page and its assets, and a snapshot that comes late (a follower reads the coordinator's)", async () => {
    const app = Fastify();
    let late = false;
    registerDashboard(app, {
      snapshot: () =>
        late
          ? new Promise((resolve) => setTimeout(() => resolve(fixtureSnapshot(2)), 50))
          : fixtureSnapshot(1),
    });
    try {
      const page = await app.inject({ method: "GET", url: "/" });
      expect(page.statusCode).toBe(200);
      expect(page.headers["content-type"]).toMatch(/^text\/html/);
      expect(page.body).toContain("/dashboard/dashboard.js");
      for (const asset of ["dashboard.js", "dashboard.css", "favicon.svg"]) {
        const res = await app.inject({ method: "GET", url: `/dashboard/${asset}` });
        expect(res.statusCode, asset).toBe(200);
        expect(res.body.length, asset).toBeGreaterThan(100);
      }
      const snap = await app.inject({ method: "GET", url: "/dashboard/snapshot.json" });
      expect(snap.json().nodes).toHaveLength(3);

      late = true;
      expect((await app.inject({ method: "GET", url: "/dashboard/snapshot.json" })).json()).toEqual(
        fixtureSnapshot(2),
      );
      // Every node serves the page itself, never a redirect to another node's address.
      expect((await app.inject({ method: "GET", url: "/" })).statusCode).toBe(200);
    } finally {
      await app.close();
    }
  });

  it("pushes the snapshot at once over WebSocket, then every change", async () => {
    let tick = 1;
    const { app, url } = await serve(() => fixtureSnapshot(tick));
    const ws = new WebSocket(url.replace("http", "ws") + DASHBOARD_LIVE_PATH);
    try {
      const [first] = await messages(ws, 1);
      expect(first.type).toBe("snapshot");
      expect(first.snapshot.nodes[0].tokensPerSecond).toBe(fixtureSnapshot(1).nodes[0].tokensPerSecond);
      tick = 2;
      const next = await new Promise<ClusterSnapshot>((resolve) => {
        ws.on("message", (data) => {
          const msg = JSON.parse(String(data));
          if (msg.snapshot.nodes[0].tokensPerSecond !== first.snapshot.nodes[0].tokensPerSecond) {
            resolve(msg.snapshot);
          }
        });
      });
      expect(next).toEqual(fixtureSnapshot(2));
    } finally {
      ws.close();
      await app.close();
    }
  });

  it("sends every change to every viewer, also when another viewer joins in between", async () => {
    let tick = 1;
    const app = Fastify();
    // A heartbeat far beyond the test's patience: only change detection can deliver tick 2 to the first viewer.
    registerDashboard(app, {
      snapshot: () => fixtureSnapshot(tick),
      feed: { heartbeatMs: 600_000, pollMs: 400 },
    });
    const url =
      (await app.listen({ host: "127.0.0.1", port: 0 })).replace("http", "ws") + DASHBOARD_LIVE_PATH;
    const first = new WebSocket(url);
    try {
      await messages(first, 1);
      const firstSeesTick2 = new Promise<void>((resolve) => {
        first.on("message", (data) => {
          if (
            JSON.parse(String(data)).snapshot.nodes[0].queueDepth === fixtureSnapshot(2).nodes[0].queueDepth
          )
            resolve();
        });
      });
      tick = 2;
      const second = new WebSocket(url);
      const [joined] = await messages(second, 1);
      expect(joined.snapshot).toEqual(fixtureSnapshot(2));
      await firstSeesTick2;
      second.close();
    } finally {
      first.close();
      await app.close();
    }
  }, 20_000);

  it("tells the viewer when the snapshot cannot be built", async () => {
    const app = Fastify();
    registerDashboard(app, {
      snapshot: () => {
        throw new Error("membership not started");
      },
    });
    const url =
      (await app.listen({ host: "127.0.0.1", port: 0 })).replace("http", "ws") + DASHBOARD_LIVE_PATH;
    const ws = new WebSocket(url);
    try {
      const [msg] = (await messages(ws, 1)) as unknown as { type: string; message: string }[];
      expect(msg).toMatchObject({ type: "error", message: "membership not started" });
    } finally {
      ws.close();
      await app.close();
    }
  });

  it("refuses WebSocket upgrades on other paths and unauthorized ones", async () => {
    const app = Fastify();
    registerDashboard(app, {
      snapshot: () => fixtureSnapshot(1),
      authorize: () => ({ status: 401, body: { error: "no" } }),
    });
    const url = (await app.listen({ host: "127.0.0.1", port: 0 })).replace("http", "ws");
    try {
      for (const [path, status] of [
        ["/elsewhere", 404],
        [DASHBOARD_LIVE_PATH, 401],
      ] as const) {
        const ws = new WebSocket(url + path);
        const code = await new Promise<number | undefined>((resolve) => {
          ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
          ws.on("open", () => resolve(101));
          ws.on("error", () => resolve(undefined));
        });
        expect(code, path).toBe(status);
        ws.terminate();
      }
    } finally {
      await app.close();
    }
  });
});

const haveChromium = existsSync(CHROMIUM);
if (!haveChromium)
  console.warn(`dashboard browser test skipped: ${CHROMIUM} not found (apt-get install chromium)`);

describe.skipIf(!haveChromium)("dashboard in headless Chromium", () => {
  let tick = 2;
  /** When set, the snapshot the last server serves instead of the tick's. */
  let override: (() => ClusterSnapshot) | undefined;
  let server: { app: FastifyInstance; url: string };
  let context: BrowserContext;
  let page: Page;
  let profile: string;

  beforeAll(async () => {
    const { chromium } = await import("playwright-core");
    server = await serve(() => fixtureSnapshot(tick));
    profile = mkdtempSync(join(tmpdir(), "dashboard-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1440, height: 1000 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
  });

  afterAll(async () => {
    await context?.close();
    await server?.app.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  const text = async (selector: string) => (await page.locator(selector).first().textContent()) ?? "";
  const nodeFigure = (nodeId: string, figure: string) =>
    text(`[data-node-id="${nodeId}"] [data-testid="${figure}"]`);

  it("renders one card per node, the layer map and the live figures", async () => {
    const errors: string[] = [];
    page.on("pageerror", (err) => errors.push(err.message));
    await page.goto(server.url);
    await page.waitForSelector('[data-testid="node-card"]');
    const snap = fixtureSnapshot(tick);

    expect(await page.locator('[data-testid="node-card"]').count()).toBe(3);
    for (const n of snap.nodes) {
      expect(await nodeFigure(n.id, "node-name")).toBe(n.name);
      expect(await nodeFigure(n.id, "node-tps")).toBe(n.tokensPerSecond.toFixed(1));
      expect(await nodeFigure(n.id, "node-layers")).toContain(`${n.layerStart}–${n.layerEnd! - 1}`);
      expect(await nodeFigure(n.id, "node-queue")).toBe(String(n.queueDepth));
      expect(await nodeFigure(n.id, "node-health")).toBe(n.health);
      // RAM and SSD bytes of the prefix cache, and the share of prompt positions each served.
      const c = n.prefixCache!;
      const all = c.ramHitTokens + c.diskHitTokens + c.computedTokens;
      const cacheLine = await nodeFigure(n.id, "node-cache");
      expect(cacheLine).toContain(`SSD ${fmtGiB(c.diskBytes)} / ${fmtGiB(c.diskBudgetBytes)}`);
      expect(cacheLine).toContain(`RAM ${fmtGiB(c.ramBytes)}`);
      expect(cacheLine).toContain(`hits RAM ${Math.round((100 * c.ramHitTokens) / all)}%`);
      expect(cacheLine).toContain(`SSD ${Math.round((100 * c.diskHitTokens) / all)}%`);
    }
    expect(await text('[data-node-id="node-0"] [data-testid="node-link"]')).toBe("200 µs");

    // The layer map has one cell per layer, each owned by the node whose range holds it.
    expect(await page.locator("[data-layer]").count()).toBe(snap.numLayers);
    for (const n of snap.nodes) {
      const owned = await page.locator(`[data-layer][data-node="${n.id}"]`).count();
      expect(owned, n.id).toBe(n.layerEnd! - n.layerStart!);
    }
    expect(await text('[data-testid="model-id"]')).toBe("MiniMax-M2.1-4bit");
    expect(await text('[data-testid="cluster-state"]')).toMatch(/ready/i);
    expect(await page.locator('[data-testid="chart-throughput"] path').count()).toBeGreaterThan(0);
    expect(await page.locator('[data-testid="chart-ttft"] circle').count()).toBe(snap.ttftMs.length);
    expect(errors).toEqual([]);
  });

  it("updates figures live without reloading, and survives a coordinator restart", async () => {
    // Page functions are passed as strings: this file is type-checked without the DOM library.
    const cardCount = (n: number) => `document.querySelectorAll('[data-testid="node-card"]').length === ${n}`;
    const connection = (state: string) => `document.body.dataset.connection === "${state}"`;
    await page.evaluate("window.sameDocument = true");
    tick = 7;
    const snap = fixtureSnapshot(tick);
    const want = JSON.stringify(snap.nodes[1].tokensPerSecond.toFixed(1));
    await page.waitForFunction(
      `document.querySelector('[data-node-id="node-1"] [data-testid="node-tps"]')?.textContent === ${want}`,
    );
    expect(await nodeFigure("node-2", "node-health")).toBe("degraded");
    expect(await nodeFigure("node-0", "node-busy")).toBe(`${Math.round(snap.nodes[0].busyFraction * 100)}%`);
    expect(await text('[data-testid="kpi-throughput"]')).toBe(snap.throughput.at(-1)!.v.toFixed(1));
    expect(await text('[data-testid="kpi-inflight"]')).toBe("2");
    const recentRows = page.locator('[data-testid="requests-recent"] [data-testid="request-row"]');
    expect(await recentRows.count()).toBe(snap.recent.length);

    // Restart the server on the same port with a two-node cluster: the page reconnects by itself.
    const port = Number(new URL(server.url).port);
    await server.app.close();
    await page.waitForFunction(connection("down"));
    server = await serve(() => fixtureSnapshot(tick, { nodes: 2 }), port);
    await page.waitForFunction(cardCount(2), null, { timeout: 20_000 });
    expect(await page.evaluate("window.sameDocument")).toBe(true);
    expect(await page.locator("[data-layer][data-node]").count()).toBe(62);
    expect(await page.locator('[data-layer][data-node="node-1"]').count()).toBe(31);

    // Back to three nodes for the picture.
    await server.app.close();
    server = await serve(() => override?.() ?? fixtureSnapshot(tick, { nodes: 3 }), port);
    await page.waitForFunction(cardCount(3), null, { timeout: 20_000 });
    await page.waitForFunction(connection("live"));
    mkdirSync(OUTPUT, { recursive: true });
    await page.screenshot({ path: join(OUTPUT, "dashboard.png"), fullPage: true });
  });
  it("shows a node loading its shard, the cluster's reason for not serving, and fits a narrow window", async () => {
    await page.setViewportSize({ width: 900, height: 900 });
    override = () => {
      const snap = fixtureSnapshot(tick);
      snap.state = "loading";
      snap.message = "loading shards: 2 of 3 nodes ready";
      snap.nodes[2] = { ...snap.nodes[2], health: "loading", loadProgress: 0.42, tokensPerSecond: 0 };
      snap.inFlight = [];
      return snap;
    };
    await page.waitForFunction(
      `document.querySelector('[data-testid="cluster-state"]')?.textContent === "loading"`,
    );
    expect(await nodeFigure("node-2", "node-busy")).toBe("42%");
    expect(await nodeFigure("node-2", "node-health")).toBe("loading");
    expect(await text('[data-testid="banner"]')).toBe("loading shards: 2 of 3 nodes ready");
    expect(await page.locator('[data-testid="banner"]').isVisible()).toBe(true);
    expect(await text('[data-testid="kpi-inflight"]')).toBe("0");
    // Nothing spills out sideways at this width.
    expect(await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")).toBe(true);
    await page.screenshot({ path: join(OUTPUT, "dashboard-loading.png"), fullPage: true });
  });
});

/** The dashboard's byte format for the sizes the fixture uses (GiB with one decimal, whole GiB from 100). */
function fmtGiB(bytes: number): string {
  const gib = bytes / 1024 ** 3;
  return gib >= 100 ? `${gib.toFixed(0)} GiB` : `${gib.toFixed(1)} GiB`;
}
