// The scheduler: the TokenGenerator the HTTP API talks to. It admits a sequence, sends its prompt to stage 0 in
// chunks (they flow through the stages one behind the other), then one decode step per sampled token, until a
// stop id or maxTokens. Many sequences run at once; the stages batch whatever is queued. Aborts cancel the
// sequence on every stage; a lost node fails every sequence in flight at once, and new requests get
// cluster_not_ready until attach() hands over a new pipeline.
import { EventEmitter } from "node:events";
import { ClusterError, type ClusterErrorCode, errorMessage, isClusterErrorCode } from "../common/errors.js";
import { encodeTokens, nowUs, toWireSampling } from "../common/wire/frames.js";
import { type DataFrame, type DataFrameOut, Dtype, FrameKind } from "../common/wire/types.js";
import { Admission, kvTokenBudget } from "./admission.js";
import { describeLoss, type LostNode, type PipelinePort } from "./pipeline.js";
import { PrefixCache } from "./prefix-cache.js";
import type { GenerationEvent, GenerationRequest, TokenGenerator } from "./token-generator.js";

export interface SchedulerOptions {
  /** Longest prompt + output accepted, in tokens. */
  contextWindow: number;
  /** Token ids must be below this (the model's vocab_size); unchecked when absent (the engine then refuses). */
  vocabSize?: number;
  /** Prompt tokens per prefill item. Default 256. */
  prefillChunkTokens?: number;
  /** Sequences generating at once; more wait in the queue. Default 64. */
  maxSequences?: number;
  /** Requests that may wait for a free sequence slot; beyond it they get "overloaded" (429). Default 256. */
  maxQueue?: number;
  /**
   * KV bytes per node kept for finished sequences, so a prompt sharing their prefix forks it instead of
   * recomputing it (least recently used entries go first). 0 or absent: no prefix cache.
   */
  prefixCacheBytesPerNode?: number;
  /** A sequence waiting this long for its next token fails with "timeout" (plus 10 ms per prompt token for the first). Default 120 s. */
  stepTimeoutMs?: number;
}

/** Figures of one finished request, for dashboards. */
export interface RequestFigures {
  seq: number;
  status: "completed" | "incomplete" | "failed" | "cancelled";
  promptTokens: number;
  outputTokens: number;
  ttftMs?: number;
  /** Output tokens per second after the first one. */
  decodeTokensPerSecond?: number;
  errorCode?: ClusterErrorCode;
}

export interface SchedulerEvents {
  request: [RequestFigures];
  nodeLost: [LostNode];
}

/** One sequence in flight: a mailbox between the Results stream and the generator awaiting its next token. */
class Run {
  readonly seq: number;
  readonly pipeline: PipelinePort;
  /** Batch group (see DataFrame.wave): one per stage, so every stage has a wave to work on. */
  readonly wave: number;
  /** KV positions reserved for it on every stage until it ends: its prompt plus maxTokens. */
  readonly kvTokens: number;
  private inbox: DataFrame[] = [];
  private waiter: { resolve: (f: DataFrame) => void; reject: (e: ClusterError) => void } | undefined;
  failure: ClusterError | undefined;

  constructor(seq: number, pipeline: PipelinePort, wave: number, kvTokens: number) {
    this.seq = seq;
    this.pipeline = pipeline;
    this.wave = wave;
    this.kvTokens = kvTokens;
  }

  deliver(frame: DataFrame): void {
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve(frame);
    } else this.inbox.push(frame);
  }

  fail(error: ClusterError): void {
    if (this.failure) return;
    this.failure = error;
    if (this.waiter) {
      const { reject } = this.waiter;
      this.waiter = undefined;
      reject(error);
    }
  }

  next(timeoutMs: number): Promise<DataFrame> {
    if (this.failure) return Promise.reject(this.failure);
    const ready = this.inbox.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.fail(new ClusterError("timeout", `no token for ${timeoutMs} ms (sequence ${this.seq})`)),
        timeoutMs,
      );
      this.waiter = {
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }
}

export class Scheduler extends EventEmitter<SchedulerEvents> implements TokenGenerator {
  readonly contextWindow: number;
  private readonly maxTokenId: number;
  private readonly chunkTokens: number;
  private readonly admission: Admission;
  private readonly stepTimeoutMs: number;
  private readonly prefixCacheBytesPerNode: number;
  private pipeline: PipelinePort | undefined;
  /** The prefix cache of the attached pipeline (entries live on its stages and die with them). */
  private cache: { pipeline: PipelinePort; entries: PrefixCache } | undefined;
  private notReadyReason = "no pipeline is loaded yet";
  private readonly runs = new Map<number, Run>();
  private unsubscribe: () => void = () => {};
  private nextSeq: number;

