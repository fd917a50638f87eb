// One engine shard and its work queue. Frames from the inbound Data stream become queued items; whenever the
// engine is free, the queued items of one wave (at most one item per sequence, so positions stay in order; see
// stage-queue.ts) run as one engine.forward batch. Outputs go downstream (hidden states) or to the coordinator
// (sampled tokens). Several stages therefore work at the same time on different sequences, which is where a
// pipeline's throughput comes from. A bad frame or an engine failure fails only the sequences concerned, with an
// ERROR frame.

import type {
  Engine,
  ForwardItem,
  ForwardOutput,
  KvBlockSlice,
  KvBlockTake,
  SamplingParams,
} from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import { loadVocabulary, type TokenVocabulary } from "../common/token-vocabulary.js";
import type { ToolConstraintSpec } from "../common/tool-grammar.js";
import { type TokenMask, ToolConstraint, ToolGrammar } from "../common/tool-grammar.js";
import {
  type AssembledItem,
  chunkFrames,
  decodeTokens,
  dtypeName,
  expectedPayloadBytes,
  FrameAssembler,
  fromWireSampling,
  nowUs,
  toWireLogprobs,
  toWireSampling,
} from "../common/wire/frames.js";
import { LatencyWindow } from "../common/wire/latency.js";
import { type DataFrame, type DataFrameOut, Dtype, FrameKind } from "../common/wire/types.js";
import { ReplyConstraint } from "./reply-constraint.js";
import { WaveQueue } from "./stage-queue.js";

export interface StageConfig {
  planId: string;
  stageIndex: number;
  stageCount: number;
  embed: boolean;
  head: boolean;
  hiddenSize: number;
  /** Dtype of HIDDEN payloads this stage takes and sends. */
  activationDtype: Dtype;
  /** The model folder: its tokenizer.json gives the last stage the token bytes a constraint masks by. */
  modelDir?: string;
}

/** Where a stage's frames go: the next stage's Data stream, or the coordinator's Results stream. */
export interface FrameSink {
  write(frames: DataFrameOut[]): void;
}

export interface StageCounters {
  tokens: number;
  batches: number;
  items: number;
  busyMs: number;
  queueDepth: number;
  sequences: number;
  /** Prompt positions computed by a prefill (the prefix cache's misses): items up to a sequence's first result. */
  promptTokens: number;
}

interface QueuedItem {
  seq: number;
  step: number;
  position: number;
  count: number;
  tokens?: Int32Array;
  hidden?: Uint8Array;
  wantResult: boolean;
  originAtUs: number;
  wave: number;
  queuedAt: number;
}

interface SequenceState {
  sampling: SamplingParams;
  /** KV length once every queued item of the sequence has run. */
  nextPosition: number;
  /** Made by fork() or assemble() and waiting for its first item (step 0, at the prefix length). */
  forked?: boolean;
  /** Its prompt is done: an item that wanted a result (the prompt's last chunk) has run. */
  prefilled?: boolean;
  /** Last stage: the reply's constraint (tool calls, their values, a response format), fed every sampled token. */
  reply?: ReplyConstraint;
}

/**
 * Limits of one batch: enough to batch every decode step in flight. Prefill chunks are bounded by tokens so a
 * decode step never waits behind more than ~1k tokens of prefill; decode steps (one token) always join.
 */
const batchLimits = { maxItems: 64, maxPrefillTokens: 1024 };
/** A cancelled sequence's frames may still be on the wire; they are dropped for this long. */
const tombstoneMs = 120_000;

export class Stage {
  readonly config: StageConfig;
  private readonly engine: Engine;
  private readonly sink: () => FrameSink | undefined;
  private readonly log: (line: string) => void;
  private readonly queue = new WaveQueue<QueuedItem>(batchLimits);
  private readonly sequences = new Map<number, SequenceState>();
  private readonly tombstones = new Map<number, number>();
  private readonly hops = new LatencyWindow();
  private running = false;
  /** A pump about to start (after this turn's frames are queued) or waiting for a wave's late items. */
  private wakeUp: NodeJS.Immediate | undefined;
  private gatherTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly counters = { tokens: 0, batches: 0, items: 0, busyMs: 0, promptTokens: 0 };
  /** Grammars by their spec's JSON, with the masks their states gave (shared by the sequences of one spec). */
  private readonly grammars = new Map<string, { grammar: ToolGrammar; masks: Map<string, TokenMask> }>();

