// One request's generation: token ids from the scheduler → reasoning / text / tool-call events + usage.
// Both chat APIs and plain completions consume this; they only differ in how they write the events out.
import { randomBytes } from "node:crypto";
import type { ChatFormatter } from "../chat/chat-formatter.js";
import type { ReplyConstraints } from "../chat/constraints.js";
import type { TemplateTool } from "../chat/conversation.js";
import type { IncrementalDetokenizer } from "../chat/detokenizer.js";
import { ReplyParser } from "../chat/reply-parser.js";
import { StopStringMatcher } from "../chat/stop-strings.js";
import type { SamplingParams } from "../common/engine-api.js";
import { ClusterError, errorMessage } from "../common/errors.js";
import type { GenerationEvent, TokenGenerator } from "../coordinator/token-generator.js";
import { contextLengthError } from "./errors.js";
import type { RequestTracker } from "./request-log.js";

export interface PreparedGeneration {
  prompt: number[];
  maxTokens: number;
  sampling: SamplingParams;
  stopStrings: string[];
  tools: TemplateTool[];
  /** Chat replies are parsed (reasoning, tool calls); plain completions are raw text. */
  parseReply: boolean;
  /** What the request allows the reply to be (tools it may call, the format of its text). */
  constraints: ReplyConstraints;
  /** Figures for the dashboard and /metrics (api/request-log.ts). */
  track?: RequestTracker;
  /** The whole request (prefill and every token) must end within this; it then fails with "timeout". */
  timeoutMs?: number;
  /** The server's runs in flight: a shutdown fails the ones still here with a terminal event. */
  live?: Set<GenerationRun>;
}

export type OutputEvent =
  | { type: "reasoning"; delta: string }
  | { type: "text"; delta: string }
  | { type: "tool_call"; id: string; name: string; arguments: string };

export interface Usage {
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  reasoningTokens: number;
}

export type FinishReason = "stop" | "length" | "tool_calls";

/** Usage in the Chat Completions / Completions shape; reasoning tokens only where the reply is parsed. */
export function completionsUsage(u: Usage, withReasoning: boolean): Record<string, unknown> {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
    ...(withReasoning ? { completion_tokens_details: { reasoning_tokens: u.reasoningTokens } } : {}),
  };
}

/**
 * The `usage` field of a streamed chunk that is not the usage chunk: OpenAI sends `"usage": null` on every
 * other chunk when stream_options.include_usage asked for usage (clients tell the last chunk by it), and
 * no field otherwise.
 */
export function usagePlaceholder(body: { stream_options?: { include_usage?: boolean | null } | null }): {
  usage?: null;
} {
  return body.stream_options?.include_usage === true ? { usage: null } : {};
}

/** Cancels the run when the client closes the connection before the answer went out (non-streaming). */
export function cancelOnDisconnect(
  raw: NodeJS.EventEmitter & { writableFinished: boolean; destroyed: boolean },
  run: GenerationRun,
): void {
  // The client may have gone while the run was being admitted.
  if (raw.destroyed) run.cancel();
  raw.on("close", () => {
    if (!raw.writableFinished) run.cancel();
  });
}

/** How long to wait for the scheduler's verdict before the stream opens anyway (first event must be early). */
const ADMISSION_WAIT_MS = 1500;