  constructor(opts: SchedulerOptions) {
    super();
    if (!Number.isInteger(opts.contextWindow) || opts.contextWindow < 2)
      throw new Error(`Scheduler: contextWindow must be an integer >= 2 (got ${opts.contextWindow})`);
    this.contextWindow = opts.contextWindow;
    this.maxTokenId = (opts.vocabSize ?? 0x8000_0000) - 1;
    this.chunkTokens = opts.prefillChunkTokens ?? 256;
    this.admission = new Admission({ maxSequences: opts.maxSequences, maxQueue: opts.maxQueue });
    this.stepTimeoutMs = opts.stepTimeoutMs ?? 120_000;
    this.prefixCacheBytesPerNode = opts.prefixCacheBytesPerNode ?? 0;
    // Ids start at a random point so a restarted coordinator does not reuse the previous one's ids.
    this.nextSeq = 1 + Math.floor(Math.random() * 0x7fff_0000);
  }

  get ready(): boolean {
    return this.pipeline !== undefined;
  }

  get inFlight(): number {
    return this.runs.size;
  }

  /** KV positions reserved by sequences in flight, and the most the stages can hold (Infinity: unbounded). */
  get kvTokens(): { held: number; budget: number } {
    return this.admission.kvTokens;
  }

  /**
   * Serves from this pipeline from now on (after a start or a re-plan). kvBytesPerStage: the bytes of KV each
   * stage can hold for sequences in flight (memory left after weights, headroom and the prefix cache); a request
   * waits until its prompt + maxTokens fits on every stage beside the sequences in flight. Absent: no KV bound.
   */
  attach(pipeline: PipelinePort, kvBytesPerStage?: readonly number[]): void {
    if (this.pipeline === pipeline) return;
    if (this.pipeline) this.detach("replaced by a new pipeline");
    this.pipeline = pipeline;
    this.admission.setBudget(kvTokenBudget(pipeline.kvBytesPerToken, kvBytesPerStage));
    const budget = PrefixCache.tokenBudgetFor(this.prefixCacheBytesPerNode, pipeline.kvBytesPerToken);
    this.cache = budget > 0 ? { pipeline, entries: new PrefixCache(budget) } : undefined;
    this.unsubscribe = pipeline.onResult((frame) => this.route(frame));
    // A node may have gone between Pipeline.start and now: then this pipeline never serves.
    if (pipeline.lost) this.onNodeLost(pipeline, pipeline.lost);
    else pipeline.once("nodeLost", (lost) => this.onNodeLost(pipeline, lost));
  }

  /** Stops serving: sequences in flight fail with cluster_not_ready, new ones are refused with `reason`. */
  detach(reason: string): void {
    const pipeline = this.pipeline;
    this.pipeline = undefined;
    this.cache = undefined; // Its entries lived on the pipeline's stages.
    this.notReadyReason = reason;
    this.unsubscribe();
    if (!pipeline) return;
    this.failAll(pipeline, new ClusterError("cluster_not_ready", `the pipeline was taken down: ${reason}`));
    pipeline.close();
  }

  private onNodeLost(pipeline: PipelinePort, lost: LostNode): void {
    const message = `${describeLoss(lost)}; the request was stopped. The cluster is re-planning without it.`;
    this.failAll(pipeline, new ClusterError("node_lost", message));
    if (this.pipeline === pipeline) {
      this.pipeline = undefined;
      this.notReadyReason = `${lost.name} at ${lost.address} was lost; waiting for a new plan`;
    }
    pipeline.close();
    this.emit("nodeLost", lost);
  }

  /** The prefix cache whose entries live on this pipeline's stages, if any. */
  private cacheOf(pipeline: PipelinePort): PrefixCache | undefined {
    return this.cache?.pipeline === pipeline && !pipeline.lost ? this.cache.entries : undefined;
  }

  /** Tokens whose KV the prefix cache holds on every stage. */
  get cachedPrefixTokens(): number {
    return this.cache?.entries.heldTokens ?? 0;
  }

  private failAll(pipeline: PipelinePort, error: ClusterError): void {
    for (const run of this.runs.values()) if (run.pipeline === pipeline) run.fail(error);
  }

  /** The per-token path: one RESULT or ERROR frame to its sequence. */
  private route(frame: DataFrame): void {
    const run = this.runs.get(frame.seq);
    if (!run) return; // A late frame of a sequence that already ended.
    if (frame.kind === FrameKind.RESULT) {
      run.deliver(frame);
      return;
    }
    if (frame.kind === FrameKind.ERROR) {
      const code = isClusterErrorCode(frame.error_code) ? frame.error_code : "internal";
      run.fail(
        new ClusterError(code, frame.error || `stage ${frame.origin_stage} failed sequence ${frame.seq}`),
      );
    }
  }

