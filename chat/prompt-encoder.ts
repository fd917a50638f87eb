// Template + tokenizer off the event loop: one worker thread per model directory (chat/prompt-worker.ts) turns a
// conversation or a text into token ids. Rendering and tokenizing a prompt of megabytes takes seconds; on the
// event loop that froze the API, and the coordinator's heartbeats with it, so every stream in flight ended
// `node_lost`. Errors come back as the classes the API maps to statuses. Run from TypeScript sources (the
// in-process tests), where no compiled worker exists, it encodes inline.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { ClusterError, type ClusterErrorCode } from "../common/errors.js";
import { ChatFormatter } from "./chat-formatter.js";
import type { Conversation } from "./conversation.js";
import { PromptTooLongError } from "./prompt-budget.js";
import { RequestError } from "./request-error.js";

export type PromptInput = { conversation: Conversation } | { text: string };

export interface PromptJob {
  id: number;
  input: PromptInput;
  /** The window: a prompt clearly longer is refused before it is tokenized whole (chat/prompt-budget.ts). */
  limit?: number;
}

export type PromptResult =
  | { id: number; ids: Int32Array }
  | {
      id: number;
      error:
        | { kind: "request"; message: string; param: string | null }
        | { kind: "cluster"; message: string; code: ClusterErrorCode }
        | { kind: "too_long"; contextWindow: number; moreThan: number }
        | { kind: "other"; message: string };
    };

interface Pending {
  resolve(ids: number[]): void;
  reject(err: Error): void;
}

const workerFile = fileURLToPath(new URL("./prompt-worker.js", import.meta.url));

export class PromptEncoder {
  private static readonly byDir = new Map<string, PromptEncoder>();
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  private constructor(private readonly modelDir: string) {}

  static forModelDir(modelDir: string): PromptEncoder {
    let encoder = PromptEncoder.byDir.get(modelDir);
    if (!encoder) {
      encoder = new PromptEncoder(modelDir);
      PromptEncoder.byDir.set(modelDir, encoder);
    }
    return encoder;
  }

  /**
   * Token ids of the rendered conversation (generation prompt appended) or of the text; with `limit`, a prompt
   * clearly longer than it is refused with PromptTooLongError before it is tokenized whole.
   */
  encode(input: PromptInput, limit?: number): Promise<number[]> {
    if (!existsSync(workerFile))
      return Promise.resolve().then(() => encodeInline(this.modelDir, input, limit));
    const worker = this.startWorker();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Held while it has work, so that a caller awaiting its prompt is not left behind by an exiting process.
      if (this.pending.size === 1) worker.ref();
      worker.postMessage({ id, input, limit } satisfies PromptJob);
    });
  }

  private startWorker(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(workerFile, { workerData: { modelDir: this.modelDir } });
    worker.on("message", (result: PromptResult) => this.settle(result));
    const fail = (err: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const p of this.pending.values()) p.reject(new Error(`the prompt worker failed: ${err.message}`));
      this.pending.clear();
    };
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`it exited with code ${code}`)));
    // Idle, it must not keep the process alive: unref'd after its listeners are on, since a 'message' listener
    // added later refs the worker's port again (a stopped server's process then never exited: bench:api's stalls).
    worker.unref();
    this.worker = worker;
    return worker;
  }

  private settle(result: PromptResult): void {
    const pending = this.pending.get(result.id);
    if (!pending) return;
    this.pending.delete(result.id);
    if (this.pending.size === 0) this.worker?.unref();
    if ("ids" in result) {
      pending.resolve(Array.from(result.ids));
      return;
    }
    const { error } = result;
    if (error.kind === "request") pending.reject(new RequestError(error.message, error.param));
    else if (error.kind === "cluster") pending.reject(new ClusterError(error.code, error.message));
    else if (error.kind === "too_long")
      pending.reject(new PromptTooLongError(error.contextWindow, error.moreThan));
    else pending.reject(new Error(error.message));
  }
}

function encodeInline(modelDir: string, input: PromptInput, limit: number | undefined): number[] {
  return ChatFormatter.forModelDir(modelDir).encodePrompt(input, limit);
}
