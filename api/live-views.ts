// The cluster's live figures beside the API: the dashboard (GET /, its data and WebSocket) and GET /metrics,
// both under the API key when one is set. The cluster's snapshot gets this API's request figures merged in.
import type { IncomingMessage } from "node:http";
import type { FastifyInstance } from "fastify";
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { registerDashboard } from "../dashboard/plugin.js";
import { checkBearer } from "./auth.js";
import { type ApiError, apiError, sendApiError } from "./errors.js";
import { registerMetrics } from "./metrics.js";
import type { RequestLog } from "./request-log.js";

export interface LiveViewsOptions {
  snapshot(): ClusterSnapshot;
  coordinatorUrl(): string | undefined;
  apiKey?: string;
  requests: RequestLog;
}

/**
 * The key check for the dashboard and /metrics: a Bearer header as for /v1, or `?key=` (a browser cannot put a
 * header on a page it opens or on a WebSocket).
 */
export function checkDashboardKey(
  request: IncomingMessage,
  apiKey: string | undefined,
): ApiError | undefined {
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

export async function registerLiveViews(app: FastifyInstance, options: LiveViewsOptions): Promise<void> {
  const snapshot = (): ClusterSnapshot => ({ ...options.snapshot(), ...options.requests.figures() });
  registerDashboard(app, {
    snapshot,
    coordinatorUrl: () => options.coordinatorUrl(),
    authorize: (request) => {
      const denied = checkDashboardKey(request, options.apiKey);
      return denied && { status: denied.status, body: denied.body };
    },
  });
  await app.register(async (metrics) => {
    metrics.addHook("onRequest", async (request, reply) => {
      const denied = checkDashboardKey(request.raw, options.apiKey);
      if (denied) return sendApiError(reply, denied);
    });
    registerMetrics(metrics, { snapshot, finished: (listener) => options.requests.onFinished(listener) });
  });
}
