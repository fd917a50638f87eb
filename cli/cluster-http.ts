// What `cluster status` and `cluster bench` read from a node's HTTP API: its GET /health (the node's own view)
// and its GET /dashboard/snapshot.json (the cluster's live picture with the plan; a node that is not the
// coordinator answers with the coordinator's, read over the cluster's gRPC plane, so the coordinator's API may
// listen on its own loopback: docs/architecture.md "Relayed requests").
import { type ClusterHealth, isClusterHealth } from "../cluster/health.js";
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { isClusterSnapshot } from "../cluster/status-text.js";
import { errorMessage } from "../common/errors.js";

const TIMEOUT_MS = 10_000;

/** The body of GET `path` as JSON; throws a one-line reason (unreachable, not JSON, the API's error message). */
async function getJson(baseUrl: string, path: string, apiKey: string | undefined): Promise<unknown> {
  const url = `${baseUrl.replace(/\/+$/, "")}${path}`;
  let response: Response;
  try {
    response = await fetch(url, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
  } catch (err) {
    throw new Error(`cannot reach ${url}: ${errorMessage((err as { cause?: unknown }).cause ?? err)}`);
  }
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(
      `${url} answered ${response.status} with something that is not JSON: ${text.slice(0, 200)}`,
    );
  }
  // /health answers 503 with its picture while the node cannot serve: the picture is what is asked for.
  const apiError = (body as { error?: { message?: unknown } } | null)?.error;
  if (!response.ok && typeof apiError?.message === "string")
    throw new Error(`${url} answered ${response.status}: ${apiError.message}`);
  return body;
}

export async function fetchHealth(baseUrl: string, apiKey: string | undefined): Promise<ClusterHealth> {
  const body = await getJson(baseUrl, "/health", apiKey);
  if (!isClusterHealth(body)) throw new Error(`${baseUrl}/health did not answer with cluster health`);
  return body;
}

/** The cluster's live snapshot as this node serves it (the coordinator's, from a follower). */
export async function fetchSnapshot(baseUrl: string, apiKey: string | undefined): Promise<ClusterSnapshot> {
  const body = await getJson(baseUrl, "/dashboard/snapshot.json", apiKey);
  if (!isClusterSnapshot(body))
    throw new Error(`${baseUrl}/dashboard/snapshot.json did not answer with a cluster snapshot`);
  return body;
}
