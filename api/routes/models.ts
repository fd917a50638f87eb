// GET /v1/models (discovery and health check for OpenClaw) and GET /health (cluster readiness).
import type { FastifyInstance } from "fastify";
import type { ApiDeps } from "../request-context.js";

export function registerModels(app: FastifyInstance, deps: ApiDeps & { health(): unknown }): void {
  const model = () => ({ id: deps.modelId, object: "model", created: 0, owned_by: "studio-cluster" });
  app.get("/v1/models", async () => ({ object: "list", data: [model()] }));
  app.get<{ Params: { id: string } }>("/v1/models/:id", async (request, reply) => {
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
  // The membership's health JSON as it is (`cluster status` reads it); 503 while the node cannot serve. Its
  // own "ok" decides when it has one (a node that forwards to the coordinator serves without a generator).
  app.get("/health", async (_request, reply) => {
    const health = deps.health() as { ok?: unknown } | undefined;
    const ready = typeof health?.ok === "boolean" ? health.ok : deps.generator() !== undefined;
    return reply.code(ready ? 200 : 503).send(health ?? { ready });
  });
}
