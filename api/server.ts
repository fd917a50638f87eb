// The HTTP side of a node: the OpenAI-compatible /v1 plugin (Responses, Chat Completions, Completions, models),
// GET /health, and with a snapshot provider the dashboard and GET /metrics (live-views.ts). `cluster up` starts
// it with an ApiContext that follows the cluster: which generator serves, or which node coordinates when this
// one does not.
import { createServer } from "node:http";
import { isIP } from "node:net";
import cors from "@fastify/cors";
import Fastify, { type FastifyError, type FastifyInstance } from "fastify";
import { ChatFormatter } from "../chat/chat-formatter.js";
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { ClusterError } from "../common/errors.js";
import type { CoordinatorRelay } from "../common/wire/http-relay.js";
import type { TokenGenerator } from "../coordinator/token-generator.js";
import { checkApiKey, checkRelay } from "./auth.js";
import { Drain } from "./drain.js";
import { apiError, sendApiError, toApiError } from "./errors.js";
import { useStrictJsonBodies } from "./json-body.js";
import { checkDashboardKey, registerLiveViews } from "./live-views.js";
import { RequestLog } from "./request-log.js";
import { v1Plugin } from "./v1-plugin.js";

export interface ApiContext {
  /** undefined = cluster not ready → 503. */
  generator(): TokenGenerator | undefined;
  modelDir: string;
  modelId: string;
  /** JSON for GET /health, from membership. */
  health(): unknown;
  /**
   * Set when THIS node is not the coordinator: every /v1 request is relayed there over the gRPC plane
   * (api/forward.ts). Absent: this node never relays.
   */
  relay?(): CoordinatorRelay | undefined;
  /**
   * The cluster picture (nodes, plan, health) for the dashboard and /metrics; without it neither is served.
   * Its request lists and series are replaced by this API's own request log.
   */
  snapshot?(): ClusterSnapshot;
}

export interface ApiServerOptions {
  host: string;
  port: number;
  apiKey?: string;
  /** Largest request body in bytes (default 64 MiB: long agent conversations are big). */
  bodyLimit?: number;
  /** Longest one generation may run end to end; it then ends with a "timeout" error event. Default: none. */
  requestTimeoutMs?: number;
  /**
   * Browser origins allowed to call the API (CORS), e.g. "http://localhost:3000"; "*" allows any. None (the
   * default): no CORS headers, so a web page cannot read the API's answers.
   */
  corsOrigins?: string[];
  /**
   * Longest a client may take to send a whole request, headers and body (default 30 s); a slower one gets 408
   * and its connection is closed. Responses (streams) are not bounded by it.
   */
  bodyTimeoutMs?: number;
  /**
   * The secret this process's node agent puts on the requests it relays for followers (RelayHttp): such a
   * request needs no API key (the follower checked its client's, and the call proved the cluster key). Absent:
   * the relay header is refused.
   */
  relayToken?: string;
}

export const DEFAULT_BODY_TIMEOUT_MS = 30_000;

/**
 * The HTTP server with its receive timeouts: without them a client sending one byte a second holds a socket
 * (and its buffered body) forever, and a few hundred such clients exhaust the node. Node checks these timeouts
 * only every connectionsCheckingInterval (30 s by default), so that is tightened to match.
 */
function httpServerFactory(bodyTimeoutMs: number) {
  return (handler: Parameters<typeof createServer>[1]) =>
    createServer(
      {
        requestTimeout: bodyTimeoutMs,
        headersTimeout: Math.min(10_000, bodyTimeoutMs),
        connectionsCheckingInterval: Math.max(100, Math.min(1000, bodyTimeoutMs / 4)),
        keepAliveTimeout: 72_000,
      },
      handler,
    );
}

