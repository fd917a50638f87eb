// The scheduler with no process started: a two-stage pipeline in this process (test/helpers/local-pipeline.ts:
// the node agent's Stage objects around real engines of the tiny model, frames through the wire's serializer).
// Outputs equal one whole-model engine; admission keeps arrival order within the KV budget and refuses beyond
// the queue; a cancel frees the sequence on every stage; a lost node fails every sequence in flight at once.
import { totalmem } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine } from "../../common/engine-api.js";
import { ClusterError } from "../../common/errors.js";
import type { PipelinePlan } from "../../coordinator/pipeline.js";
import { PREFILL_CHUNK_TOKENS, Scheduler } from "../../coordinator/scheduler.js";
import type { GenerationRequest } from "../../coordinator/token-generator.js";
import { availableBackends, openEngine } from "../../native/index.js";
import { LocalPipeline } from "../helpers/local-pipeline.js";
import {
  collect,
  ensureModel,
  numLayersOf,
  openWholeModel,
  referenceRun,
} from "../helpers/pipeline-cluster.js";

let modelDir = "";
let reference: Engine | undefined;
const pipelines: LocalPipeline[] = [];

function twoStages(planId: string): PipelinePlan {
  const layers = numLayersOf(modelDir);
  const half = Math.floor(layers / 2);
  const stage = (i: number, start: number, end: number) => ({
    nodeId: `node-${i}`,
    name: `stage-${i}`,
    address: `127.0.0.1:${7100 + i}`,
    layerStart: start,
    layerEnd: end,
    embed: start === 0,
    head: end === layers,
  });
  return { planId, stages: [stage(0, 0, half), stage(1, half, layers)] };
}

async function pipeline(planId: string, backend?: string): Promise<LocalPipeline> {
  const p = await LocalPipeline.start(modelDir, { ...twoStages(planId), backend });
  pipelines.push(p);
  return p;
}

function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

function request(prompt: number[], maxTokens: number, extra: Partial<GenerationRequest> = {}) {
  return { prompt, maxTokens, sampling: {}, stopTokenIds: [], ...extra };
}

