// POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API, for Anthropic's SDKs, Claude Code
// (ANTHROPIC_BASE_URL) and OpenClaw's "anthropic-messages" providers. The reply is the same run the OpenAI
// routes stream (api/generation-run.ts), written as content blocks: the reasoning as `thinking`, the visible
// text as `text`, each tool call as `tool_use`. One encapsulated plugin, so that every error its routes give
// (including the /v1 hooks' 401 and 503) has Anthropic's shape.
import { createHash } from "node:crypto";
import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import type { FastifyError, FastifyPluginAsync, FastifyReply } from "fastify";
import { fromAnthropicMessages } from "../../chat/anthropic-messages.js";
import { PromptEncoder } from "../../chat/prompt-encoder.js";
import { RequestError } from "../../chat/request-error.js";
import { stopStrings } from "../../chat/stop-strings.js";
import { ClusterError } from "../../common/errors.js";
import {
  type AnthropicError,
  type AnthropicErrorBody,
  anthropicError,
  fromApiError,
  toAnthropicError,
} from "../anthropic-errors.js";
import type { OpenAIErrorBody } from "../errors.js";
import { cancelOnDisconnect, type GenerationRun, newId, type OutputEvent } from "../generation-run.js";
import { type ApiDeps, checkModel, samplingOf, startRun } from "../request-context.js";
import { streamRun } from "../sse.js";

const Block = Type.Object({ type: Type.String() });
const Content = Type.Union([Type.String(), Type.Array(Block)]);
/** An optional field, which some clients send as null rather than leave out. */
const Opt = <T extends TSchema>(schema: T) => Type.Optional(Type.Union([schema, Type.Null()]));
const Conversation = {
  model: Type.String({ minLength: 1 }),
  system: Opt(Content),
  messages: Type.Array(
    Type.Object({
      // "system": Claude Code's mid-conversation system messages (chat/anthropic-messages.ts).
      role: Type.Union([Type.Literal("user"), Type.Literal("assistant"), Type.Literal("system")]),
      content: Content,
    }),
    { minItems: 1 },
  ),
  tools: Opt(Type.Array(Type.Object({ name: Type.String() }))),
  tool_choice: Opt(Type.Object({ type: Type.String() })),
  thinking: Opt(Type.Object({ type: Type.String() })),
};

