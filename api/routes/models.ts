// GET /v1/models: discovery and health check for OpenClaw.
import type { FastifyInstance } from "fastify";
import type { ApiDeps } from "../request-context.js";

export function registerModels(app: FastifyInstance, deps: ApiDeps): void {
  const model = () => ({ id: deps.modelId, object: "model", created: 0, owned_by: "studio-cluster" });
  app.get("/models", async () => ({ object: "list", data: [model()] }));
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
    return model();
  });
}
