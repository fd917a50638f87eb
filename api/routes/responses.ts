// POST /v1/responses: the Responses API event sequence of docs/api.md, streamed or as one object.
import type { FastifyInstance, FastifyReply } from "fastify";
import { openAiResponseFormat, openAiToolChoice } from "../../chat/constraints.js";
import { fromResponses, toolNames } from "../../chat/conversation.js";
import { RequestError } from "../../chat/request-error.js";
import { stopStrings } from "../../chat/stop-strings.js";
import { errorMessage } from "../../common/errors.js";
import { apiError, sendApiError, toApiError } from "../errors.js";
import { cancelOnDisconnect, type GenerationRun, newId, type OutputEvent } from "../generation-run.js";
import { type ApiDeps, checkModel, samplingOf, startRun } from "../request-context.js";
import { ResponsesBody, validator } from "../request-schemas.js";
import { ResponseStore } from "../response-store.js";
import { streamRun } from "../sse.js";
import { refuseUnsupportedResponses } from "../unsupported.js";

const validate = validator(ResponsesBody, "POST /v1/responses");

type Item = Record<string, unknown> & { type: string; id: string };
interface Echo {
  tools: unknown[];
  toolChoice: unknown;
  parallelToolCalls: boolean;
  store: boolean;
  previousResponseId: string | null;
}
type Emit = (type: string, payload: Record<string, unknown>) => void;

/** Builds the output items and the events that announce them, in the order docs/api.md lists. */
class ResponseBuilder {
  readonly id = newId("resp");
  readonly createdAt = Math.floor(Date.now() / 1000);
  readonly output: Item[] = [];
  private reasoning: { item: Item; index: number; text: string } | undefined;
  private message: { item: Item; index: number; text: string } | undefined;

  constructor(
    private readonly model: string,
    private readonly emit: Emit,
    /** Echoed in the response object as the request gave them. */
    private readonly request: Echo = {
      tools: [],
      toolChoice: "auto",
      parallelToolCalls: true,
      store: false,
      previousResponseId: null,
    },
  ) {}

