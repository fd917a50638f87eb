// A stage process killed (SIGKILL) in the middle of a generation: the caller gets node_lost, naming the node,
// well within 5 s; new requests get cluster_not_ready; after a new plan over the two remaining processes the
// coordinator serves again, still equal to a single engine.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine } from "../../common/engine-api.js";
import { ClusterError } from "../../common/errors.js";
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
    expect((error as ClusterError).message).toMatch(
      /stage-2 at .* stopped responding \(stage 1: no heartbeat for \d+ ms\)/,
    );
    expect(elapsedMs).toBeLessThan(5000);
    console.log(`frozen stage declared lost ${elapsedMs.toFixed(0)} ms after SIGSTOP`);
  });
});