export interface ApiServer {
  url: string;
  /** The requests this API generated (in flight, recent, throughput and TTFT series). */
  requests: RequestLog;
  /**
   * Drains, then closes: new requests get 503, generations in flight may finish for `graceMs` (default 0),
   * then the rest are failed with a terminal event ("this node is shutting down") before connections close.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1" || host === "[::1]";
}

/**
 * Opt-in CORS. Its hook is global and runs before the /v1 plugin's, so a preflight (OPTIONS, which a browser
 * sends without the Authorization header) is answered before the API key is checked, and the answers to real
 * requests, 401s included, carry the headers a page needs to read them.
 */
async function allowCors(app: FastifyInstance, origins: string[]): Promise<void> {
  if (origins.length === 0) return;
  await app.register(cors, {
    origin: origins.includes("*") ? "*" : origins,
    methods: ["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
    exposedHeaders: ["retry-after"],
    maxAge: 600,
  });
}

/** Route config that exempts a route from the API key (only /health and the dashboard's static assets). */
export interface OpenRouteConfig {
  open?: boolean;
}

/**
 * With an API key, every request needs it unless the route it matched says `config: { open: true }`, or it is
 * a follower's request relayed by this process's node agent (checkRelay: /v1 routes only). The hook is the
 * root's onRequest, which runs after the router matched (and percent-decoded) the path, for every route of
 * every plugin and for the not-found handler: a route added later, or any spelling of a URL, is under the key
 * by default. Plugins keep their own checks (/v1 takes Bearer or x-api-key; the dashboard Bearer or ?key=).
 */
function denyByDefault(
  app: FastifyInstance,
  apiKey: string | undefined,
  relayToken: string | undefined,
): void {
  app.addHook("onRequest", async (request, reply) => {
    const relay = checkRelay(request, relayToken);
    if (relay === "trusted") return;
    if (relay !== "none") return sendApiError(reply, relay);
    if (!apiKey) return;
    if ((request.routeOptions.config as OpenRouteConfig | undefined)?.open === true) return;
    // x-api-key is how Anthropic's clients send the key (/v1 takes it; the dashboard's own check does not).
    const denied = request.headers["x-api-key"]
      ? checkApiKey(request.headers, apiKey)
      : checkDashboardKey(request.raw, apiKey);
    if (denied) return sendApiError(reply, denied);
  });
}

async function buildApp(
  ctx: ApiContext,
  options: ApiServerOptions,
  requests: RequestLog,
  drain: Drain,
): Promise<FastifyInstance> {
  // forceCloseConnections: close() must not wait for streams still generating; their cancel frees the KV.
  const app = Fastify({
    bodyLimit: options.bodyLimit ?? 64 * 1024 * 1024,
    logger: false,
    forceCloseConnections: true,
    serverFactory: httpServerFactory(options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS),
  });
  useStrictJsonBodies(app);
  await allowCors(app, options.corsOrigins ?? []);
  denyByDefault(app, options.apiKey, options.relayToken);
  app.setErrorHandler((err: FastifyError, _request, reply) => {
    // Fastify's own rejections (bad JSON, body too large) carry a 4xx statusCode; ours are ClusterErrors.
    if (!(err instanceof ClusterError) && err.statusCode && err.statusCode < 500)
      return sendApiError(
        reply,
        apiError(err.statusCode, `invalid request: ${err.message}`, "invalid_request"),
      );
    return sendApiError(reply, toApiError(err));
  });
  app.setNotFoundHandler((request, reply) =>
    sendApiError(
      reply,
      apiError(404, `no route ${request.method} ${request.url.split("?")[0]}`, "not_found"),
    ),
  );
  // Open to health checks; 503 while the node cannot serve. The health JSON's own "ok" decides when it has one
  // (a node that forwards to the coordinator serves without a generator).
  app.get("/health", { config: { open: true } }, async (_request, reply) => {
    const health = ctx.health() as { ok?: unknown } | undefined;
    const ready = typeof health?.ok === "boolean" ? health.ok : ctx.generator() !== undefined;
    return reply.code(ready ? 200 : 503).send(health ?? { ready });
  });
  const v1Options = {
    generator: () => ctx.generator(),
    relay: () => ctx.relay?.(),
    modelDir: ctx.modelDir,
    modelId: ctx.modelId,
    apiKey: options.apiKey,
    requests,
    requestTimeoutMs: options.requestTimeoutMs,
    drain,
  };
  await app.register(v1Plugin, { prefix: "/v1", ...v1Options });
  // GET /props at the root too: llama.cpp clients ask it beside the /v1 base URL.
  await app.register(v1Plugin, { ...v1Options, propsOnly: true });
  const snapshot = ctx.snapshot?.bind(ctx);
  if (snapshot)
    await registerLiveViews(app, {
      snapshot,
      relay: () => ctx.relay?.(),
      apiKey: options.apiKey,
      requests,
    });
  return app;
}

export async function startApiServer(ctx: ApiContext, options: ApiServerOptions): Promise<ApiServer> {
  if (!isLoopback(options.host) && !options.apiKey)
    throw new Error(
      `refusing to listen on ${options.host} without an API key: anyone on the network could use the model. ` +
        "Set an API key, or listen on 127.0.0.1.",
    );
  // Load tokenizer and template now: a broken model directory fails at start, not on the first request.
  ChatFormatter.forModelDir(ctx.modelDir);
  const requests = new RequestLog();
  if (options.bodyTimeoutMs !== undefined && !(options.bodyTimeoutMs > 0))
    throw new Error(`bodyTimeoutMs must be a positive number of milliseconds (got ${options.bodyTimeoutMs})`);
  if (options.requestTimeoutMs !== undefined && !(options.requestTimeoutMs > 0))
    throw new Error(
      `requestTimeoutMs must be a positive number of milliseconds (got ${options.requestTimeoutMs})`,
    );
  const drain = new Drain();
  const app = await buildApp(ctx, options, requests, drain);
  await app.listen({ host: options.host, port: options.port });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const host =
    options.host.includes(":") && !options.host.startsWith("[") ? `[${options.host}]` : options.host;
  // Once: `cluster up` drains on SIGTERM, then its cleanups close everything again.
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    requests,
    close: (closeOptions) => {
      closing ??= drain.run(closeOptions?.graceMs ?? 0).then(() => app.close());
      return closing;
    },
  };
}
