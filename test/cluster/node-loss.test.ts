// A stage process killed (SIGKILL) in the middle of a generation: the caller gets node_lost, naming the node,
// well within 5 s; new requests get cluster_not_ready; after a new plan over the two remaining processes the
// coordinator serves again, still equal to a single engine.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine } from "../../common/engine-api.js";
import { ClusterError } from "../../common/errors.js";
import { NodeClient } from "../../common/wire/client.js";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { Scheduler } from "../../coordinator/scheduler.js";

import {
  type AgentProcess,
  collect,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  openWholeModel,
  referenceRun,
  spawnAgent,
  startPipeline,
} from "../helpers/pipeline-cluster.js";

const key = newClusterKey();
let modelDir = "";
let numLayers = 0;
let agents: AgentProcess[] = [];
const pipelines: Pipeline[] = [];

beforeAll(async () => {
  modelDir = await ensureModel("tiny-4bit", "tiny");
  numLayers = numLayersOf(modelDir);
  agents = await Promise.all(
    [0, 1, 2].map((i) => spawnAgent({ modelDir, key, name: `stage-${i}`, threads: 1 })),
  );
});

afterAll(async () => {
  for (const a of agents) a.child.kill("SIGCONT");
  for (const p of pipelines) p.close();
  await Promise.all(agents.map((a) => a.stop()));
});

describe("losing a stage", () => {
  it("fails the generation in flight within 5 s, then serves again on a new plan", async () => {
    const scheduler = new Scheduler({ contextWindow: 8192 });
    const first = await startPipeline({ plan: evenPlan("before-loss", agents, numLayers), clusterKey: key });
    pipelines.push(first);
    scheduler.attach(first);
    const lostEvents: string[] = [];
    scheduler.on("nodeLost", (lost) => lostEvents.push(lost.name));

    const victim = agents[1];
    let killedAt = 0;
    const prompt = Array.from({ length: 24 }, (_, i) => 10 + i);
    const run = collect(
      scheduler.generate({ prompt, maxTokens: 6000, sampling: {}, stopTokenIds: [] }),
      (n) => {
        if (n === 5) {
          killedAt = performance.now();
          victim.child.kill("SIGKILL");
        }
      },
    );
    const error = await run.then(
      () => undefined,
      (err: unknown) => err,
    );
    const elapsedMs = performance.now() - killedAt;
    expect(killedAt).toBeGreaterThan(0);
    expect(error).toBeInstanceOf(ClusterError);
    expect((error as ClusterError).code).toBe("node_lost");
    expect((error as ClusterError).message).toContain(`stage-1 at ${victim.address} stopped responding`);
    expect(elapsedMs).toBeLessThan(5000);
    console.log(`node loss reached the caller ${elapsedMs.toFixed(0)} ms after SIGKILL`);
    expect(lostEvents).toEqual(["stage-1"]);

    // Until a new pipeline is attached, requests are refused with a reason.
    await expect(
      collect(scheduler.generate({ prompt, maxTokens: 4, sampling: {}, stopTokenIds: [] })),
    ).rejects.toMatchObject({
      code: "cluster_not_ready",
    });

    const survivors = [agents[0], agents[2]];
    const second = await startPipeline({
      plan: evenPlan("after-loss", survivors, numLayers),
      clusterKey: key,
    });
    pipelines.push(second);
    scheduler.attach(second);
    const got = await collect(scheduler.generate({ prompt, maxTokens: 16, sampling: {}, stopTokenIds: [] }));
    let reference: Engine | undefined;
    try {
      reference = await openWholeModel(modelDir);
      expect(got.tokens).toEqual(await referenceRun(reference, 1, prompt, 16, {}));
    } finally {
      await reference?.close();
    }
  });

  it("a stage that freezes (SIGSTOP: connection open, no heartbeat) is declared lost within 5 s", async () => {
    const survivors = [agents[0], agents[2]];
    const scheduler = new Scheduler({ contextWindow: 8192 });
    const pipeline = await startPipeline({
      plan: evenPlan("freeze", survivors, numLayers),
      clusterKey: key,
    });
    pipelines.push(pipeline);
    scheduler.attach(pipeline);
    const frozen = agents[2];
    let frozenAt = 0;
    const prompt = Array.from({ length: 10 }, (_, i) => 40 + i);
    const error = await collect(
      scheduler.generate({ prompt, maxTokens: 6000, sampling: {}, stopTokenIds: [] }),
      (n) => {
        if (n === 5) {
          frozenAt = performance.now();
          frozen.child.kill("SIGSTOP");
        }
      },
    ).then(
      () => undefined,
      (err: unknown) => err,
    );
    const elapsedMs = performance.now() - frozenAt;
    frozen.child.kill("SIGCONT");
    expect(error).toBeInstanceOf(ClusterError);
    expect((error as ClusterError).code).toBe("node_lost");
    expect((error as ClusterError).message, (error as Error).message).toMatch(
      /stage-2 at .* stopped responding \(stage 1: no heartbeat for \d+ ms\)/,
    );
    expect(elapsedMs).toBeLessThan(5000);
    console.log(`frozen stage declared lost ${elapsedMs.toFixed(0)} ms after SIGSTOP`);
  });

  it("a stage whose shard another coordinator replaced is declared lost from its heartbeat", async () => {
    const pipeline = await startPipeline({
      plan: evenPlan("shard-kept", [agents[0], agents[2]], numLayers),
      clusterKey: key,
    });
    pipelines.push(pipeline);
    const lost = new Promise<{ reason: string; at: number }>((resolve) =>
      pipeline.once("nodeLost", (node) => resolve({ reason: node.reason, at: performance.now() })),
    );
    // Another coordinator (emulated: the same LoadShard call) loads its own plan on stage 0's node. (On the last
    // stage the Results stream would end and tell; stage 0's Data stream stays open to a node without the shard.)
    const intruder = new NodeClient(agents[0].address, key);
    const loadedAt = performance.now();
    await intruder.loadShard({
      plan_id: "intruder",
      layer_start: 0,
      layer_end: numLayers,
      embed: true,
      head: true,
      downstream: "",
      stage_index: 0,
      stage_count: 1,
      // A newer term from another coordinator: the bare agent (no membership view) accepts it.
      coordinator_term: 2,
      coordinator_id: "intruder",
    });
    intruder.close();
    const { reason, at } = await lost;
    expect(reason).toMatch(/no longer holds this plan's shard \(it holds plan intruder/);
    // Two heartbeats (one a second) and a check.
    expect(at - loadedAt).toBeLessThan(4000);
    pipeline.close();
  });
});