  /** The wave with the fewest sequences in flight: waves stay the same size, one per stage. */
  private leastBusyWave(pipeline: PipelinePort): number {
    const sizes = new Array<number>(pipeline.stageCount).fill(0);
    for (const run of this.runs.values()) if (run.pipeline === pipeline) sizes[run.wave]++;
    return sizes.indexOf(Math.min(...sizes));
  }

  private allocateSeq(): number {
    do {
      this.nextSeq = this.nextSeq >= 0xffff_fffe ? 1 : this.nextSeq + 1;
    } while (this.runs.has(this.nextSeq) || this.cache?.entries.has(this.nextSeq));
    return this.nextSeq;
  }

  private validate(request: GenerationRequest): void {
    const { prompt, maxTokens } = request;
    if (!Array.isArray(prompt) || prompt.length === 0)
      throw new ClusterError("bad_request", "prompt must hold at least one token id");
    const bad = prompt.findIndex((t) => !Number.isInteger(t) || t < 0 || t > this.maxTokenId);
    if (bad >= 0)
      throw new ClusterError(
        "bad_request",
        `prompt token ${bad} (${prompt[bad]}) is not a valid token id (0..${this.maxTokenId})`,
      );
    if (!Number.isInteger(maxTokens) || maxTokens < 1)
      throw new ClusterError("bad_request", `maxTokens must be a positive integer (got ${maxTokens})`);
    if (prompt.length + maxTokens > this.contextWindow)
      throw new ClusterError(
        "context_length_exceeded",
        `prompt (${prompt.length} tokens) + maxTokens (${maxTokens}) exceeds the context window of ${this.contextWindow} tokens`,
      );
  }

  generate(request: GenerationRequest): AsyncIterable<GenerationEvent> {
    return this.run(request);
  }

  private async *run(request: GenerationRequest): AsyncGenerator<GenerationEvent> {
    this.validate(request);
    if (!this.pipeline)
      throw new ClusterError("cluster_not_ready", `the cluster is not ready: ${this.notReadyReason}`);
    if (request.signal?.aborted)
      throw new ClusterError("cancelled", "the request was cancelled before it started");
    const kvTokens = request.prompt.length + request.maxTokens;
    await this.admission.acquire(kvTokens, request.signal);
    // The pipeline may have been lost or replaced while the request waited.
    if (!this.pipeline) {
      this.admission.release(kvTokens);
      throw new ClusterError("cluster_not_ready", `the cluster is not ready: ${this.notReadyReason}`);
    }
    const seq = this.allocateSeq();
    const run = new Run(seq, this.pipeline, this.leastBusyWave(this.pipeline), kvTokens);
    this.runs.set(seq, run);
    const onAbort = (): void => run.fail(new ClusterError("cancelled", "the request was cancelled"));
    request.signal?.addEventListener("abort", onAbort, { once: true });
    const started = performance.now();
    const figures: RequestFigures = {
      seq,
      status: "failed",
      promptTokens: request.prompt.length,
      outputTokens: 0,
    };
    let firstTokenAt = 0;
    const output: number[] = [];
    try {
      const cachedTokens = await this.reusePrefix(run, request.prompt);
      const step = this.sendPrompt(run, request, cachedTokens);
      yield { type: "admitted", promptTokens: request.prompt.length, cachedTokens };
      const stops = new Set(request.stopTokenIds);
      let position = request.prompt.length;
      for (let n = 1; ; n++) {
        // The first token waits for the whole prompt: allow for prefill at a slow 100 tokens/s on top.
        const frame = await run.next(
          n === 1 ? this.stepTimeoutMs + request.prompt.length * 10 : this.stepTimeoutMs,
        );
        if (n === 1) firstTokenAt = performance.now();
        figures.outputTokens = n;
        output.push(frame.token);
        const end = stops.has(frame.token) ? "stop" : n >= request.maxTokens ? "length" : undefined;
        // The next step goes out before the caller sees this token, so the stages never wait on the caller.
        if (!end) this.sendStep(run, step + n - 1, position++, frame.token);
        yield { type: "token", token: frame.token, logprob: frame.logprob };
        if (end) {
          figures.status = end === "stop" ? "completed" : "incomplete";
          yield { type: "end", reason: end };
          return;
        }
      }
    } catch (err) {
      if (err instanceof ClusterError) {
        figures.errorCode = err.code;
        if (err.code === "cancelled") figures.status = "cancelled";
      }
      throw err;
    } finally {
      request.signal?.removeEventListener("abort", onAbort);
      // The KV holds the prompt and every output token but the last (it was never fed back).
      this.finish(run, figures, started, firstTokenAt, [...request.prompt, ...output.slice(0, -1)]);
    }
  }