  envelope(status: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      id: this.id,
      object: "response",
      created_at: this.createdAt,
      status,
      model: this.model,
      output: status === "in_progress" ? [] : this.output,
      parallel_tool_calls: this.request.parallelToolCalls,
      tool_choice: this.request.toolChoice,
      tools: this.request.tools,
      store: this.request.store,
      previous_response_id: this.request.previousResponseId,
      error: null,
      incomplete_details: null,
      ...extra,
    };
  }

  on(event: OutputEvent): void {
    if (event.type === "reasoning") this.onReasoning(event.delta);
    else if (event.type === "text") this.onText(event.delta);
    else this.onToolCall(event);
  }

  private onReasoning(delta: string): void {
    if (this.message) this.closeMessage(); // reasoning after text starts a new reasoning item
    if (!this.reasoning) {
      const item: Item = { type: "reasoning", id: newId("rs"), summary: [] };
      this.reasoning = { item, index: this.output.length, text: "" };
      this.output.push(item);
      this.emit("response.output_item.added", { output_index: this.reasoning.index, item: { ...item } });
      this.emit("response.reasoning_summary_part.added", {
        output_index: this.reasoning.index,
        item_id: item.id,
        summary_index: 0,
        part: { type: "summary_text", text: "" },
      });
    }
    const r = this.reasoning;
    r.text += delta;
    // Each piece once, as a summary delta: clients that append both summary and reasoning_text deltas
    // (OpenClaw) showed it twice, and the openai SDK's accumulator needs a content part opened for
    // reasoning_text deltas. The full text reaches the item's `content` on output_item.done.
    this.emit("response.reasoning_summary_text.delta", {
      output_index: r.index,
      item_id: r.item.id,
      summary_index: 0,
      delta,
    });
  }

  private closeReasoning(): void {
    const r = this.reasoning;
    if (!r) return;
    this.reasoning = undefined;
    const ids = { output_index: r.index, item_id: r.item.id };
    this.emit("response.reasoning_summary_text.done", { ...ids, summary_index: 0, text: r.text });
    this.emit("response.reasoning_summary_part.done", {
      ...ids,
      summary_index: 0,
      part: { type: "summary_text", text: r.text },
    });
    r.item.summary = [{ type: "summary_text", text: r.text }];
    r.item.content = [{ type: "reasoning_text", text: r.text }];
    this.emit("response.output_item.done", { output_index: r.index, item: r.item });
  }

  private onText(delta: string): void {
    this.closeReasoning();
    if (!this.message) {
      const item: Item = {
        type: "message",
        id: newId("msg"),
        role: "assistant",
        content: [],
        status: "in_progress",
      };
      this.message = { item, index: this.output.length, text: "" };
      this.output.push(item);
      this.emit("response.output_item.added", {
        output_index: this.message.index,
        item: { ...item, content: [] },
      });
      this.emit("response.content_part.added", {
        output_index: this.message.index,
        item_id: item.id,
        content_index: 0,
        part: { type: "output_text", text: "", annotations: [] },
      });
    }
    this.message.text += delta;
    this.emit("response.output_text.delta", {
      output_index: this.message.index,
      item_id: this.message.item.id,
      content_index: 0,
      delta,
      logprobs: [],
    });
  }

  private closeMessage(): void {
    const m = this.message;
    if (!m) return;
    this.message = undefined;
    const part = { type: "output_text", text: m.text, annotations: [] };
    const ids = { output_index: m.index, item_id: m.item.id, content_index: 0 };
    this.emit("response.output_text.done", { ...ids, text: m.text, logprobs: [] });
    this.emit("response.content_part.done", { ...ids, part });
    m.item.content = [part];
    m.item.status = "completed";
    this.emit("response.output_item.done", { output_index: m.index, item: m.item });
  }

  private onToolCall(call: Extract<OutputEvent, { type: "tool_call" }>): void {
    this.closeReasoning();
    this.closeMessage();
    const index = this.output.length;
    const item: Item = {
      type: "function_call",
      id: newId("fc"),
      call_id: call.id,
      name: call.name,
      arguments: "",
      status: "in_progress",
    };
    this.output.push(item);
    this.emit("response.output_item.added", { output_index: index, item: { ...item } });
    this.emit("response.function_call_arguments.delta", {
      output_index: index,
      item_id: item.id,
      delta: call.arguments,
    });
    // Always the full arguments on .done: clients that ignore the deltas lose nothing.
    this.emit("response.function_call_arguments.done", {
      output_index: index,
      item_id: item.id,
      arguments: call.arguments,
    });
    item.arguments = call.arguments;
    item.status = "completed";
    this.emit("response.output_item.done", { output_index: index, item });
  }

  closeAll(): void {
    this.closeReasoning();
    this.closeMessage();
  }

  final(run: GenerationRun): { type: string; response: Record<string, unknown> } {
    const u = run.usage;
    const usage = {
      input_tokens: u.promptTokens,
      input_tokens_details: { cached_tokens: u.cachedTokens },
      output_tokens: u.completionTokens,
      output_tokens_details: { reasoning_tokens: u.reasoningTokens },
      total_tokens: u.promptTokens + u.completionTokens,
    };
    if (run.finishReason === "length")
      return {
        type: "response.incomplete",
        response: this.envelope("incomplete", { usage, incomplete_details: { reason: "max_output_tokens" } }),
      };
    return { type: "response.completed", response: this.envelope("completed", { usage }) };
  }
}

/**
 * The request's input as items, after those of the response it continues (previous_response_id): that
 * response's own input, then its output, as OpenAI chains them. Instructions and tools are the request's own.
 */
