// `cluster status`: nodes, roles, plan and health, read from a node's GET /health, with the live picture the
// dashboard shows (node figures, the plan, throughput, requests in flight) from that node's GET
// /dashboard/snapshot.json, which a node that is not the coordinator answers with the coordinator's, read over
// the cluster's gRPC plane (cli/cluster-http.ts). Only the node asked need be reachable.
import type { Command } from "commander";
import type { ClusterSnapshot } from "../../cluster/snapshot.js";
import { renderClusterStatus } from "../../cluster/status-text.js";
import { errorMessage } from "../../common/errors.js";
import { fetchHealth, fetchSnapshot } from "../cluster-http.js";

interface StatusOptions {
  api: string;
  apiKey?: string;
  json?: boolean;
}

export async function runStatus(opts: StatusOptions): Promise<string> {
  const health = await fetchHealth(opts.api, opts.apiKey);
  // The plan and the requests are the coordinator's: a node that follows answers with the coordinator's
  // snapshot, or says why it cannot (status then prints what this node knows, and that reason).
  let live: ClusterSnapshot | undefined;
  let liveError: string | undefined;
  try {
    live = await fetchSnapshot(opts.api, opts.apiKey);
  } catch (err) {
    liveError = errorMessage(err);
    process.stderr.write(`note: no live figures from ${opts.api}: ${liveError}\n`);
  }
  const plan = health.plan ?? live?.plan;
  if (opts.json) return `${JSON.stringify({ ...health, plan, live, liveError }, null, 2)}\n`;
  return renderClusterStatus(health, { plan, live, liveError });
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
