// The web dashboard: GET / serves the page, /dashboard/* its assets (all local, it works offline), and
// /dashboard/live is a WebSocket that pushes the cluster snapshot (see live-feed.ts).
//
// Wiring: registerDashboard(app, { snapshot }) before app.listen().
// - snapshot(): the current ClusterSnapshot, or a promise of it; called about four times a second while a
//   dashboard is open. Every node serves the page itself: on a node that is not the coordinator, snapshot()
//   is the coordinator's, read over the cluster's gRPC plane (api/live-views.ts), so the page never points a
//   browser at a coordinator whose API listens on its own loopback.
// - authorize(request): optional key check for the page (GET /), the snapshot and the WebSocket; it returns
//   the refusal to send (status and body) or undefined to let the request pass. The assets stay open: a
//   browser fetches them without the key the page was opened with.
import { readFileSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { WebSocketServer } from "ws";
import { packageRoot } from "../common/paths.js";
import { LiveFeed, type LiveFeedOptions, type SnapshotSource } from "./live-feed.js";

/** Why a dashboard request is refused: the HTTP status and the JSON body to answer with. */
export interface DashboardRefusal {
  status: number;
  body: unknown;
}

export interface DashboardOptions {
  snapshot: SnapshotSource;
  authorize?: (request: IncomingMessage) => DashboardRefusal | undefined;
  feed?: LiveFeedOptions;
}

export const DASHBOARD_LIVE_PATH = "/dashboard/live";

const ASSETS: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "dashboard.css": "text/css; charset=utf-8",
  "dashboard.js": "text/javascript; charset=utf-8",
  "favicon.svg": "image/svg+xml",
};

/** Reads the page and its assets once; they ship in the package next to this module's sources. */
function loadAssets(): Map<string, Buffer> {
  const dir = join(packageRoot(), "dashboard", "assets");
  const files = new Map<string, Buffer>();
  for (const name of Object.keys(ASSETS)) files.set(name, readFileSync(join(dir, name)));
  return files;
}

export function registerDashboard(app: FastifyInstance, options: DashboardOptions): void {
  const assets = loadAssets();
  const feed = new LiveFeed(options.snapshot, options.feed);
  const wss = new WebSocketServer({ noServer: true, maxPayload: 4096 });

  const sendAsset = (reply: FastifyReply, name: string) =>
    reply.header("content-type", ASSETS[name]).header("cache-control", "no-cache").send(assets.get(name));

  // The data routes' own hook: the key rule holds for them whatever else the app registers.
  const guarded = {
    onRequest: async (request: FastifyRequest, reply: FastifyReply) => {
      const refusal = options.authorize?.(request.raw);
      if (refusal) return reply.code(refusal.status).send(refusal.body);
    },
  };
  app.get("/", guarded, (_request, reply) => sendAsset(reply, "index.html"));
  // The only routes open without the API key (see api/server.ts denyByDefault): static files, no data.
  for (const name of Object.keys(ASSETS))
    app.get(`/dashboard/${name}`, { config: { open: true } }, (_request, reply) => sendAsset(reply, name));
  app.get("/dashboard/snapshot.json", guarded, async (request, reply) =>
    reply.send(await options.snapshot(request.raw)),
  );

  const onUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = new URL(request.url ?? "/", "http://localhost").pathname;
    if (path !== DASHBOARD_LIVE_PATH) {
      // Leave other paths to whoever else handles upgrades; with no one else, refuse rather than hang.
      if (app.server.listenerCount("upgrade") === 1) refuse(socket, 404, "Not Found");
      return;
    }
    const refusal = options.authorize?.(request);
    if (refusal) return refuse(socket, refusal.status, refusal.status === 401 ? "Unauthorized" : "Forbidden");
    wss.handleUpgrade(request, socket, head, (ws) => feed.add(ws));
  };
  app.server.on("upgrade", onUpgrade);
  // preClose, not onClose: the server's close() waits for every socket, upgraded ones included, so the
  // dashboards must be told goodbye before it starts.
  app.addHook("preClose", (done) => {
    app.server.off("upgrade", onUpgrade);
    feed.close();
    wss.close(() => done());
  });
}

function refuse(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}
