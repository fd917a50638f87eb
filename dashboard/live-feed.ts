// Pushes the cluster snapshot to every connected dashboard over WebSocket: at least once a second, and within
// a poll interval of any change. The timer runs only while someone is watching. The snapshot may come late (a
// follower reads the coordinator's over the gRPC plane): one is asked for at a time, and a poll that finds one
// still on its way skips its turn.
import type { IncomingMessage } from "node:http";
import type { WebSocket } from "ws";
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { errorMessage } from "../common/errors.js";

/** What a dashboard receives: the snapshot plus the server's clock, so ages do not depend on the viewer's. */
export type LiveMessage =
  | { type: "snapshot"; serverTime: number; snapshot: ClusterSnapshot }
  | { type: "error"; serverTime: number; message: string };

export interface LiveFeedOptions {
  /** Longest gap between two messages, ms (default 1000). */
  heartbeatMs?: number;
  /** How often the snapshot is checked for changes, ms (default 250). */
  pollMs?: number;
}

/**
 * The current snapshot, now or once it has been fetched; throwing (or rejecting) says why there is none.
 * `request` is the HTTP request asking, when one does (the feed asks for itself).
 */
export type SnapshotSource = (request?: IncomingMessage) => ClusterSnapshot | Promise<ClusterSnapshot>;

export class LiveFeed {
  private readonly clients = new Set<WebSocket>();
  private timer: NodeJS.Timeout | undefined;
  /** A snapshot on its way: polls wait for it rather than asking again. */
  private rendering = false;
  private lastJson = "";
  private lastSentAt = 0;
  private readonly heartbeatMs: number;
  private readonly pollMs: number;

  constructor(
    private readonly snapshot: SnapshotSource,
    options: LiveFeedOptions = {},
  ) {
    this.heartbeatMs = options.heartbeatMs ?? 1000;
    this.pollMs = options.pollMs ?? 250;
  }

  get watchers(): number {
    return this.clients.size;
  }

  /** Starts feeding one client: it gets the current snapshot at once, then every change. */
  add(ws: WebSocket): void {
    this.clients.add(ws);
    ws.on("close", () => this.remove(ws));
    ws.on("error", () => this.remove(ws));
    // The dashboard only listens; anything it sends is ignored.
    const first = !this.timer;
    if (first) this.timer = setInterval(() => void this.tick(), this.pollMs);
    void this.render().then(({ json, text }) => {
      if (ws.readyState === ws.OPEN) ws.send(text);
      // The first viewer's message counts as sent to everyone; with others watching, their last one still stands.
      if (!first) return;
      this.lastJson = json;
      this.lastSentAt = Date.now();
    });
  }

  close(): void {
    for (const ws of this.clients) ws.close(1001, "server closing");
    this.clients.clear();
    this.stop();
  }

  private remove(ws: WebSocket): void {
    this.clients.delete(ws);
    if (this.clients.size === 0) this.stop();
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async tick(): Promise<void> {
    if (this.rendering) return;
    this.rendering = true;
    let rendered: { json: string; text: string };
    try {
      rendered = await this.render();
    } finally {
      this.rendering = false;
    }
    const { json, text } = rendered;
    const now = Date.now();
    if (json === this.lastJson && now - this.lastSentAt < this.heartbeatMs) return;
    this.lastJson = json;
    this.lastSentAt = now;
    for (const ws of this.clients) {
      // A viewer on a slow link skips a beat rather than letting its buffer grow without bound.
      if (ws.readyState === ws.OPEN && ws.bufferedAmount < 4 * 1024 * 1024) ws.send(text);
    }
  }

  /** The message for the current snapshot; `json` is the snapshot alone, to compare with the last one sent. */
  private async render(): Promise<{ json: string; text: string }> {
    let json: string;
    try {
      json = JSON.stringify(await this.snapshot());
    } catch (err) {
      const msg: LiveMessage = { type: "error", serverTime: Date.now(), message: errorMessage(err) };
      return { json: "", text: JSON.stringify(msg) };
    }
    // The snapshot is spliced in as already-serialised JSON to avoid stringifying it twice.
    return { json, text: `{"type":"snapshot","serverTime":${Date.now()},"snapshot":${json}}` };
  }
}
