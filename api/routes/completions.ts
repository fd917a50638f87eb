// POST /v1/completions: plain text completion of a prompt, no chat template and no reply parsing.
import type { FastifyInstance } from "fastify";
import { stopStrings } from "../../chat/stop-strings.js";
import { errorMessage } from "../../common/errors.js";
import { toApiError } from "../errors.js";
import { cancelOnDisconnect, completionsUsage, newId, usagePlaceholder } from "../generation-run.js";
import { type ApiDeps, checkModel, samplingOf, startRun } from "../request-context.js";
import { CompletionsBody, validator } from "../request-schemas.js";
import { streamRun } from "../sse.js";
import { refuseUnsupportedCompletions } from "../unsupported.js";

const validate = validator(CompletionsBody, "POST /v1/completions");

export function registerCompletions(app: FastifyInstance, deps: ApiDeps): void {
  app.post("/completions", async (request, reply) => {
    const body = validate(request.body);
    refuseUnsupportedCompletions(body);
    checkModel(deps, body.model);
    const prompt = Array.isArray(body.prompt) ? body.prompt[0] : body.prompt;
    const run = await startRun(
      deps,
      { text: prompt },
      {
        maxTokens: body.max_tokens,
        sampling: samplingOf(body),
        stopStrings: stopStrings(body.stop),
      },
    );
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
    const noUsage = usagePlaceholder(body);
    await streamRun(reply, run, (sse) => ({
      doneMarker: true,
      event: (event) => {
        if (event.type === "text")
          sse.send({
            ...base,
            choices: [{ index: 0, text: event.delta, logprobs: null, finish_reason: null }],
            ...noUsage,
          });
      },
      end: () => {
        sse.send({
          ...base,
          choices: [{ index: 0, text: "", logprobs: null, finish_reason: run.finishReason }],
          ...noUsage,
        });
        sse.send({ ...base, choices: [], usage: completionsUsage(run.usage, false) });
      },
      fail: (err) => {
        const failure = toApiError(err);
        sse.send({ error: { ...failure.body.error, message: errorMessage(err) } });
      },
    }));
  });
}
