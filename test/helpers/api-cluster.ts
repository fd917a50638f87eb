// A real cluster for the API tests: node-agent processes (from dist/) serving a generated model, the
// coordinator's Pipeline + Scheduler in this process, and the HTTP API on an ephemeral loopback port.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { type ApiServer, startApiServer } from "../../api/server.js";
import { NodeClient } from "../../common/wire/client.js";
import type { NodeStatus } from "../../common/wire/types.js";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import {
  type AgentProcess,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
  startPipeline,
} from "./pipeline-cluster.js";

export interface ApiCluster {
  modelDir: string;
  modelId: string;
  scheduler: Scheduler;
  pipeline: Pipeline;
  agents: AgentProcess[];
  server: ApiServer;
  /** http://127.0.0.1:PORT/v1 */
  baseUrl: string;
  apiKey: string;
  /** The API's relay secret (for startRelayAgent: a node that is not the coordinator reaches this API so). */
  relayToken: string;
  /** The cluster key the agents were started with (for more agents and pipelines). */
  clusterKey: string;
  /** Each stage's current status (sequences and KV bytes held). */
  stageStatuses(): Promise<NodeStatus[]>;
  stop(): Promise<void>;
}

function statusOnce(address: string, key: string): Promise<NodeStatus> {
  const client = new NodeClient(address, key);
  const call = client.status(1000);
  return new Promise((resolve, reject) => {
    call.once("data", (s: NodeStatus) => {
      call.cancel();
      client.close();
      resolve(s);
    });
    call.once("error", (err) => {
      if ((err as grpc.ServiceError).code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

export async function startApiCluster(opts: {
  preset: "scripted" | "scripted-tool" | "tiny";
  stages: number;
  contextWindow: number;
  apiKey?: string;
  modelId?: string;
  /** The scheduler's prefix cache (KV bytes per node, or tokens of the dearest stage); none when absent. */
  prefixCacheBytesPerNode?: number;
  prefixCacheTokens?: number;
  /** The prefix cache's disk tier: each node's folder is `<cacheRoot>/api-stage-<i>` (the same across restarts). */
  cacheRoot?: string;
  /** Where the scheduler logs what each request took from the cache. */
  log?: (line: string) => void;
  /** Origins the API allows (CORS); none when absent. */
  corsOrigins?: string[];
}): Promise<ApiCluster> {
  const modelDir = await ensureModel(`${opts.preset}-4bit`, opts.preset);
  const key = newClusterKey();
  const agents: AgentProcess[] = [];
  let pipeline: Pipeline | undefined;
  try {
    for (let i = 0; i < opts.stages; i++) {
      const name = `api-stage-${i}`;
      const extraArgs = opts.cacheRoot ? ["--cache-dir", join(opts.cacheRoot, name)] : [];
      agents.push(await spawnAgent({ modelDir, key, name, threads: 1, extraArgs }));
    }
    pipeline = await startPipeline({
      plan: evenPlan("api-plan", agents, numLayersOf(modelDir)),
      clusterKey: key,
    });
    const scheduler = new Scheduler({
      contextWindow: opts.contextWindow,
      prefixCacheBytesPerNode: opts.prefixCacheTokens
        ? opts.prefixCacheTokens * Math.max(...pipeline.kvBytesPerToken)
        : opts.prefixCacheBytesPerNode,
      log: opts.log,
    });
    scheduler.attach(pipeline);
    const modelId = opts.modelId ?? "minimax-test";
    const apiKey = opts.apiKey ?? "test-key";
    const relayToken = randomBytes(32).toString("base64url");
    const server = await startApiServer(
      {
        generator: () => scheduler,
        modelDir,
        modelId,
        health: () => ({ ready: true }),
      },
      { host: "127.0.0.1", port: 0, apiKey, corsOrigins: opts.corsOrigins, relayToken },
    );
    const running = pipeline;
    return {
      modelDir,
      modelId,
      scheduler,
      pipeline: running,
      agents,
      server,
      baseUrl: `${server.url}/v1`,
      apiKey,
      relayToken,
      clusterKey: key,
      stageStatuses: () => Promise.all(agents.map((a) => statusOnce(a.address, key))),
      stop: async () => {
        await server.close();
        // As a coordinator that shuts down: the prefix cache's last stashes reach the nodes first.
        await scheduler.detach("stopping");
        running.close();
        await Promise.all(agents.map((a) => a.stop()));
      },
    };
  } catch (err) {
    pipeline?.close();
    await Promise.all(agents.map((a) => a.stop()));
    throw err;
  }
}

export interface SseEvent {
  event?: string;
  data: string;
}

/** Reads a whole SSE body into its events (event name + raw data line). */
export async function readSse(response: Response): Promise<SseEvent[]> {
  const text = await response.text();
  const events: SseEvent[] = [];
  for (const block of text.split("\n\n")) {
    if (block.trim() === "") continue;
    const event: SseEvent = { data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event.event = line.slice(7);
      else if (line.startsWith("data: ")) event.data += line.slice(6);
    }
    events.push(event);
  }
  return events;
}
