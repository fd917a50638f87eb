// What every generating route does first: find the cluster, check the model name, read sampling settings,
// render + tokenize, fit the prompt in the window, then start the run.

import { ChatFormatter } from "../chat/chat-formatter.js";
import {
  type ReplyConstraints,
  type ResponseFormat,
  toolConstraintSpec,
  unconstrained,
} from "../chat/constraints.js";
import type { Conversation } from "../chat/conversation.js";
import { PromptEncoder } from "../chat/prompt-encoder.js";
import { RequestError } from "../chat/request-error.js";
import type { SamplingParams } from "../common/engine-api.js";
import { ClusterError } from "../common/errors.js";
import { jsonSchemaProblem } from "../common/json-schema-check.js";
import type { ToolConstraintSpec } from "../common/tool-grammar.js";
import type { TokenGenerator } from "../coordinator/token-generator.js";
import { ModelNotFoundError } from "./errors.js";
import { budgetTokens, GenerationRun, type PreparedGeneration } from "./generation-run.js";
import type { RequestApi, RequestLog } from "./request-log.js";

export interface ApiDeps {
  generator(): TokenGenerator | undefined;
  modelDir: string;
  modelId: string;
  /** Where the route's requests are recorded for the dashboard and /metrics, under the route's API kind. */
  requests?: RequestLog;
  api?: RequestApi;
  /** Longest a generation may run, end to end (ApiServerOptions.requestTimeoutMs). */
  requestTimeoutMs?: number;
  /** The server's generations in flight, failed with a terminal event when it shuts down. */
  live?: Set<GenerationRun>;
}

export function requireGenerator(deps: ApiDeps): TokenGenerator {
  const generator = deps.generator();
  if (!generator)
    throw new ClusterError(
      "cluster_not_ready",
      "the cluster is not ready yet (model loading or nodes missing); retry shortly",
    );
  return generator;
}

export function checkModel(deps: ApiDeps, model: unknown): void {
  if (model === undefined || model === null || model === "") return;
  if (typeof model === "string" && model.toLowerCase() === deps.modelId.toLowerCase()) return;
  throw new ModelNotFoundError(String(model), deps.modelId);
}

interface SamplingFields {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  logit_bias?: Record<string, number> | null;
}

export function samplingOf(body: SamplingFields): SamplingParams {
  const sampling: SamplingParams = {};
  if (typeof body.temperature === "number") {
    if (body.temperature < 0 || body.temperature > 2)
      throw new RequestError("temperature must be between 0 and 2", "temperature");
    sampling.temperature = body.temperature;
  }
  if (typeof body.top_p === "number") {
    if (body.top_p <= 0 || body.top_p > 1) throw new RequestError("top_p must be in (0, 1]", "top_p");
    sampling.topP = body.top_p;
  }
  if (typeof body.top_k === "number" && body.top_k > 0) sampling.topK = Math.floor(body.top_k);
  if (typeof body.seed === "number") sampling.seed = Math.floor(body.seed) >>> 0;
  if (body.logit_bias) {
    sampling.logitBias = Object.entries(body.logit_bias).map(([token, bias]): [number, number] => {
      const id = Number(token);
      if (!Number.isInteger(id) || id < 0)
        throw new RequestError(`logit_bias key "${token}" is not a token id`, "logit_bias");
      return [id, bias];
    });
  }
  return sampling;
}

export interface StartOptions {
  maxTokens: number | null | undefined;
  sampling: SamplingParams;
  stopStrings: string[];
  /** The reply's allowed shape (tools, format); unconstrained when absent. */
  constraints?: ReplyConstraints;
}

/** What a run generates from: a conversation (rendered by the model's template, the reply parsed into
 * reasoning, text and tool calls) or plain text (a completion: no template, the reply raw). */
export type RunInput = { conversation: Conversation } | { text: string };

/**
 * A json_schema format must compile before the request is accepted: xgrammar cannot do every schema (a regex
 * `pattern` with a lookbehind, for one), and a schema it cannot compile is refused here with a 400 naming it.
 */
async function checkResponseFormat(format: ResponseFormat | undefined): Promise<void> {
  if (format?.type !== "json_schema") return;
  const problem = await jsonSchemaProblem(format.schema);
  if (problem)
    throw new RequestError(
      `${format.param} cannot be enforced: the grammar engine (xgrammar) cannot compile it: ${problem} Remove or simplify what it names (a regex pattern may use no lookaround, backreference, word boundary or \\p{...} class).`,
      format.param,
    );
}

/**
 * A tool parameter's JSON value is constrained by its schema only where xgrammar can compile that schema (asked
 * of the same disposable copy as a response format, answers remembered per schema); a client's tools are not
 * refused for it: such a parameter keeps free text.
 */
async function compilableToolValues(spec: ToolConstraintSpec): Promise<ToolConstraintSpec> {
  if (spec.choice === "none" || spec.format) return spec;
  const tools = await Promise.all(
    spec.tools.map(async (tool) => {
      if (!tool.values) return tool;
      const values = { ...tool.values };
      for (const [name, value] of Object.entries(values))
        if (value.kind === "json" && (await jsonSchemaProblem(value.schema)) !== undefined)
          delete values[name];
      return { ...tool, values };
    }),
  );
  return { ...spec, tools };
}

/** Request → a started run (or a thrown error with the right status). */
export async function startRun(
  deps: ApiDeps,
  input: RunInput,
  options: StartOptions,
): Promise<GenerationRun> {
  const generator = requireGenerator(deps);
  await checkResponseFormat(options.constraints?.responseFormat);
  const formatter = ChatFormatter.forModelDir(deps.modelDir);
  const chat = "conversation" in input;
  // On a worker thread: a prompt of megabytes must not stall the event loop (and the heartbeats with it); one
  // that cannot fit the window is refused once a window's worth of it is counted.
  const prompt = await PromptEncoder.forModelDir(deps.modelDir).encode(input, generator.contextWindow);
  if (prompt.length === 0) throw new RequestError("prompt must not be empty", "prompt");
  // A completion without max_tokens writes 16 tokens (OpenAI's default); a chat reply may fill the window.
  const requested = chat ? options.maxTokens : (options.maxTokens ?? 16);
  const prepared: PreparedGeneration = {
    prompt,
    maxTokens: budgetTokens(generator.contextWindow, prompt.length, requested),
    // A chat reply is constrained where it is sampled (the last stage): tool_choice, parallel_tool_calls and
    // only declared tools. Plain completions are not.
    sampling: chat
      ? {
          ...options.sampling,
          constraint: await compilableToolValues(
            toolConstraintSpec(options.constraints ?? unconstrained, input.conversation.tools),
          ),
        }
      : options.sampling,
    stopStrings: options.stopStrings,
    tools: chat ? input.conversation.tools : [],
    parseReply: chat,
    constraints: options.constraints ?? unconstrained,
    // Last: a prompt refused above (too long) never shows as a request in flight.
    track: deps.requests?.begin(deps.api ?? (chat ? "chat.completions" : "completions"), prompt.length),
    timeoutMs: deps.requestTimeoutMs,
    live: deps.live,
  };
  return GenerationRun.start(generator, formatter, prepared);
}
