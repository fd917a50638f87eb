// Pushes the cluster snapshot to every connected dashboard over WebSocket: at least once a second, and within
// a poll interval of any change. The timer runs only while someone is watching.
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

export class LiveFeed {
  private readonly clients = new Set<WebSocket>();
  private timer: NodeJS.Timeout | undefined;
  private lastJson = "";
  private lastSentAt = 0;
  private readonly heartbeatMs: number;
  private readonly pollMs: number;

  constructor(
    private readonly snapshot: () => ClusterSnapshot,
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
    const { json, text } = this.render();
    ws.send(text);
    if (this.timer) return;
    // The first viewer's message counts as sent to everyone; with others watching, their last one still stands.
    this.lastJson = json;
    this.lastSentAt = Date.now();
    this.timer = setInterval(() => this.tick(), this.pollMs);
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

  private tick(): void {
    const now = Date.now();
    const { json, text } = this.render();
    if (json === this.lastJson && now - this.lastSentAt < this.heartbeatMs) return;
    this.lastJson = json;
    this.lastSentAt = now;
    for (const ws of this.clients) {
      // A viewer on a slow link skips a beat rather than letting its buffer grow without bound.
      if (ws.readyState === ws.OPEN && ws.bufferedAmount < 4 * 1024 * 1024) ws.send(text);
    }
  }

  /** The message for the current snapshot; `json` is the snapshot alone, to compare with the last one sent. */
  private render(): { json: string; text: string } {
    let json: string;
    try {
      json = JSON.stringify(this.snapshot());
    } catch (err) {
      const msg: LiveMessage = { type: "error", serverTime: Date.now(), message: errorMessage(err) };
      return { json: "", text: JSON.stringify(msg) };
    }
    // The snapshot is spliced in as already-serialised JSON to avoid stringifying it twice.
    return { json, text: `{"type":"snapshot","serverTime":${Date.now()},"snapshot":${json}}` };
  }
}
