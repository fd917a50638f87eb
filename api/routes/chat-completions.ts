// POST /v1/chat/completions: chat.completion.chunk stream (role first, reasoning_content, content, tool_calls,
// finish chunk, a usage chunk always, [DONE]) or one chat.completion object.
import type { FastifyInstance } from "fastify";
import { openAiResponseFormat, openAiToolChoice } from "../../chat/constraints.js";
import { fromChatCompletions, toolNames } from "../../chat/conversation.js";
import { stopStrings } from "../../chat/stop-strings.js";
import { errorMessage } from "../../common/errors.js";
import { toApiError } from "../errors.js";
import {
  cancelOnDisconnect,
  completionsUsage,
  type GenerationRun,
  newId,
  type OutputEvent,
  usagePlaceholder,
} from "../generation-run.js";
import { type ApiDeps, checkModel, samplingOf, startRun } from "../request-context.js";
import { ChatCompletionsBody, validator } from "../request-schemas.js";
import { type SseStream, streamRun } from "../sse.js";
import { refuseUnsupportedChat } from "../unsupported.js";

const validate = validator(ChatCompletionsBody, "POST /v1/chat/completions");

type ToolCallOut = { id: string; type: "function"; function: { name: string; arguments: string } };

async function complete(
  run: GenerationRun,
  id: string,
  created: number,
  model: string,
): Promise<Record<string, unknown>> {
  let content = "";
  let reasoning = "";
  const toolCalls: ToolCallOut[] = [];
  for await (const event of run.events()) {
    if (event.type === "reasoning") reasoning += event.delta;
    else if (event.type === "text") content += event.delta;
    else
      toolCalls.push({
        id: event.id,
        type: "function",
        function: { name: event.name, arguments: event.arguments },
      });
  }
  const message: Record<string, unknown> = {
    role: "assistant",
    content: content === "" && toolCalls.length ? null : content,
  };
  if (reasoning !== "") message.reasoning_content = reasoning;
  if (toolCalls.length > 0) message.tool_calls = toolCalls;
  return {
    id,
    object: "chat.completion",
    created,
    model,
    choices: [{ index: 0, message, finish_reason: run.finishReason, logprobs: null }],
    usage: completionsUsage(run.usage, true),
  };
}

function deltaOf(event: OutputEvent, toolIndex: number): Record<string, unknown> {
  if (event.type === "reasoning") return { reasoning_content: event.delta };
  if (event.type === "text") return { content: event.delta };
  // The whole call in one chunk: id and name come with the first (and only) piece of each call.
  return {
    tool_calls: [
      {
        index: toolIndex,
        id: event.id,
        type: "function",
        function: { name: event.name, arguments: event.arguments },
      },
    ],
  };
}

export function registerChatCompletions(app: FastifyInstance, deps: ApiDeps): void {
  app.post("/chat/completions", async (request, reply) => {
    const body = validate(request.body);
    refuseUnsupportedChat(body);
    checkModel(deps, body.model);
    const conversation = fromChatCompletions(body.messages, body.tools);
    const run = await startRun(
      deps,
      { conversation },
      {
        constraints: {
          toolChoice: openAiToolChoice(body.tool_choice, toolNames(conversation)),
          parallelToolCalls: body.parallel_tool_calls !== false,
          responseFormat: openAiResponseFormat(body.response_format, "response_format"),
        },
        maxTokens: body.max_completion_tokens ?? body.max_tokens,
        sampling: samplingOf(body),
        stopStrings: stopStrings(body.stop),
      },
    );
    const id = newId("chatcmpl");
    const created = Math.floor(Date.now() / 1000);
    const model = body.model ?? deps.modelId;
    if (!body.stream) {
      cancelOnDisconnect(reply.raw, run);
      return reply.send(await complete(run, id, created, model));
    }
    const noUsage = usagePlaceholder(body);
    const chunk = (sse: SseStream, choices: unknown[], extra: Record<string, unknown> = noUsage) =>
      sse.send({
        id,
        object: "chat.completion.chunk",
        created,
        model,
        system_fingerprint: null,
        choices,
        ...extra,
      });
    const choice = (delta: Record<string, unknown>, finish: string | null = null) => ({
      index: 0,
      delta,
      logprobs: null,
      finish_reason: finish,
    });
    let toolIndex = 0;
    await streamRun(reply, run, (sse) => ({
      doneMarker: true,
      open: () => chunk(sse, [choice({ role: "assistant", content: "" })]),
      event: (event) => {
        chunk(sse, [choice(deltaOf(event, toolIndex))]);
        if (event.type === "tool_call") toolIndex++;
      },
      end: () => {
        chunk(sse, [choice({}, run.finishReason)]);
        // Usage always, whether or not stream_options.include_usage asked for it.
        chunk(sse, [], { usage: completionsUsage(run.usage, true) });
      },
      fail: (err) => {
        const failure = toApiError(err);
        sse.send({ error: { ...failure.body.error, message: errorMessage(err) } });
      },
    }));
  });
}
