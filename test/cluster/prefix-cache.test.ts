// Prefix KV reuse on clusters of node-agent processes (the index alone: test/unit/prefix-index.test.ts, the disk
// store alone: test/unit/block-store.test.ts). A prompt that shares a finished sequence's prefix assembles its
// blocks on every stage and prefills only the rest, and its tokens equal an uncached single-engine run; a tiny
// budget evicts and stays correct; 16 concurrent streams sharing one prefix each get what they get alone. With the
// disk tier: a full cluster restart restores from disk, token for token; a damaged block is ignored and recomputed;
// a re-plan invalidates only the layers that moved; two interleaved sessions sharing a prompt stay warm.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine } from "../../common/engine-api.js";
import { blockChain } from "../../coordinator/block-chain.js";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import type { GenerationEvent } from "../../coordinator/token-generator.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { CacheCluster } from "../helpers/cache-cluster.js";
import {
  openWholeModel,
  referenceRun,
  startTinyCluster,
  type TinyCluster,
} from "../helpers/pipeline-cluster.js";

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

describe("the disk tier across restarts and re-plans", () => {
  let disk: CacheCluster | undefined;
  let whole: Engine | undefined;
  let root = "";
  const first = promptOf(300, 41);
  let turn2: number[] = [];
  let turn2Kept: number[] = [];
  let expected: number[] = [];

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "prefix-disk-"));
    disk = await CacheCluster.start({ name: "disk", stages: 2, cacheRoot: root });
    whole = await openWholeModel(disk.modelDir);
  });
  afterAll(async () => {
    await disk?.close();
    await whole?.close();
    rmSync(root, { recursive: true, force: true });
  });

  /** Node i's files of one block. */
  const filesOf = (i: number, hash: string) =>
    readdirSync(join(disk!.blockFolder(i), hash.slice(0, 2))).filter((n) => n.startsWith(hash));

  it("a full cluster restart restores the prefix from disk, and the run equals the uncached one token for token", async () => {
    const c = disk!;
    const one = await c.run(first, 6);
    expect(one.cachedTokens).toBe(0);
    // The KV holds the prompt and every output but the last.
    const kept = first.length + one.tokens.length - 1;
    // Restarted at once: the coordinator's last stash reaches the nodes, which write it before they exit.
    await c.restart();
    expect(c.scheduler.cachedPrefixTokens).toBe(0);
    turn2 = [...first, ...one.tokens, ...promptOf(40, 42)];
    expected = await referenceRun(whole!, 1, turn2, 6, {});
    const two = await c.run(turn2, 6);
    expect(two.cachedTokens).toBe(kept);
    expect(two.diskTokens).toBe(kept);
    expect(two.tokens).toEqual(expected);
    turn2Kept = [...turn2, ...two.tokens.slice(0, -1)];
  });

  it("a damaged block on one node is ignored (never loaded) and recomputed: the hit stops before it", async () => {
    const c = disk!;
    await c.untilOnDisk(turn2Kept);
    const victim = blockChain(turn2Kept, 64)[2];
    // Stage 1 holds layers 3..5 of the tiny model: flip one byte of layer 4's KV.
    const file = join(c.blockFolder(1), victim.hash.slice(0, 2), `${victim.hash}.4.kv`);
    const bytes = readFileSync(file);
    bytes[bytes.length - 100] ^= 0x01;
    writeFileSync(file, bytes);
    await c.restart();
    const again = await c.run(turn2, 6);
    expect(again.cachedTokens).toBe(2 * 64);
    expect(again.tokens).toEqual(expected);
    expect(
      c.agents[1].log.some((l) => l.includes(`layer 4 of block ${victim.hash}: payload checksum mismatch`)),
    ).toBe(true);
    // The run stored its blocks again: the damaged one is written anew, whole.
    await c.untilOnDisk(turn2Kept);
    expect(readFileSync(file).equals(bytes)).toBe(false);
  });

  it("a re-plan invalidates only the layers that moved", async () => {
    const c = disk!;
    const chain = blockChain(turn2Kept, 64);
    // Layer 2 moves from node 0 to node 1.
    await c.replan([2]);
    for (const b of chain) {
      expect(filesOf(0, b.hash).sort()).toEqual([`${b.hash}.0.kv`, `${b.hash}.1.kv`, `${b.hash}.blk`]);
      expect(filesOf(1, b.hash).sort()).toEqual([
        `${b.hash}.3.kv`,
        `${b.hash}.4.kv`,
        `${b.hash}.5.kv`,
        `${b.hash}.blk`,
      ]);
    }
    const layer3 = join(c.blockFolder(1), chain[0].hash.slice(0, 2), `${chain[0].hash}.3.kv`);
    const before = statSync(layer3);
    // Node 1 lacks layer 2 of every block, so nothing is a hit; node 0's layers 0 and 1 stay on its disk.
    const missed = await c.run(turn2, 6);
    expect(missed.cachedTokens).toBe(0);
    expect(missed.tokens).toEqual(expected);
    // Node 1 writes only the layer it lacked; its other layers' files are the same files.
    await c.untilOnDisk(turn2Kept);
    for (const b of chain) expect(filesOf(1, b.hash)).toContain(`${b.hash}.2.kv`);
    const after = statSync(layer3);
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    // After a restart on the new plan, both nodes hold every layer of their ranges: a hit from disk.
    await c.restart([2]);
    const hit = await c.run(turn2, 6);
    expect(hit.diskTokens).toBe(turn2.length - 1);
    expect(hit.tokens).toEqual(expected);
  });
});

describe("sessions sharing a prompt", () => {
  let warm: CacheCluster | undefined;
  beforeAll(async () => {
    warm = await CacheCluster.start({ name: "warm", stages: 2, blockTokens: 64, ramTokens: 600 });
  });
  afterAll(async () => {
    await warm?.close();
  });

  it("two interleaved sessions with a shared prefix keep both warm: the prefix is stored once", async () => {
    const c = warm!;
    // A RAM tier of 600 tokens: one copy of the 320-token shared prompt plus both sessions' own turns fit (about
    // 520 tokens), two copies of it (about 840) would not.
    const shared = promptOf(320, 50);
    const sessions = [shared, shared].map((s) => [...s]);
    const kept = [0, 0];
    for (let turn = 0; turn < 3; turn++) {
      for (const s of [0, 1]) {
        sessions[s].push(...promptOf(30, 60 + 10 * s + turn));
        const out = await c.run(sessions[s], 4);
        if (turn === 0 && s === 0) expect(out.cachedTokens).toBe(0);
        // The other session's first turn already finds the shared prompt.
        else if (turn === 0) expect(out.cachedTokens).toBeGreaterThanOrEqual(shared.length);
        // Every later turn finds the whole of its session's previous turn.
        else expect(out.cachedTokens, `session ${s} turn ${turn}`).toBe(kept[s]);
        expect(c.scheduler.cachedPrefixTokens).toBeLessThanOrEqual(600);
        kept[s] = sessions[s].length + out.tokens.length - 1;
        sessions[s].push(...out.tokens);
      }
    }
    expect(kept[0] + kept[1]).toBeGreaterThan(600);
  });
});
