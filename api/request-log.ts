// Per-request figures as the HTTP API sees them (api kind, prompt / cached / output tokens, time to first token,
// tokens/s, final status): the requests in flight, a bounded list of recent ones, and per-second series of
// output tokens and TTFT over the last ten minutes. It is the one source of the request part of the cluster
// snapshot (inFlight, recent, throughput, ttftMs); the API server merges it into what the dashboard, /metrics
// and `cluster status` show. The scheduler is not asked: only the API knows which API a request came through.
import type { ClusterSnapshot, RequestSnapshot, SeriesPoint } from "../cluster/snapshot.js";

export type RequestApi = RequestSnapshot["api"];
export type FinalStatus = "completed" | "incomplete" | "failed" | "cancelled";

export interface RequestLogOptions {
  /** Finished requests kept (newest first). /metrics counts each once while it is listed. Default 200. */
  recentLimit?: number;
  /** Length of the throughput and TTFT series, seconds. Default 600. */
  seriesSeconds?: number;
  /** Clock in ms (tests). */
  now?: () => number;
}

export type RequestFigures = Pick<ClusterSnapshot, "inFlight" | "recent" | "throughput" | "ttftMs">;

/** One request's figures while it runs; the first `finish` decides its final status, later ones are ignored. */
export class RequestTracker {
  private firstTokenAt: number | undefined;
  private finishedAt: number | undefined;
  private status: RequestSnapshot["status"] = "prefill";
  private cachedTokens = 0;
  private outputTokens = 0;
  private error: string | undefined;

  constructor(
    private readonly log: RequestLog,
    readonly id: string,
    private readonly api: RequestApi,
    private readonly startedAt: number,
    private promptTokens: number,
  ) {}

  /** The scheduler accepted the prompt (its own count, and how much of it came from the prefix cache). */
  admitted(promptTokens: number, cachedTokens: number): void {
    this.promptTokens = promptTokens;
    this.cachedTokens = cachedTokens;
  }

  token(): void {
    if (this.finishedAt !== undefined) return;
    const now = this.log.now();
    this.outputTokens++;
    if (this.firstTokenAt === undefined) {
      this.firstTokenAt = now;
      this.status = "decoding";
      this.log.firstToken(now, now - this.startedAt);
    }
    this.log.outputToken(now);
  }

  /** `error`: why a failed request failed, shown with it on the dashboard. */
  finish(status: FinalStatus, error?: string): void {
    if (this.finishedAt !== undefined) return;
    this.finishedAt = this.log.now();
    this.status = status;
    if (status === "failed") this.error = error;
    this.log.finished(this);
  }

  get done(): boolean {
    return this.finishedAt !== undefined;
  }

  snapshot(now: number): RequestSnapshot {
    const ttft = this.firstTokenAt === undefined ? undefined : this.firstTokenAt - this.startedAt;
    return {
      id: this.id,
      api: this.api,
      startedAt: this.startedAt,
      status: this.status,
      promptTokens: this.promptTokens,
      cachedTokens: this.cachedTokens,
      outputTokens: this.outputTokens,
      ttftMs: ttft,
      tokensPerSecond: this.decodeRate(this.finishedAt ?? now),
      ...(this.error ? { error: this.error } : {}),
    };
  }

  /** Output tokens per second after the first one (the first waits for the prompt, which TTFT already shows). */
  private decodeRate(until: number): number | undefined {
    if (this.firstTokenAt === undefined || this.outputTokens < 2) return undefined;
    const seconds = (until - this.firstTokenAt) / 1000;
    return seconds > 0 ? (this.outputTokens - 1) / seconds : undefined;
  }
}

export class RequestLog {
  readonly now: () => number;
  private readonly recentLimit: number;
  private readonly seriesMs: number;
  private readonly inFlight = new Set<RequestTracker>();
  /** Newest first. */
  private readonly recent: RequestSnapshot[] = [];
  /** Output tokens per whole second (key: floor(ms / 1000)). */
  private readonly tokensPerSecond = new Map<number, number>();
  private readonly ttft: SeriesPoint[] = [];
  /** The series start here: no invented zeros from before the server existed. */
  private readonly startSecond: number;
  private count = 0;
  private readonly finishListeners = new Set<(request: RequestSnapshot) => void>();

  constructor(options: RequestLogOptions = {}) {
    this.now = options.now ?? Date.now;
    this.recentLimit = options.recentLimit ?? 200;
    this.seriesMs = (options.seriesSeconds ?? 600) * 1000;
    this.startSecond = Math.floor(this.now() / 1000);
  }

  /** A request the API is about to submit to the scheduler. */
  begin(api: RequestApi, promptTokens: number): RequestTracker {
    this.count++;
    const tracker = new RequestTracker(this, `req-${this.count}`, api, this.now(), promptTokens);
    this.inFlight.add(tracker);
    return tracker;
  }

  outputToken(now: number): void {
    const second = Math.floor(now / 1000);
    this.tokensPerSecond.set(second, (this.tokensPerSecond.get(second) ?? 0) + 1);
  }

  firstToken(now: number, ttftMs: number): void {
    this.ttft.push({ t: now, v: ttftMs });
    this.prune(now);
  }

  finished(tracker: RequestTracker): void {
    this.inFlight.delete(tracker);
    const snapshot = tracker.snapshot(this.now());
    this.recent.unshift(snapshot);
    if (this.recent.length > this.recentLimit) this.recent.length = this.recentLimit;
    for (const listener of this.finishListeners) listener(snapshot);
  }

  /**
   * Calls `listener` with every request as it finishes: counters counted here miss none, whereas `recent` keeps
   * only the last `recentLimit` and a scrape may come after more than that have scrolled out.
   */
  onFinished(listener: (request: RequestSnapshot) => void): () => void {
    this.finishListeners.add(listener);
    return () => this.finishListeners.delete(listener);
  }

  /** The request part of the cluster snapshot, as of now. */
  figures(): RequestFigures {
    const now = this.now();
    this.prune(now);
    return {
      inFlight: [...this.inFlight].map((t) => t.snapshot(now)),
      recent: [...this.recent],
      throughput: this.throughputSeries(now),
      ttftMs: [...this.ttft],
    };
  }

  /** One point per completed second (the current one is still filling), timed at the second's end. */
  private throughputSeries(now: number): SeriesPoint[] {
    const current = Math.floor(now / 1000);
    const first = Math.max(this.startSecond, current - this.seriesMs / 1000);
    const points: SeriesPoint[] = [];
    for (let s = first; s < current; s++)
      points.push({ t: (s + 1) * 1000, v: this.tokensPerSecond.get(s) ?? 0 });
    return points;
  }

  private prune(now: number): void {
    const oldest = now - this.seriesMs;
    const firstKept = this.ttft.findIndex((p) => p.t >= oldest);
    this.ttft.splice(0, firstKept === -1 ? this.ttft.length : firstKept);
    const oldestSecond = Math.floor(oldest / 1000) - 1;
    for (const second of this.tokensPerSecond.keys())
      if (second < oldestSecond) this.tokensPerSecond.delete(second);
  }
}
