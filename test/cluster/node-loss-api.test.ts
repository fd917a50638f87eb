// Kill -9 a stage mid-stream, ten times in a row, through the HTTP API: every stream in flight ends with a
// terminal node_lost event within 5 s, requests during the re-plan get 503 with retry-after, a plan over the
// survivors serves the next request, and the killed node, restarted, is taken back into the following plan.
// The coordinator (this process: scheduler + API) keeps running throughout.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";
import {
  type AgentProcess,
  evenPlan,
  numLayersOf,
  spawnAgent,
  startPipeline,
} from "../helpers/pipeline-cluster.js";
import { Rng } from "../helpers/seeded-rng.js";

const ROUNDS = 10;
let cluster: ApiCluster;
const extraPipelines: Pipeline[] = [];

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 3, contextWindow: 8192 });
});
afterAll(async () => {
  for (const p of extraPipelines) p.close();
  await cluster?.stop();
});

function post(path: string, body: unknown): Promise<Response> {
  return fetch(`${cluster.baseUrl}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${cluster.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

/** A long stream, read in the background; `opened` resolves once a few events arrived. */
function longStream(path: string) {
  const body =
    path === "/responses"
      ? { input: "tell me a very long story", max_output_tokens: 4000, stream: true }
      : {
          messages: [{ role: "user", content: "tell me a very long story" }],
          max_tokens: 4000,
          stream: true,
        };
  let markOpen: () => void = () => {};
  const opened = new Promise<void>((resolve) => {
    markOpen = resolve;
  });
  const done = (async () => {
    const response = await post(path, body);
    if (response.status !== 200) throw new Error(`${path}: ${response.status} ${await response.text()}`);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    for (let c = await reader.read(); !c.done; c = await reader.read()) {
      text += decoder.decode(c.value, { stream: true });
      if ((text.match(/\n\n/g) ?? []).length >= 4) markOpen();
    }
    markOpen();
    return { events: await readSse(new Response(text)), endedAt: performance.now() };
  })();
  return { path, opened, done };
}

/** The terminal failure code of a finished stream (Responses: response.failed; chat: error chunk + [DONE]). */
function failureCode(path: string, events: Array<{ event?: string; data: string }>): string | undefined {
  const last = events[events.length - 1];
  if (path === "/responses")
    return last?.event === "response.failed" ? JSON.parse(last.data).response.error.code : undefined;
  if (last?.data !== "[DONE]") return undefined;
  return (JSON.parse(events[events.length - 2].data) as { error?: { code: string } }).error?.code;
}

describe("a stage killed mid-stream, ten times in a row", () => {
  it("fails every stream in flight within 5 s, answers 503 while re-planning, then serves again", async () => {
    const numLayers = numLayersOf(cluster.modelDir);
    const rng = new Rng(0x4b11_0008);
    let members = [...cluster.agents];
    const worst: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // Three streams in flight, across both chat APIs.
      const streams = ["/responses", "/chat/completions", "/responses"].map(longStream);
      await Promise.all(streams.map((s) => s.opened));
      const victim = rng.pick(members);
      const killedAt = performance.now();
      victim.child.kill("SIGKILL");
      const ends = await Promise.all(streams.map((s) => s.done));
      const lateMs = Math.max(...ends.map((e) => e.endedAt - killedAt));
      worst.push(lateMs);
      for (const [i, end] of ends.entries())
        expect(failureCode(streams[i].path, end.events), `round ${round} ${streams[i].path}`).toBe(
          "node_lost",
        );
      expect(lateMs, `round ${round}: terminal events ${lateMs.toFixed(0)} ms after the kill`).toBeLessThan(
        5000,
      );

      // Re-planning: refused with a reason and a retry-after, never a hang or a crash.
      const refused = await post("/chat/completions", {
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 2,
      });
      expect(refused.status).toBe(503);
      expect(refused.headers.get("retry-after")).toBeTruthy();
      expect(((await refused.json()) as { error: { message: string } }).error.message).toContain(victim.name);

      // A plan over the survivors serves.
      members = members.filter((m) => m !== victim);
      await replan(`round-${round}-survivors`, members, numLayers);
      await expectServes(`round ${round} after the re-plan`);

      // The node comes back (a new process, same name) and is taken into the next plan.
      const back = await spawnAgent({
        modelDir: cluster.modelDir,
        key: clusterKey(),
        name: victim.name,
        threads: 1,
      });
      cluster.agents.push(back);
      members = [...members, back];
      await replan(`round-${round}-readmitted`, members, numLayers);
      await expectServes(`round ${round} after re-admission`);
    }
    expect(cluster.scheduler.inFlight).toBe(0);
    console.log(
      `kill -9 x${ROUNDS}: terminal events ${worst.map((ms) => ms.toFixed(0)).join(", ")} ms after the kill (max ${Math.max(...worst).toFixed(0)})`,
    );
  }, 240_000);
});

function clusterKey(): string {
  return cluster.clusterKey;
}

async function replan(planId: string, members: AgentProcess[], numLayers: number): Promise<void> {
  const pipeline = await startPipeline({
    plan: evenPlan(planId, members, numLayers),
    clusterKey: clusterKey(),
  });
  extraPipelines.push(pipeline);
  cluster.scheduler.attach(pipeline);
}

async function expectServes(what: string): Promise<void> {
  const response = await post("/chat/completions", {
    messages: [{ role: "user", content: "hello again" }],
    max_tokens: 4,
  });
  expect(response.status, `${what}: ${await response.clone().text()}`).toBe(200);
  const body = (await response.json()) as { usage: { completion_tokens: number } };
  expect(body.usage.completion_tokens).toBe(4);
}
