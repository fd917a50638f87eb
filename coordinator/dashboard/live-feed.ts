// Pushes the cluster snapshot to every connected dashboard over WebSocket: at least once a second, and within
// a poll interval of any change. The timer runs only while someone is watching.
import type { WebSocket } from "ws";
import { errorMessage } from "../../common/errors.js";
import type { ClusterSnapshot } from "../cluster-snapshot.js";

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
    ws.send(this.message(true).text);
    if (!this.timer) this.timer = setInterval(() => this.tick(), this.pollMs);
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
    const { text, changed } = this.message(false);
    if (!changed && now - this.lastSentAt < this.heartbeatMs) return;
    this.lastSentAt = now;
    for (const ws of this.clients) {
      // A viewer on a slow link skips a beat rather than letting its buffer grow without bound.
      if (ws.readyState === ws.OPEN && ws.bufferedAmount < 4 * 1024 * 1024) ws.send(text);
    }
  }

  /** Renders the current snapshot; `changed` compares it with the last one rendered. */
  private message(force: boolean): { text: string; changed: boolean } {
    let json: string;
    try {
      json = JSON.stringify(this.snapshot());
    } catch (err) {
      const msg: LiveMessage = { type: "error", serverTime: Date.now(), message: errorMessage(err) };
      return { text: JSON.stringify(msg), changed: true };
    }
    const changed = force || json !== this.lastJson;
    this.lastJson = json;
    // The snapshot is spliced in as already-serialised JSON to avoid stringifying it twice.
    const text = `{"type":"snapshot","serverTime":${Date.now()},"snapshot":${json}}`;
    return { text, changed };
  }
}
