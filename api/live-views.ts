// The cluster's live figures beside the API: the dashboard (GET /, its data and WebSocket) and GET /metrics,
// both under the API key when one is set. The cluster's snapshot gets this API's request figures merged in. On a
// node that is not the coordinator the dashboard shows the coordinator's snapshot, read over the gRPC plane
// (coordinator-snapshot.ts); /metrics stays this node's own (requests count where they are generated, so
// scraping every node counts each request once).
import type { IncomingMessage } from "node:http";
import type { FastifyInstance } from "fastify";
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { ClusterError } from "../common/errors.js";
import type { CoordinatorRelay } from "../common/wire/http-relay.js";
import { registerDashboard } from "../dashboard/plugin.js";
import { checkBearer, isRelayed } from "./auth.js";
import { CoordinatorSnapshots } from "./coordinator-snapshot.js";
import { type ApiError, apiError, sendApiError } from "./errors.js";
import { registerMetrics } from "./metrics.js";
import type { RequestLog } from "./request-log.js";

export interface LiveViewsOptions {
  snapshot(): ClusterSnapshot;
  /** Set while another node coordinates: how this node reaches it (api/forward.ts). */
  relay(): CoordinatorRelay | undefined;
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
  const coordinator = new CoordinatorSnapshots(() => options.relay());
  registerDashboard(app, {
    snapshot: (request) => {
      if (request && isRelayed(request)) {
        // A follower asked the coordinator; were this node to ask another in turn, two nodes that each take the
        // other for coordinator would pass the request back and forth.
        if (options.relay())
          throw new ClusterError("cluster_not_ready", "this node no longer coordinates; ask again");
        return snapshot();
      }
      return coordinator.read() ?? snapshot();
    },
    authorize: (request) => {
      // A follower's read of the snapshot, relayed by this process's own node agent (api/auth.ts checkRelay).
      if (isRelayed(request)) return undefined;
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