  constructor(
    engine: Engine,
    config: StageConfig,
    sink: () => FrameSink | undefined,
    log: (line: string) => void,
  ) {
    this.engine = engine;
    this.config = config;
    this.sink = sink;
    this.log = log;
  }

  /** A reassembler per inbound stream (chunks of one item never interleave on a stream). */
  newAssembler(): FrameAssembler {
    return new FrameAssembler();
  }

  /** Takes one frame from an inbound Data stream. Never throws: problems become ERROR frames. */
  accept(frame: DataFrame, assembler: FrameAssembler): void {
    if (this.closed) return;
    if (frame.sent_at_us > 0 && frame.chunk_index === 0) this.hops.add(nowUs() - frame.sent_at_us);
    if (frame.plan_id && frame.plan_id !== this.config.planId) {
      // Frames still in flight when a new plan was loaded: their sequences failed with the old pipeline, and
      // the same id may be live in this plan, so the frame is dropped without touching it.
      this.log(
        `dropped a frame of seq ${frame.seq} from plan ${frame.plan_id} (this stage serves ${this.config.planId})`,
      );
      return;
    }
    switch (frame.kind) {
      case FrameKind.CANCEL:
        this.drop(frame.seq);
        this.forward([
          { kind: FrameKind.CANCEL, seq: frame.seq, plan_id: this.config.planId, sent_at_us: nowUs() },
        ]);
        return;
      case FrameKind.ERROR:
        this.drop(frame.seq);
        this.forward([
          {
            ...this.errorFrame(frame.seq, frame.step, frame.error_code, frame.error),
            origin_stage: frame.origin_stage,
          },
        ]);
        return;
      case FrameKind.TOKENS:
      case FrameKind.HIDDEN:
        this.acceptWork(frame, assembler);
        return;
      default:
        this.fail(
          frame,
          "bad_request",
          `stage ${this.config.stageIndex} cannot take a frame of kind ${frame.kind}`,
        );
    }
  }

  private acceptWork(frame: DataFrame, assembler: FrameAssembler): void {
    if (this.tombstones.has(frame.seq)) return;
    const problem = this.headerProblem(frame);
    if (problem) {
      this.fail(frame, "bad_request", problem);
      return;
    }
    const expected = expectedPayloadBytes(
      frame,
      frame.kind === FrameKind.HIDDEN ? this.config.hiddenSize : undefined,
    );
    if (typeof expected === "string") {
      this.fail(frame, "bad_request", `seq ${frame.seq} step ${frame.step}: ${expected}`);
      return;
    }
    const item = assembler.push(frame, expected);
    if (item) this.enqueue(item);
  }

  /** Checks that the frame is the kind of work this stage runs. */
  private headerProblem(frame: DataFrame): string | undefined {
    const { embed, stageIndex, activationDtype } = this.config;
    if (frame.kind === FrameKind.TOKENS && !embed)
      return `stage ${stageIndex} holds no embedding and cannot take token ids (seq ${frame.seq})`;
    if (frame.kind === FrameKind.HIDDEN && embed)
      return `stage ${stageIndex} is the first stage and takes token ids, not hidden states (seq ${frame.seq})`;
    if (frame.kind === FrameKind.TOKENS && frame.dtype !== Dtype.I32)
      return `token frame of seq ${frame.seq} has dtype ${dtypeName(frame.dtype)}, expected i32`;
    if (frame.kind === FrameKind.HIDDEN && frame.dtype !== activationDtype)
      return `hidden frame of seq ${frame.seq} has dtype ${dtypeName(frame.dtype)}, this stage takes ${dtypeName(activationDtype)}`;
    return undefined;
  }