export const MessagesBody = Type.Object({
  ...Conversation,
  max_tokens: Type.Integer({ minimum: 1 }),
  stream: Opt(Type.Boolean()),
  temperature: Opt(Type.Number({ minimum: 0, maximum: 1 })),
  top_p: Opt(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
  top_k: Opt(Type.Integer({ minimum: 0 })),
  stop_sequences: Opt(Type.Array(Type.String())),
  metadata: Opt(Type.Object({})),
});
export type MessagesBody = Static<typeof MessagesBody>;

export const CountTokensBody = Type.Object(Conversation);
export type CountTokensBody = Static<typeof CountTokensBody>;

type StopReason = "end_turn" | "max_tokens" | "stop_sequence" | "tool_use";

type ContentBlock =
  | { type: "thinking"; thinking: string; signature: string }
  | { type: "text"; text: string }
  | { type: "tool_use"; id: string; name: string; input: Record<string, unknown> };

type Emit = (type: string, payload: Record<string, unknown>) => void;

/**
 * The thinking block's signature. Anthropic's clients keep it and send it back with the block; this server
 * does not verify it (the reasoning is given back to the template as written): it is the SHA-256 of the text.
 */
function signatureOf(thinking: string): string {
  return createHash("sha256").update(thinking).digest("base64");
}

/** Anthropic's usage: input_tokens are the prompt tokens NOT read from the prefix cache. */
function usageOf(run: GenerationRun): Record<string, number> {
  const u = run.usage;
  return {
    input_tokens: u.promptTokens - u.cachedTokens,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: u.cachedTokens,
    output_tokens: u.completionTokens,
  };
}

function stopReasonOf(run: GenerationRun): StopReason {
  if (run.finishReason === "length") return "max_tokens";
  if (run.finishReason === "tool_calls") return "tool_use";
  return run.stopSequence !== undefined ? "stop_sequence" : "end_turn";
}

/** Builds the content blocks and, when streaming, the events that announce them, in Anthropic's order. */
class MessageBuilder {
  readonly id = newId("msg");
  readonly content: ContentBlock[] = [];
  private open: ContentBlock | undefined;

  constructor(
    private readonly model: string,
    private readonly emit: Emit,
    private readonly showThinking: boolean,
  ) {}

  envelope(run: GenerationRun, done: boolean): Record<string, unknown> {
    return {
      id: this.id,
      type: "message",
      role: "assistant",
      model: this.model,
      content: done ? this.content : [],
      stop_reason: done ? stopReasonOf(run) : null,
      stop_sequence: done ? (run.stopSequence ?? null) : null,
      usage: usageOf(run),
    };
  }

  on(event: OutputEvent): void {
    if (event.type === "reasoning") {
      if (!this.showThinking) return;
      const block = this.blockOf("thinking", () => ({ type: "thinking", thinking: "", signature: "" }));
      block.thinking += event.delta;
      this.delta({ type: "thinking_delta", thinking: event.delta });
    } else if (event.type === "text") {
      const block = this.blockOf("text", () => ({ type: "text", text: "" }));
      block.text += event.delta;
      this.delta({ type: "text_delta", text: event.delta });
    } else {
      this.close();
      const input = JSON.parse(event.arguments) as Record<string, unknown>;
      const block: ContentBlock = { type: "tool_use", id: newId("toolu"), name: event.name, input: {} };
      this.start(block);
      this.delta({ type: "input_json_delta", partial_json: event.arguments });
      block.input = input;
      this.close();
    }
  }

  /** The open block when it has this type; otherwise the open one is closed and a new one started. */
  private blockOf<T extends ContentBlock["type"]>(
    type: T,
    make: () => Extract<ContentBlock, { type: T }>,
  ): Extract<ContentBlock, { type: T }> {
    if (this.open?.type === type) return this.open as Extract<ContentBlock, { type: T }>;
    this.close();
    const block = make();
    this.start(block);
    return block;
  }

  private start(block: ContentBlock): void {
    this.open = block;
    this.content.push(block);
    // The block as it starts: empty text, empty input.
    this.emit("content_block_start", { index: this.content.length - 1, content_block: { ...block } });
  }

  private delta(delta: Record<string, unknown>): void {
    this.emit("content_block_delta", { index: this.content.length - 1, delta });
  }

  close(): void {
    const block = this.open;
    if (!block) return;
    this.open = undefined;
    if (block.type === "thinking") {
      block.signature = signatureOf(block.thinking);
      this.delta({ type: "signature_delta", signature: block.signature });
    }
    this.emit("content_block_stop", { index: this.content.length - 1 });
  }
}

/** "/messages/0/role" → "messages.0.role" (Anthropic's field paths). */
function pathOf(pointer: string): string {
  return pointer.split("/").filter(Boolean).join(".");
}

/** The first way a body fails the route's schema → one sentence naming the field, as Anthropic words it. */
function schemaMessage(error: ValueError | undefined): string {
  if (!error) return "body: invalid";
  const at = pathOf(error.path) || "body";
  if (error.type === ValueErrorType.ObjectRequiredProperty) return `${at}: Field required`;
  if (error.type === ValueErrorType.Union) {
    const branches = (error.schema.anyOf ?? []) as TSchema[];
    const literals = branches.map((b) => b.const);
    if (literals.length > 0 && literals.every((v) => typeof v === "string"))
      return `${at}: Input should be ${literals
        .map((v) => `'${v}'`)
        .join(", ")
        .replace(/, ([^,]*)$/, " or $1")}`;
    // An optional field (T or null): say what is wrong with it as a T.
    if (branches.length === 2 && branches[1].type === "null") return schemaMessage(error.errors[0]?.First());
  }
  return `${at}: ${error.message}`;
}

/**
 * The routes' body schemas, checked by TypeBox as written: fastify's default Ajv coerces types ("array"
 * coercion rewrites a content array inside a string-or-array union), which would turn valid bodies away.
 */
function validatorOf(schema: TSchema): (data: unknown) => { value?: unknown; error?: Error } {
  const check = TypeCompiler.Compile(schema);
  return (data) => {
    if (check.Check(data)) return { value: data };
    const first = check.Errors(data).First();
    return { error: new RequestError(schemaMessage(first), first ? pathOf(first.path) : null) };
  };
}

function sendAnthropicError(reply: FastifyReply, error: AnthropicError): FastifyReply {
  if (error.retryAfter !== undefined) reply.header("retry-after", String(error.retryAfter));
  return reply.code(error.status).send(error.body);
}

function isOpenAiError(value: unknown): value is OpenAIErrorBody {
  const error = (value as { error?: unknown } | null)?.error;
  return typeof error === "object" && error !== null && (value as { type?: unknown }).type !== "error";
}

/** How long an idle stream waits before a `ping` (a long prefill must not look like a dead connection). */
const PING_INTERVAL_MS = 10_000;

export const messagesPlugin: FastifyPluginAsync<ApiDeps> = async (app, deps) => {
  app.setValidatorCompiler(({ schema }) => validatorOf(schema as TSchema));
  app.setErrorHandler((err: FastifyError, _request, reply) => {
    // Fastify's own rejections (bad JSON, a body over the limit: 413) carry their 4xx status.
    if (!(err instanceof ClusterError) && err.statusCode && err.statusCode < 500)
      return sendAnthropicError(reply, anthropicError(err.statusCode, `invalid request: ${err.message}`));
    return sendAnthropicError(reply, toAnthropicError(err));
  });
  // The /v1 hooks (API key, drain, forwarding) answer in OpenAI's shape; these routes' clients read Anthropic's.
  app.addHook("onSend", async (_request, reply, payload) => {
    if (reply.statusCode < 400 || typeof payload !== "string") return payload;
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload);
    } catch {
      return payload;
    }
    if (!isOpenAiError(parsed)) return payload;
    const retry = Number(reply.getHeader("retry-after"));
    const converted = fromApiError({
      status: reply.statusCode,
      body: parsed,
      retryAfter: Number.isFinite(retry) && retry > 0 ? retry : undefined,
    });
    reply.code(converted.status);
    return JSON.stringify(converted.body satisfies AnthropicErrorBody);
  });
  app.setNotFoundHandler((request, reply) =>
    sendAnthropicError(reply, anthropicError(404, `no route ${request.method} ${request.url.split("?")[0]}`)),
  );

  app.post<{ Body: CountTokensBody }>(
    "/count_tokens",
    { schema: { body: CountTokensBody } },
    async (request) => {
      const body = request.body;
      checkModel(deps, body.model);
      const { conversation } = fromAnthropicMessages(body);
      // On the prompt worker, as for generation: counting a prompt of megabytes must not stall the event loop.
      const ids = await PromptEncoder.forModelDir(deps.modelDir).encode({ conversation });
      return { input_tokens: ids.length };
    },
  );

  app.post<{ Body: MessagesBody }>("/", { schema: { body: MessagesBody } }, async (request, reply) => {
    const body = request.body;
    checkModel(deps, body.model);
    const { conversation, choice } = fromAnthropicMessages(body);
    const run = await startRun(
      deps,
      { conversation },
      {
        constraints: {
          toolChoice: choice.toolChoice,
          parallelToolCalls: choice.parallelToolCalls,
          responseFormat: { type: "text" },
        },
        maxTokens: body.max_tokens,
        sampling: samplingOf(body),
        stopStrings: stopStrings(body.stop_sequences),
      },
    );
    const model = body.model;
    // The model always reasons; a request that turns thinking off gets no thinking blocks.
    const showThinking = body.thinking?.type !== "disabled";
    if (!body.stream) {
      cancelOnDisconnect(reply.raw, run);
      const builder = new MessageBuilder(model, () => undefined, showThinking);
      for await (const event of run.events()) builder.on(event);
      builder.close();
      return reply.send(builder.envelope(run, true));
    }
    let ping: NodeJS.Timeout | undefined;
    await streamRun(reply, run, (sse) => {
      let lastSent = Date.now();
      const emit: Emit = (type, payload) => {
        lastSent = Date.now();
        sse.send({ type, ...payload }, type);
      };
      const builder = new MessageBuilder(model, emit, showThinking);
      const stopPing = () => clearInterval(ping);
      return {
        open: () => {
          emit("message_start", { message: builder.envelope(run, false) });
          emit("ping", {});
          ping = setInterval(() => {
            if (Date.now() - lastSent >= PING_INTERVAL_MS) emit("ping", {});
          }, PING_INTERVAL_MS / 2);
          ping.unref();
        },
        event: (event) => builder.on(event),
        end: () => {
          stopPing();
          builder.close();
          emit("message_delta", {
            delta: { stop_reason: stopReasonOf(run), stop_sequence: run.stopSequence ?? null },
            usage: usageOf(run),
          });
          emit("message_stop", {});
        },
        fail: (err) => {
          stopPing();
          sse.send(toAnthropicError(err).body, "error");
        },
      };
    });
  });
};
