// Admission bounded by KV memory: two node-agent processes serve the tiny model, and the scheduler is told each
// stage can hold KV for 70 positions. Requests needing 35 (prompt + maxTokens) run two at a time, one needing
// more than the whole budget runs alone once the others are done (requests keep their arrival order), and every
// request still gets exactly the tokens a single engine gives it.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Pipeline } from "../coordinator/pipeline.js";
import { Scheduler } from "../coordinator/scheduler.js";
import type { Engine } from "../native/engine-api.js";
import { openEngine } from "../native/index.js";
import {
  type AgentProcess,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  referenceRun,
  spawnAgent,
} from "./pipeline-cluster.js";

const key = newClusterKey();
const budgetTokens = 70;
let agents: AgentProcess[] = [];
let pipeline: Pipeline | undefined;
let reference: Engine;

function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

beforeAll(async () => {
  const modelDir = await ensureModel("tiny-4bit", "tiny");
  agents = await Promise.all([0, 1].map((i) => spawnAgent({ modelDir, key, name: `kv-${i}`, threads: 1 })));
  const numLayers = numLayersOf(modelDir);
  pipeline = await Pipeline.start({ plan: evenPlan("kv-plan", agents, numLayers), clusterKey: key });
  reference = await openEngine({
    modelDir,
    layerStart: 0,
    layerEnd: numLayers,
    embed: true,
    head: true,
    threads: 1,
  });
});

afterAll(async () => {
  pipeline?.close();
  await reference?.close();
  await Promise.all(agents.map((a) => a.stop()));
});

describe("admission bounded by KV memory", () => {
  it("runs only as many sequences as the stages' KV holds, in arrival order, each with its solo tokens", async () => {
    if (!pipeline) throw new Error("no pipeline");
    const scheduler = new Scheduler({ contextWindow: 4096 });
    const perToken = pipeline.kvBytesPerToken;
    expect(perToken.every((b) => b > 0)).toBe(true);
    scheduler.attach(
      pipeline,
      perToken.map((b) => b * budgetTokens),
    );
    expect(scheduler.kvTokens).toEqual({ held: 0, budget: budgetTokens });
    const requests = [
      { name: "a", prompt: promptOf(10, 1), maxTokens: 25 },
      { name: "b", prompt: promptOf(10, 2), maxTokens: 25 },
      { name: "big", prompt: promptOf(10, 3), maxTokens: 100 },
      { name: "c", prompt: promptOf(10, 4), maxTokens: 25 },
    ];
    const admitted: string[] = [];
    let mostInFlight = 0;
    let mostHeld = 0;
    const inFlightDuringBig: number[] = [];
    const results = await Promise.all(
      requests.map(async ({ name, prompt, maxTokens }) => {
        const tokens: number[] = [];
        for await (const e of scheduler.generate({ prompt, maxTokens, sampling: {}, stopTokenIds: [] })) {
          if (e.type === "admitted") admitted.push(name);
          if (e.type !== "token") continue;
          tokens.push(e.token);
          mostInFlight = Math.max(mostInFlight, scheduler.inFlight);
          // The lone oversized request is admitted because nothing else runs; it may exceed the budget alone.
          if (name === "big") inFlightDuringBig.push(scheduler.inFlight);
          else mostHeld = Math.max(mostHeld, scheduler.kvTokens.held);
        }
        return tokens;
      }),
    );
    expect(admitted).toEqual(["a", "b", "big", "c"]);
    expect(mostInFlight).toBe(2);
    expect(mostHeld).toBeLessThanOrEqual(budgetTokens);
    expect(new Set(inFlightDuringBig)).toEqual(new Set([1]));
    for (let i = 0; i < requests.length; i++) {
      const { prompt, maxTokens } = requests[i];
      expect(results[i]).toEqual(await referenceRun(reference, 100 + i, prompt, maxTokens, {}));
    }
    expect(scheduler.kvTokens.held).toBe(0);
    expect(scheduler.inFlight).toBe(0);
  });

  it("without a KV bound every request is admitted up to maxSequences", async () => {
    if (!pipeline) throw new Error("no pipeline");
    const scheduler = new Scheduler({ contextWindow: 4096, maxSequences: 3 });
    scheduler.attach(pipeline);
    expect(scheduler.kvTokens.budget).toBe(Number.POSITIVE_INFINITY);
    let mostInFlight = 0;
    await Promise.all(
      [1, 2, 3].map(async (salt) => {
        for await (const e of scheduler.generate({
          prompt: promptOf(10, salt),
          maxTokens: 200,
          sampling: {},
          stopTokenIds: [],
        }))
          if (e.type === "token") mostInFlight = Math.max(mostInFlight, scheduler.inFlight);
      }),
    );
    expect(mostInFlight).toBe(3);
    expect(scheduler.kvTokens.held).toBe(0);
  });
});
