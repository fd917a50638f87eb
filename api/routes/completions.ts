// POST /v1/completions: plain text completion of a prompt, no chat template and no reply parsing.
import type { FastifyInstance } from "fastify";
import { stopStrings } from "../../chat/stop-strings.js";
import { errorMessage } from "../../common/errors.js";
import { toApiError } from "../errors.js";
import { cancelOnDisconnect, completionsUsage, newId } from "../generation-run.js";
import { type ApiDeps, checkModel, samplingOf, startTextRun } from "../request-context.js";
import { CompletionsBody, validator } from "../request-schemas.js";
import { SseStream } from "../sse.js";

const validate = validator(CompletionsBody, "POST /v1/completions");

export function registerCompletions(app: FastifyInstance, deps: ApiDeps): void {
  app.post("/v1/completions", async (request, reply) => {
    const body = validate(request.body);
    checkModel(deps, body.model);
    const prompt = Array.isArray(body.prompt) ? body.prompt[0] : body.prompt;
    const run = await startTextRun(deps, prompt, {
      maxTokens: body.max_tokens,
      sampling: samplingOf(body),
      stopStrings: stopStrings(body.stop),
    });
    const id = newId("cmpl");
    const created = Math.floor(Date.now() / 1000);
    const model = body.model ?? deps.modelId;
    const base = { id, object: "text_completion", created, model };
    if (!body.stream) {
      cancelOnDisconnect(reply.raw, run);
      let text = "";
      for await (const event of run.events()) if (event.type === "text") text += event.delta;
      return reply.send({
        ...base,
        choices: [{ index: 0, text, logprobs: null, finish_reason: run.finishReason }],
        usage: completionsUsage(run.usage, false),
      });
    }
    const sse = new SseStream(reply, () => run.cancel());
    try {
      for await (const event of run.events()) {
        if (sse.closed) break;
        if (event.type === "text")
          sse.send({
            ...base,
            choices: [{ index: 0, text: event.delta, logprobs: null, finish_reason: null }],
          });
      }
      sse.send({
        ...base,
        choices: [{ index: 0, text: "", logprobs: null, finish_reason: run.finishReason }],
      });
      sse.send({ ...base, choices: [], usage: completionsUsage(run.usage, false) });
    } catch (err) {
      const failure = toApiError(err);
      sse.send({ error: { ...failure.body.error, message: errorMessage(err) } });
    } finally {
      run.cancel();
      sse.sendDone();
      sse.end();
    }
  });
}
