// The scheduler: the TokenGenerator the HTTP API talks to. It admits a sequence, sends its prompt to stage 0 in
// chunks (they flow through the stages one behind the other), then one decode step per sampled token, until a
// stop id or maxTokens. Many sequences run at once; the stages batch whatever is queued. Aborts cancel the
// sequence on every stage; a lost node fails every sequence in flight at once, and new requests get
// cluster_not_ready until attach() hands over a new pipeline.
import { EventEmitter } from "node:events";
import { ClusterError, type ClusterErrorCode, isClusterErrorCode } from "../common/errors.js";
import { encodeTokens, nowUs, toWireSampling } from "../common/wire/frames.js";
import { type DataFrame, type DataFrameOut, Dtype, FrameKind } from "../common/wire/types.js";
import { Admission, kvTokenBudget } from "./admission.js";
import { describeLoss, type LostNode, type PipelinePort } from "./pipeline.js";
import { type PrefixCacheFigures, PrefixReuse } from "./prefix-reuse.js";
import type { GenerationEvent, GenerationRequest, TokenGenerator } from "./token-generator.js";

export interface SchedulerOptions {
  /** Longest prompt + output accepted, in tokens. */
  contextWindow: number;
  /** Token ids must be below this (the model's vocab_size); unchecked when absent (the engine then refuses). */
  vocabSize?: number;
  /** Prompt tokens per prefill item. Default: by the pipeline's backend (PREFILL_CHUNK_TOKENS). */
  prefillChunkTokens?: number;
  /** Sequences generating at once; more wait in the queue. Default 64. */
  maxSequences?: number;
  /** Requests that may wait for a free sequence slot; beyond it they get "overloaded" (429). Default 256. */
  maxQueue?: number;
  /**
   * The prefix cache's RAM tier (docs/architecture.md "Prefix cache"): finished sequences' KV is kept in blocks,
   * so a prompt sharing their prefix assembles it instead of recomputing it. "auto": whatever KV memory the
   * sequences in flight leave on the tightest stage; a number caps it at that many bytes per node. 0 or absent:
   * no prefix cache. The disk tier is each node's (node-agent --cache-dir).
   */
  prefixCacheBytesPerNode?: number | "auto";
  /** Tokens per prefix-cache block. Default 256. */
  prefixBlockTokens?: number;
  /** Where the scheduler says what each request took from the cache. */
  log?: (line: string) => void;
  /** A sequence waiting this long for its next token fails with "timeout" (plus 10 ms per prompt token for the first). Default 120 s. */
  stepTimeoutMs?: number;
}

/** How long a pipeline being taken down waits for the prefix cache's stashes under way. */
const stashSettleMs = 5000;

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
  /** Prompt positions restored from the prefix cache: from RAM blocks, and from the nodes' disks. */
  cachedRamTokens?: number;
  cachedDiskTokens?: number;
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

/**
 * Prompt tokens per prefill item, by the pipeline's backend. cpu: 256. Pipelined prefill gains from smaller
 * chunks (stage 0 starts chunk k+1 while stage 1 computes chunk k), but on MiniMax-M2's shapes a 128-token chunk
 * costs a stage 6-7% more (each expert gets half the rows per read of its weights), which is what two stages gain
 * from it at 2k tokens and more than they gain on longer prompts (bench/RESULTS.md, "Prefill chunk size against
 * pipelined prefill, the quiet rerun"). mlx: 2048, mlx-lm's prefill step: every chunk routes its tokens
 * to nearly every expert and so reads nearly all expert weights again, and a GPU's matmuls grow faster with
 * more rows per weight read (bench/RESULTS.md, "MLX backend").
 */
export const PREFILL_CHUNK_TOKENS: Readonly<Record<string, number>> = { cpu: 256, mlx: 2048 };
const DEFAULT_PREFILL_CHUNK_TOKENS = 256;