function inputOf(body: ResponsesBody, store: ResponseStore): unknown[] {
  const own = typeof body.input === "string" ? [body.input] : body.input;
  const previousId = body.previous_response_id;
  if (!previousId) return own;
  const previous = store.get(previousId);
  if (!previous)
    throw new RequestError(
      `Previous response with id '${previousId}' not found (previous_response_id): it was not stored (store: false), was deleted or evicted, or another node coordinated then; send the whole input`,
      "previous_response_id",
    );
  return [...previous.input, ...(previous.response.output as unknown[]), ...own];
}

function notFound(reply: FastifyReply, id: string): FastifyReply {
  return sendApiError(
    reply,
    apiError(404, `Response with id '${id}' not found.`, "response_not_found", "response_id"),
  );
}

/** GET and DELETE /v1/responses/{id}: the responses kept with store: true. */
function registerStored(app: FastifyInstance, store: ResponseStore): void {
  app.get<{ Params: { id: string } }>("/responses/:id", async (request, reply) => {
    const stored = store.get(request.params.id);
    return stored ? stored.response : notFound(reply, request.params.id);
  });
  app.delete<{ Params: { id: string } }>("/responses/:id", async (request, reply) => {
    if (!store.delete(request.params.id)) return notFound(reply, request.params.id);
    return { id: request.params.id, object: "response", deleted: true };
  });
}

export function registerResponses(app: FastifyInstance, deps: ApiDeps): void {
  const store = new ResponseStore();
  registerStored(app, store);
  app.post("/responses", async (request, reply) => {
    const body = validate(request.body);
    refuseUnsupportedResponses(body);
    checkModel(deps, body.model);
    const input = inputOf(body, store);
    const conversation = fromResponses(body.instructions, input, body.tools);
    const constraints = {
      toolChoice: openAiToolChoice(body.tool_choice, toolNames(conversation)),
      parallelToolCalls: body.parallel_tool_calls !== false,
      responseFormat: openAiResponseFormat(body.text?.format, "text.format"),
    };
    const run = await startRun(
      deps,
      { conversation },
      {
        maxTokens: body.max_output_tokens,
        sampling: samplingOf(body),
        stopStrings: stopStrings((body as { stop?: unknown }).stop),
        constraints,
      },
    );
    const model = body.model ?? deps.modelId;
    const echo: Echo = {
      tools: body.tools ?? [],
      toolChoice: body.tool_choice ?? "auto",
      parallelToolCalls: constraints.parallelToolCalls,
      // OpenAI's default: stored unless the request says store: false.
      store: body.store !== false,
      previousResponseId: body.previous_response_id ?? null,
    };
    /** The finished response, kept when the request asked for it. */
    const keep = (builder: ResponseBuilder, response: Record<string, unknown>) => {
      if (echo.store) store.put(builder.id, { response, input });
    };
    if (!body.stream) {
      cancelOnDisconnect(reply.raw, run);
      const builder = new ResponseBuilder(model, () => undefined, echo);
      for await (const event of run.events()) builder.on(event);
      builder.closeAll();
      const { response } = builder.final(run);
      keep(builder, response);
      return reply.send(response);
    }
    let sequence = 0;
    await streamRun(reply, run, (sse) => {
      const emit: Emit = (type, payload) => sse.send({ type, sequence_number: sequence++, ...payload }, type);
      const builder = new ResponseBuilder(model, emit, echo);
      return {
        open: () => {
          emit("response.created", { response: builder.envelope("in_progress") });
          emit("response.in_progress", { response: builder.envelope("in_progress") });
        },
        event: (event) => builder.on(event),
        end: () => {
          builder.closeAll();
          const terminal = builder.final(run);
          keep(builder, terminal.response);
          emit(terminal.type, { response: terminal.response });
        },
        fail: (err) => {
          const failure = toApiError(err);
          builder.closeAll();
          const response = builder.envelope("failed", {
            error: { code: failure.body.error.code ?? "server_error", message: errorMessage(err) },
          });
          keep(builder, response);
          emit("response.failed", { response });
        },
      };
    });
  });
}
