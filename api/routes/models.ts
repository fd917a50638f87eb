// GET /v1/models: discovery and health check for OpenClaw, with the window and the output limit that clients
// which discover self-hosted models read (context_length / context_window / max_model_len; without them
// OpenClaw falls back to 128,000). GET /props gives the window as llama.cpp's n_ctx.
import type { FastifyInstance } from "fastify";
import { readModelConfig, replyTokenLimit } from "../../common/model-config.js";
import type { ApiDeps } from "../request-context.js";

/** The window the cluster serves (the scheduler's, which --context may shrink), else the model's maximum. */
function servedWindow(deps: ApiDeps): number {
  return deps.generator()?.contextWindow ?? readModelConfig(deps.modelDir).maxPositionEmbeddings;
}

function modelEntry(deps: ApiDeps): Record<string, unknown> {
  const window = servedWindow(deps);
  const output = replyTokenLimit(window);
  return {
    id: deps.modelId,
    object: "model",
    created: 0,
    owned_by: "studio-cluster",
    context_length: window,
    context_window: window,
    max_model_len: window,
    max_output_tokens: output,
    max_completion_tokens: output,
  };
}

export function registerModels(app: FastifyInstance, deps: ApiDeps): void {
  app.get("/models", async () => ({ object: "list", data: [modelEntry(deps)] }));
  app.get<{ Params: { id: string } }>("/models/:id", async (request, reply) => {
    if (request.params.id.toLowerCase() !== deps.modelId.toLowerCase())
      return reply.code(404).send({
        error: {
          message: `The model '${request.params.id}' does not exist`,
          type: "invalid_request_error",
          code: "model_not_found",
          param: "model",
        },
      });
    return modelEntry(deps);
  });
  registerProps(app, deps);
}

/** llama.cpp's GET /props, the part clients read: the window as n_ctx (top level and per slot). */
export function registerProps(app: FastifyInstance, deps: ApiDeps): void {
  app.get("/props", async () => {
    const window = servedWindow(deps);
    return {
      model_alias: deps.modelId,
      n_ctx: window,
      default_generation_settings: { n_ctx: window, n_predict: replyTokenLimit(window) },
    };
  });
}