export class Scheduler extends EventEmitter<SchedulerEvents> implements TokenGenerator {
  readonly contextWindow: number;
  private readonly maxTokenId: number;
  private readonly chunkOption: number | undefined;
  private chunkTokens: number;
  private readonly admission: Admission;
  private readonly stepTimeoutMs: number;
  private readonly prefixCacheBytesPerNode: number | "auto";
  private readonly prefixBlockTokens: number | undefined;
  private readonly log: (line: string) => void;
  private pipeline: PipelinePort | undefined;
  /** The prefix cache of the attached pipeline (its RAM blocks live on its stages and die with them). */
  private cache: { pipeline: PipelinePort; reuse: PrefixReuse } | undefined;
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
    this.chunkOption = opts.prefillChunkTokens;
    this.chunkTokens = opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK_TOKENS;
    this.admission = new Admission({ maxSequences: opts.maxSequences, maxQueue: opts.maxQueue });
    this.stepTimeoutMs = opts.stepTimeoutMs ?? 120_000;
    this.prefixCacheBytesPerNode = opts.prefixCacheBytesPerNode ?? 0;
    this.prefixBlockTokens = opts.prefixBlockTokens;
    this.log = opts.log ?? (() => {});
    // Ids start at a random point so a restarted coordinator does not reuse the previous one's ids.
    this.nextSeq = 1 + Math.floor(Math.random() * 0x7fff_0000);
  }

  /** Prompt tokens per prefill item on the attached pipeline. */
  get prefillChunkTokens(): number {
    return this.chunkTokens;
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
   * stage can hold (memory left after weights and headroom): sequences in flight reserve their prompt + maxTokens
   * in it (a request waits until it fits), and the prefix cache's RAM tier takes what they leave. Absent: no KV
   * bound. headroomBytesPerStage: memory each stage keeps free; a stage whose free memory falls below it makes the
   * prefix cache give memory back.
   */
  attach(
    pipeline: PipelinePort,
    kvBytesPerStage?: readonly number[],
    headroomBytesPerStage?: readonly number[],
  ): void {
    if (this.pipeline === pipeline) return;
    if (this.pipeline) void this.detach("replaced by a new pipeline");
    this.pipeline = pipeline;
    this.chunkTokens =
      this.chunkOption ??
      PREFILL_CHUNK_TOKENS[pipeline.plan.backend ?? "cpu"] ??
      DEFAULT_PREFILL_CHUNK_TOKENS;
    this.admission.setBudget(kvTokenBudget(pipeline.kvBytesPerToken, kvBytesPerStage));
    this.cache = this.prefixCacheFor(pipeline, headroomBytesPerStage);
    this.unsubscribe = pipeline.onResult((frame) => this.route(frame));
    // A node may have gone between Pipeline.start and now: then this pipeline never serves.
    if (pipeline.lost) this.onNodeLost(pipeline, pipeline.lost);
    else pipeline.once("nodeLost", (lost) => this.onNodeLost(pipeline, lost));
  }

  /** The prefix cache on this pipeline's stages, if it is on and the stages offer the block calls. */
  private prefixCacheFor(
    pipeline: PipelinePort,
    headroomBytes: readonly number[] | undefined,
  ): { pipeline: PipelinePort; reuse: PrefixReuse } | undefined {
    const blocks = pipeline.blocks;
    const perToken = Math.max(0, ...pipeline.kvBytesPerToken);
    if (!blocks || this.prefixCacheBytesPerNode === 0 || perToken === 0) return undefined;
    const cap =
      this.prefixCacheBytesPerNode === "auto"
        ? Number.POSITIVE_INFINITY
        : Math.floor(this.prefixCacheBytesPerNode / perToken);
    const statuses = pipeline.statuses?.bind(pipeline);
    const reuse = new PrefixReuse({
      blocks,
      stageCount: pipeline.stageCount,
      kvBytesPerToken: pipeline.kvBytesPerToken,
      blockTokens: this.prefixBlockTokens,
      ramBudget: () => {
        // The RAM tier takes what the sequences in flight leave: it yields before any request waits.
        const { held, budget } = this.admission.kvTokens;
        return Math.min(cap, Math.max(0, budget - held));
      },
      memory: statuses && headroomBytes ? { statuses, headroomBytes } : undefined,
      cancel: (seqs) => void pipeline.cancel(seqs),
      log: this.log,
    });
    return { pipeline, reuse };
  }

  /**
   * Stops serving: sequences in flight fail with cluster_not_ready, new ones are refused with `reason`. The
   * pipeline closes once the prefix cache's stashes under way have reached the stages (at most a few seconds),
   * so the conversations that just finished are kept, on the nodes' disks too; the promise says when.
   */
  detach(reason: string): Promise<void> {
    const pipeline = this.pipeline;
    const reuse = this.cache?.reuse;
    this.pipeline = undefined;
    reuse?.close();
    this.cache = undefined; // Its RAM blocks lived on the pipeline's stages.
    this.notReadyReason = reason;
    this.unsubscribe();
    if (!pipeline) return Promise.resolve();
    this.failAll(pipeline, new ClusterError("cluster_not_ready", `the pipeline was taken down: ${reason}`));
    if (!reuse) {
      pipeline.close();
      return Promise.resolve();
    }
    return reuse.settle(stashSettleMs).then(() => pipeline.close());
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

  /** The prefix cache whose blocks live on this pipeline's stages, if any. */
  private cacheOf(pipeline: PipelinePort): PrefixReuse | undefined {
    return this.cache?.pipeline === pipeline && !pipeline.lost ? this.cache.reuse : undefined;
  }

  /** Tokens whose KV the prefix cache's RAM tier holds on every stage. */
  get cachedPrefixTokens(): number {
    return this.cache?.reuse.index.ramTokens ?? 0;
  }

  /** The prefix cache's figures (undefined without one). */
  prefixCacheFigures(): PrefixCacheFigures | undefined {
    return this.cache?.reuse.figures();
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
    } while (this.runs.has(this.nextSeq));
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
    const started = performance.now();
    const { pipeline } = this;
    const restored = await this.restorePrefix(pipeline, request, kvTokens);
    const seq = restored.seq;
    const run = new Run(seq, pipeline, this.leastBusyWave(pipeline), kvTokens);
    this.runs.set(seq, run);
    const onAbort = (): void => run.fail(new ClusterError("cancelled", "the request was cancelled"));
    request.signal?.addEventListener("abort", onAbort, { once: true });
    const figures: RequestFigures = {
      seq,
      status: "failed",
      promptTokens: request.prompt.length,
      outputTokens: 0,
      cachedRamTokens: restored.ramPositions,
      cachedDiskTokens: restored.diskPositions,
    };
    let firstTokenAt = 0;
    const output: number[] = [];
    try {
      const cachedTokens = restored.positions;
      if (this.cacheOf(pipeline))
        this.log(
          `seq ${seq}: prompt ${request.prompt.length} tokens, cached_tokens ${cachedTokens} (RAM ${restored.ramPositions}, SSD ${restored.diskPositions})`,
        );
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
   * The request's sequence: a new id, holding on every stage the longest prefix of the prompt the prefix cache
   * could restore (none without a cache or a hit). Gives the admission back when the request cannot go on.
   */
  private async restorePrefix(
    pipeline: PipelinePort,
    request: GenerationRequest,
    kvTokens: number,
  ): Promise<{ seq: number; positions: number; ramPositions: number; diskPositions: number }> {
    const cache = this.cacheOf(pipeline);
    if (!cache) return { seq: this.allocateSeq(), positions: 0, ramPositions: 0, diskPositions: 0 };
    // The admission just reserved KV: the cache's RAM tier makes room first.
    cache.fit();
    const restored = await cache.restore(request.prompt, () => this.allocateSeq());
    const problem = request.signal?.aborted
      ? new ClusterError("cancelled", "the request was cancelled before it started")
      : pipeline.lost
        ? new ClusterError("node_lost", `${describeLoss(pipeline.lost)}; the request was stopped.`)
        : this.pipeline !== pipeline
          ? new ClusterError("cluster_not_ready", `the cluster is not ready: ${this.notReadyReason}`)
          : undefined;
    if (!problem) return restored;
    if (restored.positions > 0) void pipeline.cancel([restored.seq]);
    this.admission.release(kvTokens);
    throw problem;
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
      else if (cache) cache.keep(run.seq, kvTokens, (seqs) => void run.pipeline.release(seqs));
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
