// The stage's batching rule (node-agent/stage-queue.ts): one wave per batch, at most one item per sequence,
// prefill bounded by tokens; a wave waits briefly for the members of its last batch that have not arrived yet,
// while a complete wave runs at once; members that ended do not hold it up.
import { describe, expect, it } from "vitest";
import { maxGatherMs, type QueuedWork, WaveQueue } from "../../node-agent/stage-queue.js";

interface Item extends QueuedWork {
  name: string;
}

const limits = { maxItems: 64, maxPrefillTokens: 1024 };
const live = () => true;

function item(name: string, seq: number, wave: number, queuedAt: number, count = 1): Item {
  return { name, seq, wave, count, queuedAt };
}

/** A queue whose wave 0 last ran sequences 1 and 2 together, in a batch of `ms` milliseconds. */
function afterBatchOfTwo(ms: number): WaveQueue<Item> {
  const q = new WaveQueue<Item>(limits);
  q.push(item("a1", 1, 0, 0));
  q.push(item("b1", 2, 0, 0));
  const first = q.next(live, 0);
  if (!("batch" in first)) throw new Error("expected a batch");
  q.ran(first.batch, ms);
  return q;
}

function names(next: ReturnType<WaveQueue<Item>["next"]>): string[] {
  if (!("batch" in next)) throw new Error(`expected a batch, got a wait of ${next.waitMs} ms`);
  return next.batch.map((i) => i.name);
}

describe("WaveQueue", () => {
  it("never runs a sequence's later prefill chunk before an earlier one the token cap held back", () => {
    // Three prompts of one wave: 900 tokens, then 256 + 44 (two chunks of one sequence). The cap of 1024 holds
    // back the 256-token chunk; its 44-token tail fits but must wait with it.
    const q = new WaveQueue<Item>(limits);
    q.push(item("a1", 1, 0, 0, 900));
    q.push(item("b1", 2, 0, 0, 256));
    q.push(item("b2", 2, 0, 0, 44));
    expect(names(q.next(live, 0))).toEqual(["a1"]);
    expect(names(q.next(live, 10))).toEqual(["b1"]);
    expect(names(q.next(live, 20))).toEqual(["b2"]);
  });

  it("runs the oldest wave, one item per sequence, and leaves later steps and other waves queued", () => {
    const q = new WaveQueue<Item>(limits);
    q.push(item("a1", 1, 0, 0));
    q.push(item("b1", 2, 1, 0));
    q.push(item("a2", 1, 0, 0));
    q.push(item("c1", 3, 0, 0));
    expect(names(q.next(live, 0))).toEqual(["a1", "c1"]);
    expect(names(q.next(live, 0))).toEqual(["b1"]);
    expect(names(q.next(live, 0))).toEqual(["a2"]);
    expect(q.length).toBe(0);
  });

  it("bounds prefill tokens per batch, but a batch always takes its first item", () => {
    const q = new WaveQueue<Item>(limits);
    q.push(item("big", 1, 0, 0, 2000));
    q.push(item("p2", 2, 0, 0, 600));
    q.push(item("d3", 3, 0, 0, 1));
    expect(names(q.next(live, 0))).toEqual(["big", "d3"]);
    expect(names(q.next(live, 0))).toEqual(["p2"]);
  });

  it("waits for the members of a wave's last batch, up to a tenth of its time, and runs once they arrive", () => {
    const q = afterBatchOfTwo(20);
    q.push(item("a2", 1, 0, 100));
    expect(q.next(live, 100)).toEqual({ waitMs: 2 });
    expect(q.next(live, 101.5)).toEqual({ waitMs: 0.5 });
    q.push(item("b2", 2, 0, 101.6));
    expect(names(q.next(live, 101.6))).toEqual(["a2", "b2"]);
  });

  it("runs the wave alone once the wait is over, and never waits longer than maxGatherMs", () => {
    const q = afterBatchOfTwo(10_000);
    q.push(item("a2", 1, 0, 50));
    expect(q.next(live, 50)).toEqual({ waitMs: maxGatherMs });
    expect(names(q.next(live, 50 + maxGatherMs))).toEqual(["a2"]);
  });

  it("a complete younger wave runs while an older one waits for its late member", () => {
    const q = afterBatchOfTwo(20);
    q.push(item("a2", 1, 0, 30));
    q.push(item("c1", 3, 1, 30.1));
    expect(names(q.next(live, 30.2))).toEqual(["c1"]);
    expect(q.next(live, 30.2)).toEqual({ waitMs: expect.closeTo(1.8, 6) });
  });

  it("members that ended (released, cancelled) are not waited for", () => {
    const q = afterBatchOfTwo(20);
    q.push(item("a2", 1, 0, 100));
    expect(names(q.next((seq) => seq !== 2, 100))).toEqual(["a2"]);
  });

  it("removes a sequence's items and forgets everything on clear", () => {
    const q = new WaveQueue<Item>(limits);
    q.push(item("a1", 1, 0, 0));
    q.push(item("b1", 2, 0, 0));
    q.push(item("a2", 1, 0, 0));
    q.removeSeq(1);
    expect(q.hasSeq(1)).toBe(false);
    expect(q.hasSeq(2)).toBe(true);
    q.clear();
    expect(q.length).toBe(0);
  });
});
