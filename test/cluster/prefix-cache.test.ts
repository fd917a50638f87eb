// Prefix KV reuse. The index alone (longest match, redundant entries, LRU eviction under the budget, pins), then
// a two-stage cluster of node-agent processes on the tiny model: a prompt that shares a finished sequence's
// prefix forks it on every stage and prefills only the rest, and its tokens equal an uncached single-engine run;
// a tiny budget evicts and stays correct; 16 concurrent streams forking one entry each get what they get alone.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine } from "../../common/engine-api.js";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { PrefixCache } from "../../coordinator/prefix-cache.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import type { GenerationEvent } from "../../coordinator/token-generator.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { referenceRun, startTinyCluster, type TinyCluster } from "../helpers/pipeline-cluster.js";

describe("PrefixCache index", () => {
  it("finds the longest shared prefix, never the prompt's last token", () => {
    const cache = new PrefixCache(1000);
    expect(cache.add(1, [1, 2, 3, 4, 5])).toEqual([]);
    expect(cache.add(2, [1, 2, 9, 9])).toEqual([]);
    expect(cache.match([1, 2, 3, 4, 7])).toMatchObject({ entry: { seq: 1 }, length: 4 });
    expect(cache.match([1, 2, 9, 9, 9])).toMatchObject({ entry: { seq: 2 }, length: 4 });
    // The whole entry matches, but the last prompt token must run to give the first output token.
    expect(cache.match([1, 2, 3])).toMatchObject({ length: 2 });
    expect(cache.match([7, 1, 2])).toBeUndefined();
  });

  it("drops entries the new one extends, and the new one when an entry already covers it", () => {
    const cache = new PrefixCache(1000);
    cache.add(1, [1, 2, 3]);
    expect(cache.add(2, [1, 2, 3, 4, 5])).toEqual([1]);
    expect(cache.add(3, [1, 2, 3, 4])).toEqual([3]);
    expect(cache.size).toBe(1);
    expect(cache.heldTokens).toBe(5);
  });

  it("evicts least recently used entries past the budget, never pinned ones", () => {
    const cache = new PrefixCache(10);
    cache.add(1, [1, 1, 1, 1]);
    cache.add(2, [2, 2, 2, 2]);
    const hit = cache.match([1, 1, 1, 1, 5]);
    if (!hit) throw new Error("expected a hit on entry 1");
    cache.pin(hit.entry);
    // Entry 2 is the least recently used unpinned one.
    expect(cache.add(3, [3, 3, 3, 3])).toEqual([2]);
    // Pinned entry 1 is the oldest, so entry 3 goes, then entry 4.
    expect(cache.add(4, [4, 4, 4, 4])).toEqual([3]);
    expect(cache.add(5, [5, 5, 5])).toEqual([4]);
    expect(cache.heldTokens).toBe(7);
    expect(cache.unpin(hit.entry)).toEqual([]);
    // Now unpinned and the least recently used: it goes first.
    expect(cache.add(7, [7, 7, 7, 7])).toEqual([1]);
    // Larger than the whole budget: released at once.
    expect(cache.add(6, new Array(11).fill(6))).toEqual([6]);
  });

  it("derives the token budget from the dearest node's KV bytes per token", () => {
    expect(PrefixCache.tokenBudgetFor(1000, [10, 20])).toBe(50);
    expect(PrefixCache.tokenBudgetFor(0, [10])).toBe(0);
    expect(PrefixCache.tokenBudgetFor(1000, [0, 0])).toBe(0);
    expect(() => new PrefixCache(0)).toThrow(/token budget/);
  });
});

let cluster: TinyCluster | undefined;
let pipeline: Pipeline | undefined;
let reference: Engine;
let refSeq = 1;

function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

interface Outcome {
  tokens: number[];
  cachedTokens: number;
}

async function run(scheduler: Scheduler, prompt: number[], maxTokens: number): Promise<Outcome> {
  const out: Outcome = { tokens: [], cachedTokens: -1 };
  const events: AsyncIterable<GenerationEvent> = scheduler.generate({
    prompt,
    maxTokens,
    sampling: {},
    stopTokenIds: [],
  });
  for await (const e of events) {
    if (e.type === "admitted") out.cachedTokens = e.cachedTokens;
    if (e.type === "token") out.tokens.push(e.token);
  }
  return out;
}

function cachedScheduler(tokenBudget: number): Scheduler {
  const perToken = Math.max(...(pipeline?.kvBytesPerToken ?? [0]));
  const scheduler = new Scheduler({ contextWindow: 4096, prefixCacheBytesPerNode: tokenBudget * perToken });
  scheduler.attach(pipeline!);
  return scheduler;
}

beforeAll(async () => {
  cluster = await startTinyCluster("prefix", 2);
  ({ pipeline, reference } = cluster);
});

afterAll(async () => {
  await cluster?.close();
});

