// Admission bounded by KV memory: two node-agent processes serve the tiny model, and the scheduler is told each
// stage can hold KV for 70 positions. Requests needing 35 (prompt + maxTokens) run two at a time, one needing
// more than the whole budget runs alone once the others are done (requests keep their arrival order), and every
// request still gets exactly the tokens a single engine gives it.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Scheduler } from "../../coordinator/scheduler.js";
import { referenceRun, startTinyCluster, type TinyCluster } from "../helpers/pipeline-cluster.js";

const budgetTokens = 70;
let cluster: TinyCluster | undefined;

function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

beforeAll(async () => {
  cluster = await startTinyCluster("kv", 2);
});

afterAll(async () => {
  await cluster?.close();
});

describe("admission bounded by KV memory", () => {
  it("runs only as many sequences as the stages' KV holds, in arrival order, each with its solo tokens", async () => {
    if (!cluster) throw new Error("no cluster");
    const { pipeline, reference } = cluster;
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
    if (!cluster) throw new Error("no cluster");
    const scheduler = new Scheduler({ contextWindow: 4096, maxSequences: 3 });
    scheduler.attach(cluster.pipeline);
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