  private enqueue(assembled: AssembledItem): void {
    const { frame } = assembled;
    if ("problem" in assembled) {
      this.fail(frame, "bad_request", `seq ${frame.seq} step ${frame.step}: ${assembled.problem}`);
      return;
    }
    let state = this.sequences.get(frame.seq);
    if (frame.step === 0) {
      if (state && !state.forked) {
        this.fail(frame, "bad_request", `seq ${frame.seq} already exists on stage ${this.config.stageIndex}`);
        return;
      }
      // A forked sequence already holds its prefix's KV; its first item says how to sample.
      if (state) state.forked = false;
      else state = { sampling: {}, nextPosition: frame.position };
      try {
        state.sampling = fromWireSampling(frame.sampling);
        if (this.config.head && state.sampling.constraint) {
          const spec = state.sampling.constraint;
          state.reply = new ReplyConstraint(this.constraintFor(spec), this.vocabulary(), spec);
        }
      } catch (err) {
        this.fail(frame, "bad_request", `seq ${frame.seq}: bad constraint: ${errorMessage(err)}`);
        return;
      }
      this.sequences.set(frame.seq, state);
    } else if (!state) {
      this.fail(
        frame,
        "bad_request",
        `seq ${frame.seq} step ${frame.step}: unknown sequence on stage ${this.config.stageIndex}`,
      );
      return;
    }
    if (frame.position !== state.nextPosition) {
      this.fail(
        frame,
        "bad_request",
        `seq ${frame.seq} step ${frame.step}: position ${frame.position}, expected ${state.nextPosition}`,
      );
      return;
    }
    state.nextPosition += frame.count;
    const item: QueuedItem = {
      seq: frame.seq,
      step: frame.step,
      position: frame.position,
      count: frame.count,
      wantResult: frame.want_result,
      originAtUs: frame.origin_at_us,
      wave: frame.wave ?? 0,
      queuedAt: performance.now(),
    };
    if (frame.kind === FrameKind.TOKENS) item.tokens = decodeTokens(assembled.payload);
    else item.hidden = assembled.payload;
    this.queue.push(item);
    this.wake();
  }

  /**
   * Starts the pump after the frames that arrived with this one are queued too (one read from the socket often
   * holds a whole wave), unless it is running: then it takes the new item after the current batch.
   */
  private wake(): void {
    if (this.running || this.wakeUp || this.closed) return;
    clearTimeout(this.gatherTimer);
    this.gatherTimer = undefined;
    this.wakeUp = setImmediate(() => {
      this.wakeUp = undefined;
      void this.pump();
    });
  }