describe("prefix reuse on a two-stage cluster", () => {
  it("every stage reports its KV bytes per token at load", () => {
    expect(pipeline?.kvBytesPerToken.every((b) => b > 0)).toBe(true);
  });

  it("a prompt extending a finished conversation reuses it and equals the uncached run", async () => {
    const scheduler = cachedScheduler(100_000);
    const first = promptOf(300, 1);
    const one = await run(scheduler, first, 6);
    expect(one.cachedTokens).toBe(0);
    expect(one.tokens).toEqual(await referenceRun(reference, refSeq++, first, 6, {}));
    // The next turn: the whole previous exchange plus new tokens. Only the last output token is not cached.
    const second = [...first, ...one.tokens, ...promptOf(40, 2)];
    const two = await run(scheduler, second, 6);
    expect(two.cachedTokens).toBe(first.length + one.tokens.length - 1);
    expect(two.tokens).toEqual(await referenceRun(reference, refSeq++, second, 6, {}));
    // The same prompt again: all but its last token come from the cache.
    const again = await run(scheduler, second, 6);
    expect(again.cachedTokens).toBe(second.length - 1);
    expect(again.tokens).toEqual(two.tokens);
    // A prompt sharing only part of the first one forks that part.
    const branch = [...first.slice(0, 200), ...promptOf(30, 3)];
    const three = await run(scheduler, branch, 6);
    expect(three.cachedTokens).toBe(200);
    expect(three.tokens).toEqual(await referenceRun(reference, refSeq++, branch, 6, {}));
    // The plain scheduler (no cache) gives the same tokens from scratch.
    const plain = new Scheduler({ contextWindow: 4096 });
    plain.attach(pipeline!);
    const uncached = await run(plain, second, 6);
    expect(uncached.cachedTokens).toBe(0);
    expect(uncached.tokens).toEqual(two.tokens);
  });

  it("eviction under a tiny budget keeps every result correct", async () => {
    const budget = 400;
    const scheduler = cachedScheduler(budget);
    const prompts = [1, 2, 3].map((salt) => promptOf(150, 10 + salt));
    const expected = await Promise.all(prompts.map((p) => referenceRun(reference, refSeq++, p, 5, {})));
    // Each entry holds 154 tokens (prompt + 4 outputs): two fit in the budget, a third evicts the least
    // recently used one. This order hits on its 3rd, 5th and 8th request and evicts on the 4th, 6th and 7th.
    const order = [0, 1, 0, 2, 0, 1, 2, 1];
    const hits: number[] = [];
    for (const [n, i] of order.entries()) {
      const got = await run(scheduler, prompts[i], 5);
      expect(got.tokens).toEqual(expected[i]);
      if (got.cachedTokens > 0) hits.push(n);
      expect(scheduler.cachedPrefixTokens).toBeLessThanOrEqual(budget);
    }
    expect(hits).toEqual([2, 4, 7]);
  });

  it("16 concurrent streams forking one cached prefix each get exactly what they get alone", async () => {
    const scheduler = cachedScheduler(100_000);
    const shared = promptOf(200, 20);
    await run(scheduler, shared, 2);
    const prompts = Array.from({ length: 16 }, (_, i) => [...shared, ...promptOf(5 + i, 30 + i)]);
    const outcomes = await Promise.all(prompts.map((p) => run(scheduler, p, 8)));
    for (let i = 0; i < prompts.length; i++) {
      expect(outcomes[i].cachedTokens).toBeGreaterThanOrEqual(shared.length);
      expect(outcomes[i].tokens).toEqual(await referenceRun(reference, refSeq++, prompts[i], 8, {}));
    }
  });
});

describe("usage through the HTTP API", () => {
  let api: ApiCluster | undefined;
  beforeAll(async () => {
    api = await startApiCluster({
      preset: "scripted",
      stages: 2,
      contextWindow: 8192,
      prefixCacheBytesPerNode: 64 * 1024 * 1024,
    });
  });
  afterAll(async () => {
    await api?.stop();
  });

  async function usageOf(messages: Array<{ role: string; content: string }>) {
    const response = await fetch(`${api!.baseUrl}/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${api!.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: api!.modelId, messages, max_tokens: 8 }),
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as {
      usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    };
    return body.usage;
  }

  it("reports the prompt tokens a second turn took from the cache", async () => {
    const system = { role: "system", content: "You are a careful assistant. ".repeat(40) };
    const first = await usageOf([system, { role: "user", content: "What is a pipeline?" }]);
    expect(first.prompt_tokens_details.cached_tokens).toBe(0);
    const second = await usageOf([system, { role: "user", content: "And what is a stage?" }]);
    // At least the long system prompt came from the first request's KV; never the whole prompt.
    expect(second.prompt_tokens_details.cached_tokens).toBeGreaterThan(100);
    expect(second.prompt_tokens_details.cached_tokens).toBeLessThan(second.prompt_tokens);
  });
});
