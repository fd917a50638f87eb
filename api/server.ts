// The OpenAI-compatible HTTP endpoint (Responses, Chat Completions, Completions, models, health).
// H3b's `cluster up` starts it with an ApiContext that follows membership: which generator serves, or which
// node is the coordinator when this one is not. With a snapshot provider it also serves the dashboard (GET /,
// /dashboard/*) and GET /metrics, with the request figures this API records (request-log.ts) merged in.
import type { IncomingMessage, ServerResponse } from "node:http";
import { isIP } from "node:net";
import Fastify, { type FastifyError, type FastifyInstance } from "fastify";
import { ChatFormatter } from "../chat/chat-formatter.js";
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { ClusterError } from "../common/errors.js";
import type { TokenGenerator } from "../coordinator/token-generator.js";
import { DASHBOARD_LIVE_PATH, registerDashboard } from "../dashboard/plugin.js";
import { checkBearer } from "./auth.js";
import { type ApiError, apiError, toApiError } from "./errors.js";
import { FORWARDED_HEADER, forwardRequest } from "./forward.js";
import type { GenerationRun } from "./generation-run.js";
import { registerMetrics } from "./metrics.js";
import { RequestLog } from "./request-log.js";
import { registerChatCompletions } from "./routes/chat-completions.js";
import { registerCompletions } from "./routes/completions.js";
import { registerModels } from "./routes/models.js";
import { registerResponses } from "./routes/responses.js";

export interface ApiContext {
  /** undefined = cluster not ready → 503. */
  generator(): TokenGenerator | undefined;
  modelDir: string;
  modelId: string;
  /** JSON for GET /health, from membership. */
  health(): unknown;
  /** Set when THIS node is not the coordinator: every /v1 request is forwarded there. */
  coordinatorUrl(): string | undefined;
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

function send(reply: import("fastify").FastifyReply, error: ApiError) {
  if (error.retryAfter !== undefined) reply.header("retry-after", String(error.retryAfter));
  return reply.code(error.status).send(error.body);
}

/** Paths outside /v1 that show the cluster's figures: under the API key too when one is set. */
const DASHBOARD_DATA_PATHS = new Set(["/", "/metrics", "/dashboard/snapshot.json", DASHBOARD_LIVE_PATH]);

/**
 * The key check for the dashboard and /metrics: a Bearer header as for /v1, or `?key=` (a browser cannot put a
 * header on a page it opens or on a WebSocket).
 */
function checkDashboardKey(request: IncomingMessage, apiKey: string | undefined): ApiError | undefined {
  if (!apiKey || request.headers.authorization) return checkBearer(request.headers.authorization, apiKey);
  const key = new URL(request.url ?? "/", "http://localhost").searchParams.get("key");
  if (key === null)
    return apiError(
      401,
      "Missing API key: send 'Authorization: Bearer <key>', or open the dashboard as /?key=<key>.",
      "invalid_api_key",
    );
  return checkBearer(`Bearer ${key}`, apiKey);
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A request body → its JSON value; a 400 (statusCode on the error) when it is not UTF-8 or not JSON. */
function parseJsonBody(body: Buffer): unknown {
  const refuse = (message: string) => Object.assign(new Error(message), { statusCode: 400 });
  let text: string;
  try {
    text = strictUtf8.decode(body);
  } catch {
    throw refuse("the request body is not valid UTF-8");
  }
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text);
  } catch (err) {
    throw refuse(`the request body is not valid JSON (${(err as Error).message})`);
  }
}

/** What a shutdown waits on: the generations in flight and the /v1 responses still being written. */
class Drain {
  readonly live = new Set<GenerationRun>();
  private readonly open = new Set<ServerResponse>();
  closing = false;

  track(response: ServerResponse): void {
    this.open.add(response);
    response.once("close", () => this.open.delete(response));
  }

  async run(graceMs: number): Promise<void> {
    this.closing = true;
    await this.until(() => this.live.size === 0, graceMs);
    const error = new ClusterError("cluster_not_ready", "this node is shutting down; retry on another node");
    for (const run of [...this.live]) run.fail(error);
    // The routes now write each failed run's terminal event; give them a moment to reach the client.
    await this.until(() => this.open.size === 0, 2000);
  }

  private async until(done: () => boolean, ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }
}

