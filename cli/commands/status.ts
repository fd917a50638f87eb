// `cluster status`: nodes, roles, plan and health, read from a node's GET /health (the plan from the
// coordinator's, when the node asked is not the coordinator), with the live picture the dashboard shows (node
// figures, throughput, requests in flight) from the coordinator's GET /dashboard/snapshot.json.
import type { Command } from "commander";
import { type ClusterHealth, isClusterHealth } from "../../cluster/health.js";
import type { ClusterSnapshot } from "../../cluster/snapshot.js";
import { isClusterSnapshot, renderClusterStatus } from "../../cluster/status-text.js";
import { errorMessage } from "../../common/errors.js";

interface StatusOptions {
  api: string;
  apiKey?: string;
  json?: boolean;
}

async function fetchHealth(baseUrl: string, apiKey: string | undefined): Promise<ClusterHealth> {
  const url = `${baseUrl.replace(/\/+$/, "")}/health`;
  let response: Response;
  try {
    response = await fetch(url, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(5000),
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
  if (!isClusterHealth(body))
    throw new Error(`${url} answered ${response.status} but not with cluster health`);
  return body;
}

/** The live snapshot, or undefined (with a note on stderr) when the node serves none: status still prints. */
async function fetchSnapshot(
  baseUrl: string,
  apiKey: string | undefined,
): Promise<ClusterSnapshot | undefined> {
  const url = `${baseUrl.replace(/\/+$/, "")}/dashboard/snapshot.json`;
  try {
    const response = await fetch(url, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(5000),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`answered ${response.status}: ${text.slice(0, 200)}`);
    const body: unknown = JSON.parse(text);
    if (!isClusterSnapshot(body)) throw new Error("answered, but not with a cluster snapshot");
    return body;
  } catch (err) {
    process.stderr.write(`note: no live figures from ${url}: ${errorMessage(err)}\n`);
    return undefined;
  }
}

export async function runStatus(opts: StatusOptions): Promise<string> {
  const health = await fetchHealth(opts.api, opts.apiKey);
  let plan = health.plan;
  const coordinatorUrl = health.coordinator?.apiUrl;
  if (!plan && health.node.role !== "coordinator" && coordinatorUrl) {
    try {
      plan = (await fetchHealth(coordinatorUrl, opts.apiKey)).plan;
    } catch (err) {
      process.stderr.write(`note: the coordinator's plan is unavailable: ${errorMessage(err)}\n`);
    }
  }
  // Requests are counted where they are generated: the coordinator.
  const live = await fetchSnapshot(
    health.node.role === "coordinator" ? opts.api : (coordinatorUrl ?? opts.api),
    opts.apiKey,
  );
  if (opts.json) return `${JSON.stringify({ ...health, plan, live }, null, 2)}\n`;
  return renderClusterStatus(health, { plan, live });
}

export function register(program: Command): void {
  program
    .command("status")
    .description(
      "Show the cluster's members, roles, plan (layer ranges), health and live figures (tokens/s, requests)",
    )
    .option("--api <url>", "HTTP API of any node", "http://127.0.0.1:8080")
    .option("--api-key <key>", "API key, when the node requires one")
    .option("--json", "print the raw JSON")
    .action(async (opts: StatusOptions) => {
      try {
        process.stdout.write(await runStatus(opts));
      } catch (err) {
        process.stderr.write(`cluster status: ${errorMessage(err)}\n`);
        process.exitCode = 1;
      }
    });
}