  /** Runs batches (see WaveQueue for which) until the queue is empty or a wave waits for its late items. */
  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (!this.closed && this.queue.length > 0) {
        const next = this.queue.next((seq) => this.sequences.has(seq));
        if ("waitMs" in next) {
          this.gatherTimer = setTimeout(() => {
            this.gatherTimer = undefined;
            void this.pump();
          }, next.waitMs);
          return;
        }
        await this.runBatch(next.batch);
      }
    } finally {
      this.running = false;
    }
  }

  private async runBatch(all: QueuedItem[]): Promise<void> {
    // Masks first (JSON grammars answer asynchronously); a grammar that fails (a schema
    // xgrammar cannot compile) fails its sequence only.
    const masks: Array<TokenMask | undefined> = [];
    const batch: QueuedItem[] = [];
    for (const item of all) {
      try {
        masks.push(await this.maskFor(item));
        batch.push(item);
      } catch (err) {
        this.failItem(
          item,
          "bad_request",
          `seq ${item.seq}: the constraint (a response format or a tool value) cannot be enforced: ${errorMessage(err)}`,
        );
      }
    }
    if (batch.length === 0) return;
    const inputs: ForwardItem[] = batch.map((item, i) => this.forwardItem(item, masks[i]));
    const started = performance.now();
    let outputs: ForwardOutput[];
    try {
      outputs = await this.engine.forward(inputs);
    } catch (err) {
      for (const item of batch)
        this.failItem(item, "model_error", `stage ${this.config.stageIndex}: ${errorMessage(err)}`);
      return;
    } finally {
      this.counters.busyMs += performance.now() - started;
      this.queue.ran(batch, performance.now() - started);
    }
    this.counters.batches++;
    this.counters.items += batch.length;
    for (let i = 0; i < batch.length; i++) {
      this.counters.tokens += batch[i].count;
      this.countPrompt(batch[i]);
      // A sequence cancelled while its item was computing produces nothing.
      if (this.sequences.has(batch[i].seq)) this.emit(batch[i], outputs[i]);
    }
  }

  private countPrompt(item: QueuedItem): void {
    const state = this.sequences.get(item.seq);
    if (!state || state.prefilled) return;
    this.counters.promptTokens += item.count;
    if (item.wantResult) state.prefilled = true;
  }

  private vocabulary(): TokenVocabulary {
    if (!this.config.modelDir)
      throw new Error("this stage knows no model folder to read the vocabulary from");
    return loadVocabulary(this.config.modelDir);
  }

  /** The mask of the token this item samples, from the sequence's own tokens so far (none: unconstrained). */
  private async maskFor(item: QueuedItem): Promise<TokenMask | undefined> {
    if (!this.config.head || !item.wantResult) return undefined;
    return this.sequences.get(item.seq)?.reply?.mask();
  }

  /** One ToolConstraint per sequence; the grammar and its masks are shared by every sequence of the same spec. */
  private constraintFor(spec: ToolConstraintSpec): ToolConstraint {
    const vocabulary = this.vocabulary();
    const key = JSON.stringify(spec);
    let entry = this.grammars.get(key);
    if (!entry) {
      if (!Array.isArray(spec.tools) || typeof spec.parallel !== "boolean" || spec.choice === undefined)
        throw new Error("the spec needs choice, tools and parallel");
      entry = { grammar: new ToolGrammar(spec), masks: new Map() };
      if (this.grammars.size >= 64) this.grammars.delete(this.grammars.keys().next().value as string);
      this.grammars.set(key, entry);
    }
    return new ToolConstraint(entry.grammar, vocabulary, entry.masks);
  }

  private forwardItem(item: QueuedItem, mask: TokenMask | undefined): ForwardItem {
    const input: ForwardItem = { seq: item.seq, position: item.position };
    if (item.tokens) input.tokens = item.tokens;
    if (item.hidden) input.hidden = item.hidden;
    if (this.config.head) {
      const state = this.sequences.get(item.seq);
      const { constraint: _spec, ...sampling } = state?.sampling ?? {};
      if (mask && "allow" in mask) sampling.allowTokens = mask.allow;
      else if (mask) sampling.banTokens = mask.ban;
      input.sampling = sampling;
    }
    return input;
  }

  private emit(item: QueuedItem, output: ForwardOutput | undefined): void {
    const { planId, head, hiddenSize, activationDtype } = this.config;
    if (head) {
      if (!item.wantResult) return;
      if (output?.token === undefined) {
        this.failItem(
          item,
          "model_error",
          `stage ${this.config.stageIndex}: engine returned no token for seq ${item.seq}`,
        );
        return;
      }
      const state = this.sequences.get(item.seq);
      state?.reply?.accept(output.token);
      this.forward([
        {
          kind: FrameKind.RESULT,
          seq: item.seq,
          step: item.step,
          position: item.position,
          count: item.count,
          token: output.token,
          logprob: output.logprob ?? 0,
          top_logprobs: toWireLogprobs(output.topLogprobs),
          plan_id: planId,
          origin_at_us: item.originAtUs,
          sent_at_us: nowUs(),
        },
      ]);
      return;
    }
    if (!output?.hidden) {
      this.failItem(
        item,
        "model_error",
        `stage ${this.config.stageIndex}: engine returned no hidden state for seq ${item.seq}`,
      );
      return;
    }
    const header: DataFrameOut = {
      kind: FrameKind.HIDDEN,
      seq: item.seq,
      step: item.step,
      position: item.position,
      count: item.count,
      dtype: activationDtype,
      shape: [item.count, hiddenSize],
      want_result: item.wantResult,
      plan_id: planId,
      origin_at_us: item.originAtUs,
      wave: item.wave,
      sampling: item.step === 0 ? toWireSampling(this.sequences.get(item.seq)?.sampling ?? {}) : null,
      sent_at_us: nowUs(),
    };
    this.forward(chunkFrames(header, output.hidden));
  }

  /** Sends frames on (downstream, or to the coordinator from the last stage). */
  private forward(frames: DataFrameOut[]): void {
    const sink = this.sink();
    if (!sink) {
      this.log(
        `stage ${this.config.stageIndex}: no ${this.config.head ? "Results subscriber" : "downstream link"}; dropped ${frames.length} frame(s) of seq ${frames[0]?.seq}`,
      );
      return;
    }
    sink.write(frames);
  }

  private fail(frame: DataFrame, code: string, message: string): void {
    this.log(`stage ${this.config.stageIndex}: ${message}`);
    this.drop(frame.seq);
    this.forward([this.errorFrame(frame.seq, frame.step, code, message)]);
  }

  private failItem(item: QueuedItem, code: string, message: string): void {
    this.log(message);
    this.drop(item.seq);
    this.forward([this.errorFrame(item.seq, item.step, code, message)]);
  }

  private errorFrame(seq: number, step: number, code: string, message: string): DataFrameOut {
    return {
      kind: FrameKind.ERROR,
      seq,
      step,
      error_code: code,
      error: message,
      origin_stage: this.config.stageIndex,
      plan_id: this.config.planId,
      sent_at_us: nowUs(),
    };
  }

  /** Forgets a sequence: drops its queued work, frees its KV, ignores its late frames for a while. */
  private drop(seq: number): boolean {
    this.sequences.get(seq)?.reply?.dispose();
    const known = this.sequences.delete(seq);
    this.queue.removeSeq(seq);
    this.pruneTombstones();
    this.tombstones.set(seq, Date.now() + tombstoneMs);
    if (known)
      this.engine.release(seq).catch((err) => this.log(`release of seq ${seq} failed: ${errorMessage(err)}`));
    return known;
  }

  private pruneTombstones(): void {
    const now = Date.now();
    for (const [seq, until] of this.tombstones) if (until < now) this.tombstones.delete(seq);
  }

  /** Cancel: drops the sequences (queued and future work) and frees their KV. Returns how many were live. */
  cancel(seqs: number[]): number {
    let count = 0;
    for (const seq of seqs) if (this.drop(seq)) count++;
    return count;
  }

  /**
   * Fork (a prefix-cache hit): newSeq starts with the first prefixLength positions of seq's KV. The source must
   * be idle (a finished sequence kept as a cache entry), so its KV is complete. newSeq is known from now on, so
   * a Cancel that overtakes its first item still frees the copy.
   */
  async fork(seq: number, newSeq: number, prefixLength: number): Promise<void> {
    const source = this.sequences.get(seq);
    const where = `stage ${this.config.stageIndex}`;
    if (!source) throw new Error(`fork: ${where} holds no sequence ${seq}`);
    if (this.queue.hasSeq(seq)) throw new Error(`fork: sequence ${seq} still has work queued on ${where}`);
    if (this.sequences.has(newSeq) || this.tombstones.has(newSeq))
      throw new Error(`fork: sequence ${newSeq} already exists on ${where}`);
    if (!Number.isInteger(prefixLength) || prefixLength < 1 || prefixLength > source.nextPosition)
      throw new Error(
        `fork: prefix length ${prefixLength} is not within 1..${source.nextPosition} (sequence ${seq} on ${where})`,
      );
    this.sequences.set(newSeq, { sampling: {}, nextPosition: prefixLength, forked: true });
    try {
      await this.engine.fork(seq, newSeq, prefixLength);
    } catch (err) {
      this.sequences.delete(newSeq);
      throw err;
    }
  }

  /**
   * A finished sequence's positions become prefix-cache blocks (engine stashBlocks), then the sequence is freed.
   * Like fork's source, it must be idle, so its KV is complete.
   */
  async stash(seq: number, blocks: KvBlockSlice[]): Promise<void> {
    const where = `stage ${this.config.stageIndex}`;
    if (!this.sequences.has(seq)) throw new Error(`stash: ${where} holds no sequence ${seq}`);
    if (this.queue.hasSeq(seq)) throw new Error(`stash: sequence ${seq} still has work queued on ${where}`);
    try {
      if (blocks.length > 0) await this.engine.stashBlocks(seq, blocks);
    } finally {
      await this.release([seq]);
    }
  }

  /** Assemble (a prefix-cache hit): newSeq starts with the blocks' positions, as a forked sequence would. */
  async assemble(newSeq: number, blocks: KvBlockTake[]): Promise<void> {
    const where = `stage ${this.config.stageIndex}`;
    if (this.sequences.has(newSeq) || this.tombstones.has(newSeq))
      throw new Error(`assemble: sequence ${newSeq} already exists on ${where}`);
    const positions = blocks.reduce((sum, b) => sum + b.take, 0);
    this.sequences.set(newSeq, { sampling: {}, nextPosition: positions, forked: true });
    try {
      await this.engine.assemble(newSeq, blocks);
    } catch (err) {
      this.sequences.delete(newSeq);
      throw err;
    }
  }

  /** Release: a finished sequence; frees its KV. Returns how many were live. */
  async release(seqs: number[]): Promise<number> {
    let count = 0;
    for (const seq of seqs) {
      this.sequences.get(seq)?.reply?.dispose();
      if (!this.sequences.delete(seq)) continue;
      count++;
      await this.engine.release(seq);
    }
    return count;
  }

  snapshot(): StageCounters {
    return { ...this.counters, queueDepth: this.queue.length, sequences: this.sequences.size };
  }

  /** Inbound hop latency over the last minute, or over frames received since sinceMs (wall clock) only. */
  hopPercentiles(sinceMs = 0): { p50: number; p99: number; count: number } {
    const now = Date.now();
    const [p50, p99] = this.hops.percentiles([0.5, 0.99], now, sinceMs);
    return { p50, p99, count: this.hops.countSince(sinceMs, now) };
  }

  /** Stops taking work; the engine is closed by its owner once the current batch is done. */
  close(): void {
    this.closed = true;
    clearImmediate(this.wakeUp);
    clearTimeout(this.gatherTimer);
    this.queue.clear();
    this.sequences.clear();
  }
}