  /**
   * Forks the longest cached prefix of the prompt into the run's sequence on every stage; returns the
   * positions reused (0 without a hit). A fork that fails drops its entry and fails the request.
   */
  private async reusePrefix(run: Run, prompt: number[]): Promise<number> {
    const cache = this.cacheOf(run.pipeline);
    const hit = cache?.match(prompt);
    if (!cache || !hit) return 0;
    cache.pin(hit.entry);
    try {
      await run.pipeline.fork(hit.entry.seq, run.seq, hit.length);
    } catch (err) {
      // A lost node or an abort already says what happened; otherwise the entry is suspect.
      if (run.failure) throw run.failure;
      if (cache.drop(hit.entry.seq)) void run.pipeline.release([hit.entry.seq]);
      throw new ClusterError("internal", `reusing a cached prompt prefix failed: ${errorMessage(err)}`);
    } finally {
      this.releaseEntries(run.pipeline, cache.unpin(hit.entry));
    }
    if (run.failure) throw run.failure;
    return hit.length;
  }

  private releaseEntries(pipeline: PipelinePort, seqs: number[]): void {
    if (seqs.length > 0) void pipeline.release(seqs);
  }

  /** Sends the prompt in chunks; returns the step number of the first decode step. */
  private sendPrompt(run: Run, request: GenerationRequest, cachedTokens: number): number {
    const { prompt } = request;
    const frames: DataFrameOut[] = [];
    const sampling = toWireSampling(request.sampling);
    let step = 0;
    // Every chunk goes out now: stage 0 starts chunk k+1 while stage 1 computes chunk k.
    for (let start = cachedTokens; start < prompt.length; start += this.chunkTokens, step++) {
      const tokens = prompt.slice(start, start + this.chunkTokens);
      const last = start + this.chunkTokens >= prompt.length;
      frames.push(this.tokenFrame(run, step, start, tokens, last, step === 0 ? sampling : null));
    }
    if (!run.pipeline.send(frames)) throw new ClusterError("cluster_not_ready", "the pipeline is closing");
    return step;
  }

  private sendStep(run: Run, step: number, position: number, token: number): void {
    if (!run.pipeline.send([this.tokenFrame(run, step, position, [token], true, null)]))
      run.fail(new ClusterError("cluster_not_ready", "the pipeline closed during generation"));
  }

  private tokenFrame(
    run: Run,
    step: number,
    position: number,
    tokens: number[],
    wantResult: boolean,
    sampling: DataFrameOut["sampling"],
  ): DataFrameOut {
    const now = nowUs();
    return {
      kind: FrameKind.TOKENS,
      seq: run.seq,
      step,
      position,
      count: tokens.length,
      dtype: Dtype.I32,
      shape: [tokens.length],
      payload: encodeTokens(tokens),
      sampling,
      want_result: wantResult,
      wave: run.wave,
      plan_id: run.pipeline.plan.planId,
      origin_at_us: now,
      sent_at_us: now,
    };
  }

  /**
   * Frees the sequence everywhere: after a clean end it becomes a prefix-cache entry (or is released), otherwise
   * it is cancelled (work may still be queued).
   */
  private finish(
    run: Run,
    figures: RequestFigures,
    started: number,
    firstTokenAt: number,
    kvTokens: number[],
  ): void {
    this.runs.delete(run.seq);
    this.admission.release(run.kvTokens);
    if (!run.pipeline.lost) {
      const done = figures.status === "completed" || figures.status === "incomplete";
      if (!done && figures.errorCode === undefined) figures.status = "cancelled";
      if (!done) run.fail(new ClusterError("cancelled", "the caller stopped reading"));
      const cache = this.cacheOf(run.pipeline);
      if (!done) void run.pipeline.cancel([run.seq]);
      else if (cache) this.releaseEntries(run.pipeline, cache.add(run.seq, kvTokens));
      else void run.pipeline.release([run.seq]);
    }
    if (firstTokenAt > 0) {
      figures.ttftMs = firstTokenAt - started;
      const decodeSeconds = (performance.now() - firstTokenAt) / 1000;
      if (figures.outputTokens > 1 && decodeSeconds > 0)
        figures.decodeTokensPerSecond = (figures.outputTokens - 1) / decodeSeconds;
    }
    this.emit("request", figures);
  }
}