function buildApp(
  ctx: ApiContext,
  options: ApiServerOptions,
  requests: RequestLog,
  drain: Drain,
): FastifyInstance {
  // forceCloseConnections: close() must not wait for streams still generating; their cancel frees the KV.
  const app = Fastify({
    bodyLimit: options.bodyLimit ?? 64 * 1024 * 1024,
    logger: false,
    forceCloseConnections: true,
  });
  // Bodies are JSON whatever the content type says (some clients send text/plain), and must be valid UTF-8:
  // a lenient decode would turn broken bytes into U+FFFD and feed the model text the client never sent.
  app.removeContentTypeParser(["application/json", "text/plain"]);
  app.addContentTypeParser(
    ["application/json", "text/plain", "application/octet-stream"],
    { parseAs: "buffer" },
    (_req, body, done) => {
      try {
        done(null, parseJsonBody(body as Buffer));
      } catch (err) {
        done(err as Error, undefined);
      }
    },
  );
  app.addHook("onRequest", async (request, reply) => {
    if (request.url.startsWith("/v1/")) {
      if (drain.closing)
        return send(
          reply,
          apiError(503, "this node is shutting down; retry on another node", "cluster_not_ready"),
        );
      drain.track(reply.raw);
    }
    if (DASHBOARD_DATA_PATHS.has(request.url.split("?")[0])) {
      const denied = checkDashboardKey(request.raw, options.apiKey);
      if (denied) return send(reply, denied);
    }
    if (!request.url.startsWith("/v1/")) return;
    const denied = checkBearer(request.headers.authorization, options.apiKey);
    if (denied) return send(reply, denied);
  });
  app.addHook("preHandler", async (request, reply) => {
    if (!request.url.startsWith("/v1/")) return;
    const coordinator = ctx.coordinatorUrl();
    if (!coordinator) return;
    // Two nodes that each take the other for the coordinator (during an election) must not bounce a request.
    if (request.headers[FORWARDED_HEADER])
      return send(
        reply,
        apiError(503, "the cluster is electing its coordinator; retry shortly", "cluster_not_ready"),
      );
    return forwardRequest(request, reply, coordinator);
  });
  app.setErrorHandler((err: FastifyError, _request, reply) => {
    // Fastify's own rejections (bad JSON, body too large) carry a 4xx statusCode; ours are ClusterErrors.
    if (!(err instanceof ClusterError) && err.statusCode && err.statusCode < 500)
      return send(reply, apiError(err.statusCode, `invalid request: ${err.message}`, "invalid_request"));
    return send(reply, toApiError(err));
  });
  app.setNotFoundHandler((request, reply) =>
    send(reply, apiError(404, `no route ${request.method} ${request.url.split("?")[0]}`, "not_found")),
  );
  const deps = {
    generator: () => ctx.generator(),
    modelDir: ctx.modelDir,
    modelId: ctx.modelId,
    health: () => ctx.health(),
    requests,
    requestTimeoutMs: options.requestTimeoutMs,
    live: drain.live,
  };
  registerModels(app, deps);
  registerResponses(app, { ...deps, api: "responses" });
  registerChatCompletions(app, { ...deps, api: "chat.completions" });
  registerCompletions(app, { ...deps, api: "completions" });
  registerLiveViews(app, ctx, options, requests);
  return app;
}

/** The dashboard (which redirects to the coordinator's on other nodes) and /metrics, when there is a snapshot. */
function registerLiveViews(
  app: FastifyInstance,
  ctx: ApiContext,
  options: ApiServerOptions,
  requests: RequestLog,
): void {
  const clusterSnapshot = ctx.snapshot?.bind(ctx);
  if (!clusterSnapshot) return;
  const snapshot = (): ClusterSnapshot => ({ ...clusterSnapshot(), ...requests.figures() });
  registerDashboard(app, {
    snapshot,
    coordinatorUrl: () => ctx.coordinatorUrl(),
    // The WebSocket upgrade bypasses the onRequest hook: the same key rule is applied here.
    authorize: (request) => checkDashboardKey(request, options.apiKey) === undefined,
  });
  registerMetrics(app, { snapshot });
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
  if (options.requestTimeoutMs !== undefined && !(options.requestTimeoutMs > 0))
    throw new Error(
      `requestTimeoutMs must be a positive number of milliseconds (got ${options.requestTimeoutMs})`,
    );
  const drain = new Drain();
  const app = buildApp(ctx, options, requests, drain);
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