export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(12).toString("hex")}`;
}

/** Checks the prompt against the window and settles the token budget: by default the rest of the window. */
export function budgetTokens(
  contextWindow: number,
  promptTokens: number,
  requested: number | null | undefined,
): number {
  if (promptTokens >= contextWindow) throw contextLengthError(contextWindow, promptTokens);
  const room = contextWindow - promptTokens;
  return requested ? Math.min(requested, room) : room;
}

/** How a run that threw ends in the request log: a cancellation the scheduler reports is not a failure. */
function finalStatusOf(err: unknown): "failed" | "cancelled" {
  return err instanceof ClusterError && err.code === "cancelled" ? "cancelled" : "failed";
}

export class GenerationRun {
  readonly usage: Usage;
  finishReason: FinishReason = "stop";
  private readonly controller = new AbortController();
  private readonly iterator: AsyncIterator<GenerationEvent>;
  private pending: Promise<IteratorResult<GenerationEvent>> | undefined;
  private readonly parser: ReplyParser | undefined;
  private readonly stopMatcher: StopStringMatcher;
  private readonly detokenizer: IncrementalDetokenizer;
  private calledTools = false;
  private finished = false;
  private readonly track: RequestTracker | undefined;
  /** Set by fail(): the error the consumer gets instead of the scheduler's "cancelled". */
  private failure: ClusterError | undefined;
  private readonly live: Set<GenerationRun> | undefined;
  private deadline: NodeJS.Timeout | undefined;

  private constructor(
    generator: TokenGenerator,
    private readonly formatter: ChatFormatter,
    prepared: PreparedGeneration,
  ) {
    this.usage = {
      promptTokens: prepared.prompt.length,
      cachedTokens: 0,
      completionTokens: 0,
      reasoningTokens: 0,
    };
    this.parser = prepared.parseReply ? new ReplyParser(prepared.tools) : undefined;
    this.stopMatcher = new StopStringMatcher(prepared.stopStrings);
    this.detokenizer = formatter.detokenizer();
    this.track = prepared.track;
    this.live = prepared.live;
    this.live?.add(this);
    if (prepared.timeoutMs !== undefined) {
      const ms = prepared.timeoutMs;
      this.deadline = setTimeout(
        () =>
          this.fail(
            new ClusterError("timeout", `the request took longer than the server's limit of ${ms} ms`),
          ),
        ms,
      );
      this.deadline.unref();
    }
    const stream = generator.generate({
      prompt: prepared.prompt,
      maxTokens: prepared.maxTokens,
      sampling: prepared.sampling,
      stopTokenIds: formatter.stopTokenIds,
      signal: this.controller.signal,
    });
    this.iterator = stream[Symbol.asyncIterator]();
  }

  /**
   * Submits the request. A refusal that comes at once (overloaded, not ready) rejects here, so the route can
   * still answer with a proper HTTP status; otherwise the run resolves within ADMISSION_WAIT_MS.
   */
  static async start(
    generator: TokenGenerator,
    formatter: ChatFormatter,
    prepared: PreparedGeneration,
  ): Promise<GenerationRun> {
    const run = new GenerationRun(generator, formatter, prepared);
    run.pending = run.iterator.next();
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<"waiting">((resolve) => {
      timer = setTimeout(() => resolve("waiting"), ADMISSION_WAIT_MS);
    });
    try {
      await Promise.race([run.pending, waited]);
    } catch (err) {
      run.track?.finish(finalStatusOf(err), errorMessage(err));
      run.settle();
      // A timeout (or shutdown) that struck during admission reports itself, not the cancel it caused.
      throw run.failure ?? err;
    } finally {
      clearTimeout(timer);
    }
    return run;
  }

  /** The client is gone (or a stop string ended the reply): free the sequence on every stage. */
  cancel(): void {
    if (this.finished || this.controller.signal.aborted) {
      this.settle();
      return;
    }
    this.track?.finish("cancelled");
    this.controller.abort();
    this.settle();
    void this.iterator.return?.().catch(() => undefined);
  }

  /**
   * Ends the run with `error` (a timeout, a server shutdown): the sequence is freed like a cancel, and the
   * consumer of events() gets `error`, so the route writes it as the stream's terminal event.
   */
  fail(error: ClusterError): void {
    if (this.finished || this.controller.signal.aborted) return;
    this.failure = error;
    this.track?.finish("failed", error.message);
    this.cancel();
  }

  /** Off the server's list of runs in flight, no timer left behind. */
  private settle(): void {
    clearTimeout(this.deadline);
    this.live?.delete(this);
  }

  /** The client's stop string that ended the reply, if one did. */
  get stopSequence(): string | undefined {
    return this.stopMatcher.matched;
  }

  get cancelled(): boolean {
    return this.controller.signal.aborted;
  }

  async *events(): AsyncGenerator<OutputEvent> {
    try {
      yield* this.consume();
      this.track?.finish(this.finishReason === "length" ? "incomplete" : "completed");
    } catch (err) {
      this.track?.finish(finalStatusOf(err), errorMessage(err));
      throw err;
    } finally {
      this.settle();
      // A consumer that stopped reading early (client gone) ends the request as cancelled.
      this.track?.finish("cancelled");
      // Closing the scheduler's iterator runs its cleanup (release of the sequence on every stage); a
      // generator paused at its last `yield` would otherwise hold the KV until it is collected.
      if (!this.controller.signal.aborted) await this.iterator.return?.().catch(() => undefined);
    }
  }

  private async *consume(): AsyncGenerator<OutputEvent> {
    for (;;) {
      let next: IteratorResult<GenerationEvent>;
      try {
        next = await (this.pending ?? this.iterator.next());
      } catch (err) {
        throw this.failure ?? err;
      }
      this.pending = undefined;
      if (this.failure) throw this.failure;
      if (next.done) this.finished = true;
      if (next.done || this.cancelled) break;
      const event = next.value;
      if (event.type === "admitted") {
        this.usage.promptTokens = event.promptTokens;
        this.usage.cachedTokens = event.cachedTokens;
        this.track?.admitted(event.promptTokens, event.cachedTokens);
        continue;
      }
      if (event.type === "end") {
        this.finished = true;
        this.finishReason = event.reason;
        break;
      }
      yield* this.onToken(event.token);
      if (this.stopMatcher.hasStopped) {
        this.finishReason = "stop";
        // A stop string is a normal end; the cancel below only frees the sequence.
        this.track?.finish("completed");
        this.cancel();
        break;
      }
    }
    yield* this.flush();
    if (this.calledTools) this.finishReason = "tool_calls";
  }

  private *onToken(token: number): Generator<OutputEvent> {
    this.usage.completionTokens++;
    this.track?.token();
    if (this.parser?.inReasoning) this.usage.reasoningTokens++;
    if (this.formatter.stopTokenIds.includes(token)) return;
    yield* this.onText(this.detokenizer.push(token));
  }

  private *onText(text: string): Generator<OutputEvent> {
    if (text === "") return;
    if (!this.parser) {
      yield* this.visible(text);
      return;
    }
    for (const event of this.parser.push(text)) yield* this.fromReply(event);
  }

  private *fromReply(event: ReturnType<ReplyParser["push"]>[number]): Generator<OutputEvent> {
    if (event.type === "reasoning") yield event;
    else if (event.type === "text") yield* this.visible(event.delta);
    else if (!this.stopMatcher.hasStopped) {
      this.calledTools = true;
      yield { type: "tool_call", id: newId("call"), name: event.name, arguments: event.arguments };
    }
  }

  private *visible(text: string): Generator<OutputEvent> {
    const safe = this.stopMatcher.push(text);
    if (safe !== "") yield { type: "text", delta: safe };
  }

  private *flush(): Generator<OutputEvent> {
    if (!this.stopMatcher.hasStopped) yield* this.onText(this.detokenizer.flush());
    if (this.parser) for (const event of this.parser.finish()) yield* this.fromReply(event);
    const rest = this.stopMatcher.flush();
    if (rest !== "") yield { type: "text", delta: rest };
  }
}