async function until(what: string, done: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function failureOf(run: Promise<unknown>): Promise<ClusterError> {
  try {
    await run;
  } catch (err) {
    if (err instanceof ClusterError) return err;
    throw err;
  }
  throw new Error("the run did not fail");
}

beforeAll(async () => {
  modelDir = await ensureModel("tiny-4bit", "tiny");
  reference = await openWholeModel(modelDir);
});

afterAll(async () => {
  for (const p of pipelines) p.close();
  await reference?.close();
});

describe("scheduler over an in-process pipeline", () => {
  it("gives every concurrent request the single engine's tokens, greedy and sampled, up to a stop token", async () => {
    const scheduler = new Scheduler({ contextWindow: 4096, prefillChunkTokens: 16 });
    scheduler.attach(await pipeline("p-equal"));
    const sampled = { temperature: 0.8, topP: 0.9, seed: 7 };
    const runs = [
      request(promptOf(40, 1), 12),
      request(promptOf(9, 2), 12, { sampling: sampled }),
      request(promptOf(23, 3), 12),
    ];
    const expected = await Promise.all(
      runs.map((r, i) => referenceRun(reference!, 900 + i, r.prompt, r.maxTokens, r.sampling, 16)),
    );
    const got = await Promise.all(runs.map((r) => collect(scheduler.generate(r))));
    got.forEach((g, i) => {
      expect(g.tokens).toEqual(expected[i]);
      expect(g.end).toBe("length");
    });
    // A stop id ends the reply at its first occurrence, reported as "stop".
    const stopAt = expected[0][3];
    const stopped = await collect(scheduler.generate({ ...runs[0], stopTokenIds: [stopAt] }));
    expect(stopped.end).toBe("stop");
    expect(stopped.tokens).toEqual(expected[0].slice(0, expected[0].indexOf(stopAt) + 1));
    expect(scheduler.inFlight).toBe(0);
  });

  it("a one-stage mlx pipeline sampling on the device, decode steps built ahead, gives the host sampler's tokens", async () => {
    if (!availableBackends().includes("mlx")) {
      console.log("scheduler.test: skipping the mlx decode-ahead check: the addon was built without MLX");
      return;
    }
    const layers = numLayersOf(modelDir);
    const whole = { ...twoStages("p-mlx-ahead").stages[0], layerEnd: layers, head: true };
    // Device sampling is the default only on a GPU: asked for here, as a Mac runs it.
    process.env.STUDIO_MLX_SAMPLING = "device";
    let device: LocalPipeline;
    try {
      device = await LocalPipeline.start(modelDir, {
        planId: "p-mlx-ahead",
        stages: [whole],
        backend: "mlx",
      });
    } finally {
      delete process.env.STUDIO_MLX_SAMPLING;
    }
    pipelines.push(device);
    process.env.STUDIO_MLX_SAMPLING = "host";
    let host: Engine;
    try {
      host = await openEngine({
        modelDir,
        layerStart: 0,
        layerEnd: layers,
        embed: true,
        head: true,
        backend: "mlx",
      });
    } finally {
      delete process.env.STUDIO_MLX_SAMPLING;
    }
    try {
      const scheduler = new Scheduler({ contextWindow: 4096, prefillChunkTokens: 16 });
      scheduler.attach(device);
      const sampled = { temperature: 0.8, topP: 0.9, seed: 7 };
      // Alone: every decode step after the first is the one built ahead.
      const alone = request(promptOf(30, 4), 10, { sampling: sampled });
      const aloneGot = await collect(scheduler.generate(alone));
      expect(aloneGot.tokens).toEqual(await referenceRun(host, 950, alone.prompt, 10, sampled, 16));
      expect(device.stepsAhead()[0].used).toBeGreaterThanOrEqual(8);
      // At once: batched steps build nothing ahead; lone ones do, and are dropped when a batch comes instead.
      const runs = [
        request(promptOf(40, 1), 12),
        request(promptOf(9, 2), 12, { sampling: sampled }),
        request(promptOf(23, 3), 12, { sampling: { temperature: 1.1, topK: 20, seed: 3 } }),
      ];
      const got = await Promise.all(runs.map((r) => collect(scheduler.generate(r))));
      for (let i = 0; i < runs.length; i++)
        expect(got[i].tokens).toEqual(
          await referenceRun(host, 960 + i, runs[i].prompt, runs[i].maxTokens, runs[i].sampling, 16),
        );
    } finally {
      await host.close();
    }
  });

  it("chunks prompts by the pipeline's backend (cpu 256, mlx 2048) unless told a size", async () => {
    const cpu = await pipeline("p-chunk-cpu", "cpu");
    const byBackend = new Scheduler({ contextWindow: 4096 });
    byBackend.attach(cpu);
    expect(byBackend.prefillChunkTokens).toBe(256);
    const told = new Scheduler({ contextWindow: 4096, prefillChunkTokens: 64 });
    told.attach(cpu);
    expect(told.prefillChunkTokens).toBe(64);
    if (!availableBackends().includes("mlx")) {
      console.log("scheduler.test: skipping the mlx chunk check: the addon was built without MLX");
      return;
    }
    const mlx = await pipeline("p-chunk-mlx", "mlx");
    byBackend.attach(mlx);
    expect(byBackend.prefillChunkTokens).toBe(PREFILL_CHUNK_TOKENS.mlx);
    expect(PREFILL_CHUNK_TOKENS.mlx).toBe(2048);
    // A prompt longer than one chunk still runs through: two prefill items, then decode.
    const got = await collect(byBackend.generate(request(promptOf(2100, 5), 2)));
    expect(got.tokens).toHaveLength(2);
    expect(got.end).toBe("length");
  });

  it("admits in arrival order within the KV budget, and answers overloaded beyond the queue", async () => {
    const local = await pipeline("p-admit");
    const scheduler = new Scheduler({ contextWindow: 4096, maxQueue: 2 });
    scheduler.attach(
      local,
      local.kvBytesPerToken.map((b) => b * 70),
    );
    const admitted: string[] = [];
    const run = (name: string, maxTokens: number) =>
      (async () => {
        for await (const e of scheduler.generate(request(promptOf(10, name.length), maxTokens)))
          if (e.type === "admitted") admitted.push(name);
      })();
    // 35 positions each: two fit the 70-position budget; "c" and "d" wait; "e" finds the queue full.
    const running = [run("a", 25), run("bb", 25), run("ccc", 25), run("dddd", 25)];
    const refused = await failureOf(run("eeeee", 25));
    expect(refused.code).toBe("overloaded");
    await Promise.all(running);
    expect(admitted).toEqual(["a", "bb", "ccc", "dddd"]);
    expect(scheduler.kvTokens.held).toBe(0);
  });

  it("a cancelled request frees its sequence on every stage; one cancelled while waiting never starts", async () => {
    const local = await pipeline("p-cancel");
    const scheduler = new Scheduler({ contextWindow: 4096, maxSequences: 1 });
    scheduler.attach(local);
    const first = new AbortController();
    const waiting = new AbortController();
    let tokens = 0;
    const running = failureOf(
      (async () => {
        for await (const e of scheduler.generate(request(promptOf(12, 1), 500, { signal: first.signal })))
          if (e.type === "token" && ++tokens === 3) first.abort();
      })(),
    );
    const queued = failureOf(
      collect(scheduler.generate(request(promptOf(12, 2), 5, { signal: waiting.signal }))),
    );
    waiting.abort();
    expect((await queued).code).toBe("cancelled");
    expect((await running).code).toBe("cancelled");
    expect(tokens).toBe(3);
    await until("every stage to free the sequence", () => local.held().every((h) => h.sequences === 0));
    expect(local.held().map((h) => h.kvBytes)).toEqual([0, 0]);
    expect(scheduler.inFlight).toBe(0);
  });

  it("a lost node fails every sequence in flight with node_lost, refuses new ones until a new pipeline", async () => {
    const local = await pipeline("p-lost");
    const scheduler = new Scheduler({ contextWindow: 4096 });
    scheduler.attach(local);
    let started = 0;
    const runs = [1, 2, 3].map((salt) =>
      failureOf(
        (async () => {
          for await (const e of scheduler.generate(request(promptOf(10, salt), 1000)))
            if (e.type === "token" && e.token >= 0) started++;
        })(),
      ),
    );
    await until("all three to generate", () => started >= 3);
    const lostAt = performance.now();
    local.lose(1);
    const failures = await Promise.all(runs);
    expect(performance.now() - lostAt).toBeLessThan(1000);
    for (const f of failures) {
      expect(f.code).toBe("node_lost");
      expect(f.message).toContain("stage-1 at 127.0.0.1:7101 stopped responding");
    }
    const refused = await failureOf(collect(scheduler.generate(request(promptOf(5, 9), 3))));
    expect(refused.code).toBe("cluster_not_ready");
    expect(refused.message).toContain("stage-1 at 127.0.0.1:7101 was lost");

    scheduler.attach(await pipeline("p-after"));
    const again = await collect(scheduler.generate(request(promptOf(10, 4), 6)));
    expect(again.tokens).toEqual(await referenceRun(reference!, 950, promptOf(10, 4), 6, {}));
  });

  it("reuses a finished sequence's KV for a prompt that extends it, with the same tokens", async () => {
    const local = await pipeline("p-prefix");
    const scheduler = new Scheduler({ contextWindow: 4096, prefixCacheBytesPerNode: 64 * 1024 ** 2 });
    scheduler.attach(local);
    const base = promptOf(40, 5);
    await collect(scheduler.generate(request(base, 4)));
    const longer = [...base, ...promptOf(8, 6)];
    let cached = -1;
    const tokens: number[] = [];
    for await (const e of scheduler.generate(request(longer, 6))) {
      if (e.type === "admitted") cached = e.cachedTokens;
      if (e.type === "token") tokens.push(e.token);
    }
    expect(local.assemblies).toBe(1);
    expect(cached).toBeGreaterThanOrEqual(base.length);
    expect(tokens).toEqual(await referenceRun(reference!, 960, longer, 6, {}));
  });

  it("the prefix cache's RAM tier takes what sequences leave, and gives it back first under memory pressure", async () => {
    const local = await pipeline("p-pressure");
    const perToken = Math.max(...local.kvBytesPerToken);
    // KV room for 400 positions on each stage: a 300-position request leaves the cache 100 while it runs.
    const kvBytes = local.kvBytesPerToken.map((b) => 400 * b);
    const auto = new Scheduler({
      contextWindow: 4096,
      prefixCacheBytesPerNode: "auto",
      prefixBlockTokens: 16,
    });
    auto.attach(local, kvBytes, [0, 0]);
    await collect(auto.generate(request(promptOf(200, 8), 4)));
    // The finished sequence's blocks are stashed behind the request.
    await until("the first request's blocks in RAM", () => auto.cachedPrefixTokens === 203);
    // The next request reserves 290 + 10 positions: the cache keeps at most the 100 left, before it starts.
    let during = -1;
    for await (const e of auto.generate(request(promptOf(290, 9), 10)))
      if (e.type === "admitted") during = auto.cachedPrefixTokens;
    expect(during).toBeLessThanOrEqual(100);
    expect(auto.cachedPrefixTokens).toBeLessThanOrEqual(400);
    await auto.detach("next");
    const fresh = await pipeline("p-squeezed");
    // A stage whose free memory is below its headroom (here: all of this machine's memory) sheds the cache.
    const squeezed = new Scheduler({
      contextWindow: 4096,
      prefixCacheBytesPerNode: 400 * perToken,
      prefixBlockTokens: 16,
    });
    squeezed.attach(fresh, kvBytes, [totalmem(), totalmem()]);
    const out = await collect(squeezed.generate(request(promptOf(50, 10), 4)));
    expect(out.tokens).toEqual(await referenceRun(reference!, 970, promptOf(50, 10), 4, {}));
    await until("the cache to give its RAM back", () => squeezed.cachedPrefixTokens === 0);
    await until("the stages to free the blocks", () => fresh.held().every((h) => h.blockBytes === 0));
  });
});
