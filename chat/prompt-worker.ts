// The worker thread behind chat/prompt-encoder.ts: renders the chat template and tokenizes, so a prompt of
// megabytes never holds up the event loop of the process that serves the API and keeps the heartbeats.
import { parentPort, workerData } from "node:worker_threads";
import { ClusterError } from "../common/errors.js";
import { ChatFormatter } from "./chat-formatter.js";
import { PromptTooLongError } from "./prompt-budget.js";
import type { PromptJob, PromptResult } from "./prompt-encoder.js";
import { RequestError } from "./request-error.js";

const formatter = ChatFormatter.forModelDir((workerData as { modelDir: string }).modelDir);

parentPort?.on("message", (job: PromptJob) => {
  let result: PromptResult;
  try {
    const ids = Int32Array.from(formatter.encodePrompt(job.input, job.limit));
    parentPort?.postMessage({ id: job.id, ids } satisfies PromptResult, [ids.buffer]);
    return;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (err instanceof PromptTooLongError)
      result = {
        id: job.id,
        error: { kind: "too_long", contextWindow: err.contextWindow, moreThan: err.moreThan },
      };
    else if (err instanceof RequestError)
      result = { id: job.id, error: { kind: "request", message, param: err.param } };
    else if (err instanceof ClusterError)
      result = { id: job.id, error: { kind: "cluster", message, code: err.code } };
    else result = { id: job.id, error: { kind: "other", message } };
  }
  parentPort?.postMessage(result);
});
