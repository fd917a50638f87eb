// The coordinator's prefix index (coordinator/prefix-cache.ts) and the eviction rule both tiers share
// (common/block-eviction.ts), with no process: block names chain over the tokens, a match walks the blocks every
// stage holds and may end inside one, a shared prefix is one set of blocks, shorter blocks are superseded, and the
// RAM tier evicts leaves by recency and conversation length within a tiny budget, never a pinned block.
import { describe, expect, it } from "vitest";
import { pickVictim } from "../../common/block-eviction.js";
import { blockHash } from "../../common/block-hash.js";
import { blockChain } from "../../coordinator/block-chain.js";
import { PrefixCache } from "../../coordinator/prefix-cache.js";

function tokens(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

/** A cache of `stages` stages holding `held` in RAM, as after a stash that succeeded. */
function cacheWith(held: number[][], blockTokens = 4, stages = 2): PrefixCache {
  const cache = new PrefixCache({ stageCount: stages, blockTokens });
  for (const t of held) cache.stashed(cache.planStash(t));
  return cache;
}

describe("block names", () => {
  it("chain over the tokens: a shared prefix shares its whole blocks' names, nothing after", () => {
    const a = blockChain([1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
    const b = blockChain([1, 2, 3, 4, 5, 6, 7, 0, 9], 4);
    expect(a.map((x) => [x.start, x.tokens.length])).toEqual([
      [0, 4],
      [4, 4],
      [8, 1],
    ]);
    expect(b[0].hash).toBe(a[0].hash);
    expect(b[1].hash).not.toBe(a[1].hash);
    // Same tokens after another parent: another name (a block stands for its whole prefix).
    expect(blockHash(a[0].hash, [5, 6, 7, 8])).toBe(a[1].hash);
    expect(blockHash("", [5, 6, 7, 8])).not.toBe(a[1].hash);
    expect(a[1].parent).toBe(a[0].hash);
  });
});

describe("PrefixCache lookup", () => {
  it("finds the longest prefix block by block, ends inside a block, never takes the prompt's last token", () => {
    const cache = cacheWith([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]);
    expect(cache.lookup([1, 2, 3, 4, 5, 6, 0, 0])).toMatchObject({
      positions: 6,
      uses: [{ take: 4 }, { take: 2 }],
      ramPositions: 6,
      diskPositions: 0,
    });
    expect(cache.lookup([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])?.positions).toBe(10);
    // The whole entry matches, but the last prompt token must run.
    expect(cache.lookup([1, 2, 3, 4, 5])?.positions).toBe(4);
    expect(cache.lookup([1, 2, 3])?.positions).toBe(2);
    expect(cache.lookup([9, 1, 2])).toBeUndefined();
  });

  it("uses a disk block only when every stage holds it", () => {
    const cache = new PrefixCache({ stageCount: 2, blockTokens: 4 });
    const [b0, b1] = blockChain([1, 2, 3, 4, 5, 6, 7, 8], 4);
    cache.setDisk(0, b0, true);
    cache.setDisk(1, b0, true);
    cache.setDisk(0, b1, true);
    expect(cache.lookup([1, 2, 3, 4, 5, 6, 7, 8, 9])).toMatchObject({ positions: 4, diskPositions: 4 });
    cache.setDisk(1, b1, true);
    expect(cache.lookup([1, 2, 3, 4, 5, 6, 7, 8, 9])?.positions).toBe(8);
    // A stage that loses a block (evicted, or damaged) ends the match before it.
    cache.setDisk(1, b0, false);
    expect(cache.lookup([1, 2, 3, 4, 5, 6, 7, 8, 9])).toBeUndefined();
    expect(cache.size).toBe(2);
  });
});

describe("PrefixCache stash", () => {
  it("keeps a prefix shared by several conversations once: their common blocks are the same blocks", () => {
    const system = tokens(8, 1);
    const cache = cacheWith([
      [...system, ...tokens(3, 2)],
      [...system, ...tokens(3, 3)],
      [...system, ...tokens(3, 4)],
    ]);
    // Two blocks of system prompt once, and three tails of three tokens.
    expect(cache.ramTokens).toBe(8 + 3 * 3);
    expect(cache.lookup([...system, ...tokens(3, 3), 7])?.positions).toBe(11);
  });

  it("a longer block supersedes the shorter one it extends (dropped on every stage)", () => {
    const cache = cacheWith([[1, 2, 3, 4, 5, 6]]);
    const plan = cache.planStash([1, 2, 3, 4, 5, 6, 7]);
    expect(plan.drop).toEqual([blockChain([1, 2, 3, 4, 5, 6], 4)[1].hash]);
    cache.stashed(plan);
    expect(cache.ramTokens).toBe(7);
    // A last block that a RAM block already covers is not stashed again.
    expect(cache.planStash([1, 2, 3, 4, 5]).chain.map((b) => b.tokens)).toEqual([[1, 2, 3, 4]]);
  });
});

describe("eviction", () => {
  it("the RAM tier evicts leaves, least recently used first, within a tiny budget, never a pinned block", () => {
    const a = tokens(6, 1);
    const b = tokens(6, 2);
    const c = tokens(6, 3);
    const cache = cacheWith([a, b]);
    const hit = cache.lookup([...a, 9]);
    if (!hit) throw new Error("expected a hit on a");
    cache.pin(hit);
    cache.stashed(cache.planStash(c));
    // 18 tokens; a budget of 12 takes 6: b's tail, then b's first block (a is pinned, c is the most recent).
    const [b0, b1] = blockChain(b, 4).map((x) => x.hash);
    expect(cache.evictRam(12)).toEqual([b1, b0]);
    // Pinned a stays even when only it is left over budget.
    expect(cache.evictRam(0)).toEqual(
      blockChain(c, 4)
        .map((x) => x.hash)
        .reverse(),
    );
    expect(cache.ramTokens).toBe(6);
    cache.unpin(hit);
    expect(cache.evictRam(0)).toHaveLength(2);
    expect(cache.ramTokens).toBe(0);
  });

  it("a shared block goes only after every conversation it starts", () => {
    const system = [1, 2, 3, 4];
    const cache = cacheWith([
      [...system, 5, 6],
      [...system, 7, 8],
    ]);
    const evicted = cache.evictRam(0);
    expect(evicted[2]).toBe(blockChain(system, 4)[0].hash);
  });

  it("one long conversation gives up its tail before short idle ones are flushed", () => {
    // A long session used just now, two short ones used a little earlier: the long one's last blocks go first.
    const candidates = [
      { id: "long-tail", lastUsed: 10, end: 4000 },
      { id: "short-a", lastUsed: 8, end: 500 },
      { id: "short-b", lastUsed: 9, end: 500 },
    ];
    expect(pickVictim(candidates, 10)?.id).toBe("long-tail");
    // Idle long enough while the long one keeps being used, a short one goes instead.
    const later = candidates.map((c) => (c.id === "long-tail" ? { ...c, lastUsed: 30 } : c));
    expect(pickVictim(later, 30)?.id).toBe("short-a");
    // Equal scores: the longer conversation, then the name, decide (never iteration order).
    expect(pickVictim([...candidates].reverse(), 10)?.id).toBe("long-tail");
    expect(pickVictim([], 1)).toBeUndefined();
  });

  it("in the index, a long active session loses its tail while two short sessions stay whole", () => {
    const long = tokens(40, 5);
    const shortA = tokens(6, 6);
    const shortB = tokens(6, 7);
    const cache = cacheWith([shortA, shortB, long]);
    // Over budget by 8 tokens: two of the long session's blocks (its tail) go, not the short sessions.
    const evicted = cache.evictRam(44);
    expect(evicted).toEqual(
      blockChain(long, 4)
        .slice(-2)
        .map((b) => b.hash)
        .reverse(),
    );
    expect(cache.lookup([...shortA, 1])?.positions).toBe(6);
    expect(cache.lookup([...shortB, 1])?.positions).toBe(6);
    expect(cache.lookup([...long, 1])?.positions).toBe(32);
  });
});
