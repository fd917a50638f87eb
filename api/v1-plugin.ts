// Everything under /v1, as one encapsulated fastify plugin: its hooks (drain, API key, forwarding to the
// coordinator) run for the routes it registered and for its own not-found handler, after the router matched
// (and decoded) the path, so no spelling of a URL reaches a /v1 route around them.
import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import type { CoordinatorRelay } from "../common/wire/http-relay.js";
import type { TokenGenerator } from "../coordinator/token-generator.js";
import { checkApiKey, isRelayed } from "./auth.js";
import type { Drain } from "./drain.js";
import { apiError, sendApiError } from "./errors.js";
import { FORWARDED_HEADER, forwardRequest } from "./forward.js";
import type { ApiDeps } from "./request-context.js";
import type { RequestLog } from "./request-log.js";
import { registerChatCompletions } from "./routes/chat-completions.js";
import { registerCompletions } from "./routes/completions.js";
import { messagesPlugin } from "./routes/messages.js";
import { registerModels, registerProps } from "./routes/models.js";
import { registerResponses } from "./routes/responses.js";

export interface V1Options {
  /** undefined = cluster not ready → 503. */
  generator(): TokenGenerator | undefined;
  /** Set when this node is not the coordinator: every /v1 request is relayed there (api/forward.ts). */
  relay(): CoordinatorRelay | undefined;
  modelDir: string;
  modelId: string;
  apiKey?: string;
  requests: RequestLog;
  requestTimeoutMs?: number;
  drain: Drain;
  /**
   * Register only GET /props, with the same hooks: the plugin is registered a second time at the root for
   * clients that ask llama.cpp's /props beside, not under, the /v1 base URL.
   */
  propsOnly?: boolean;
}

export const v1Plugin: FastifyPluginAsync<V1Options> = async (app: FastifyInstance, options) => {
  const { drain } = options;
  app.addHook("onRequest", async (request, reply) => {
    if (drain.closing)
      return sendApiError(
        reply,
        apiError(503, "this node is shutting down; retry on another node", "cluster_not_ready"),
      );
    drain.track(reply.raw);
    // A relay from this process's node agent carries no key: the follower checked its client's (auth.ts).
    if (isRelayed(request)) return;
    const denied = checkApiKey(request.headers, options.apiKey);
    if (denied) return sendApiError(reply, denied);
  });
  app.addHook("preHandler", async (request, reply) => {
    const coordinator = options.relay();
    if (!coordinator) return;
    // Two nodes that each take the other for the coordinator (during an election) must not bounce a request.
    if (request.headers[FORWARDED_HEADER])
      return sendApiError(
        reply,
        apiError(503, "the cluster is electing its coordinator; retry shortly", "cluster_not_ready"),
      );
    return forwardRequest(request, reply, coordinator, () => options.relay()?.key === coordinator.key);
  });
  const deps: ApiDeps = {
    generator: () => options.generator(),
    modelDir: options.modelDir,
    modelId: options.modelId,
    requests: options.requests,
    requestTimeoutMs: options.requestTimeoutMs,
    live: drain.live,
  };
  if (options.propsOnly) return registerProps(app, deps);
  app.setNotFoundHandler((request, reply) =>
    sendApiError(
      reply,
      apiError(404, `no route ${request.method} ${request.url.split("?")[0]}`, "not_found"),
    ),
  );
  registerModels(app, deps);
  registerResponses(app, { ...deps, api: "responses" });
  registerChatCompletions(app, { ...deps, api: "chat.completions" });
  registerCompletions(app, { ...deps, api: "completions" });
  // Its own encapsulated context: Anthropic-shaped errors for its routes only, under the hooks above.
  await app.register(messagesPlugin, { ...deps, api: "messages", prefix: "/messages" });
};
