// The pure rules against split brain: the election over mutually reachable members (cluster/election.ts), the
// node-side judgement of a LoadShard's coordinator epoch and the term a coordinator takes
// (common/coordinator-epoch.ts), and where a gossiped address leads (cluster/membership.ts).
import { describe, expect, it } from "vitest";
import { electCoordinator, reachableMembers, seesUs } from "../../cluster/election.js";
import { gossipedAddress } from "../../cluster/membership.js";
import {
  type CoordinatorEpoch,
  type CoordinatorView,
  epochOf,
  judgeLoadShard,
  nextTerm,
} from "../../common/coordinator-epoch.js";

/** A member whose heartbeat lists `sees` (undefined: no heartbeat yet). */
const member = (nodeId: string, sees?: string[]) => ({
  nodeId,
  status: sees === undefined ? undefined : { members: sees.map((id) => ({ node_id: id })) },
});

const epoch = (term: number, coordinatorId: string): CoordinatorEpoch => ({ term, coordinatorId });

const view = (live: string[], choice: string | undefined): CoordinatorView => ({
  isLive: (id) => live.includes(id),
  choice: () => choice,
});

describe("the election over mutually reachable members", () => {
  it("elects the smallest id among members that list us", () => {
    // c's view in a partial partition: a and b cannot reach each other, both reach c.
    const live = [member("a", ["a", "c"]), member("b", ["b", "c"]), member("c", ["a", "b", "c"])];
    expect(electCoordinator(live, "c")?.nodeId).toBe("a");
    // b's view of the same cluster (a is not live for b): b, not a.
    expect(electCoordinator([member("b", ["b", "c"]), member("c", ["a", "b", "c"])], "b")?.nodeId).toBe("b");
  });

  it("leaves out a member that does not list us (one-way reachability)", () => {
    const live = [member("a", ["a"]), member("b", ["a", "b"])];
    expect(reachableMembers(live, "b").map((m) => m.nodeId)).toEqual(["b"]);
    expect(electCoordinator(live, "b")?.nodeId).toBe("b");
    // Without our id (the old rule) every live member counts.
    expect(electCoordinator(live)?.nodeId).toBe("a");
  });

  it("gives a member with no heartbeat yet, or an empty list (an older node), the benefit of the doubt", () => {
    expect(seesUs(member("a"), "b")).toBe(true);
    expect(seesUs(member("a", []), "b")).toBe(true);
    expect(seesUs(member("a", ["c"]), "b")).toBe(false);
    expect(seesUs(member("b", ["c"]), "b")).toBe(true);
    expect(electCoordinator([], "b")).toBeUndefined();
  });
});

describe("a node judging a LoadShard's epoch", () => {
  it("accepts any LoadShard with an epoch while it serves nobody", () => {
    expect(judgeLoadShard(undefined, epoch(1, "b"), view([], undefined))).toEqual({ accept: true });
  });

  it("refuses a LoadShard without an epoch (an older node, a tool), serving someone or not, naming why", () => {
    for (const current of [epoch(3, "a"), undefined]) {
      const verdict = judgeLoadShard(current, undefined, view(["a"], "a"));
      expect(verdict.accept).toBe(false);
      expect(!verdict.accept && verdict.reason).toMatch(/carries no coordinator epoch.*older version/);
    }
  });

  it("accepts its coordinator's re-plans, and refuses a stale term of it", () => {
    expect(judgeLoadShard(epoch(2, "a"), epoch(2, "a"), view(["a"], "a"))).toEqual({ accept: true });
    expect(judgeLoadShard(epoch(2, "a"), epoch(3, "a"), view(["a"], "a"))).toEqual({ accept: true });
    const stale = judgeLoadShard(epoch(2, "a"), epoch(1, "a"), view(["a"], "a"));
    expect(stale).toMatchObject({ accept: false, reason: expect.stringContaining("stale") });
  });

  it("refuses another coordinator whose term is not newer", () => {
    const verdict = judgeLoadShard(epoch(2, "a"), epoch(2, "b"), view([], "b"));
    expect(verdict).toMatchObject({ accept: false, reason: expect.stringContaining("is not newer") });
  });

  it("in a partial partition, refuses a newer term while its coordinator is live and still its choice", () => {
    const verdict = judgeLoadShard(epoch(2, "a"), epoch(3, "b"), view(["a", "b", "c"], "a"));
    expect(verdict).toMatchObject({
      accept: false,
      reason: expect.stringContaining("coordinator a term 2, which is still live here, and elects a"),
    });
  });

  it("moves to a newer coordinator once its own is lost, or once it elects the newcomer", () => {
    expect(judgeLoadShard(epoch(2, "a"), epoch(3, "b"), view(["b", "c"], "b"))).toEqual({ accept: true });
    // Its coordinator is still live but a smaller id came back: it elects the newcomer.
    expect(judgeLoadShard(epoch(2, "b"), epoch(3, "a"), view(["a", "b"], "a"))).toEqual({ accept: true });
    // Its view of the newcomer lags (it does not elect it yet), but the newcomer is live with a smaller id.
    expect(judgeLoadShard(epoch(1, "b"), epoch(2, "a"), view(["a", "b"], "b"))).toEqual({ accept: true });
    // The reverse is refused: a larger id does not take a node from a live coordinator it still elects...
    expect(judgeLoadShard(epoch(2, "a"), epoch(3, "b"), view(["a", "b"], "a"))).toMatchObject({
      accept: false,
    });
    // ...unless the node elects it (a is live but no longer sees the node).
    expect(judgeLoadShard(epoch(2, "a"), epoch(3, "b"), view(["a", "b"], "b"))).toEqual({ accept: true });
    // A bare node (no membership view): only the terms decide.
    expect(judgeLoadShard(epoch(2, "a"), epoch(3, "b"), undefined)).toEqual({ accept: true });
  });

  it("reads the epoch a message carries", () => {
    expect(epochOf({ coordinator_term: 4, coordinator_id: "a" })).toEqual(epoch(4, "a"));
    expect(epochOf({ coordinator_term: 0, coordinator_id: "" })).toBeUndefined();
    expect(epochOf({})).toBeUndefined();
  });
});

describe("the term a coordinator takes", () => {
  it("starts one above every term its members serve", () => {
    expect(nextTerm(undefined, "b", [])).toBe(1);
    expect(nextTerm(undefined, "b", [epoch(2, "a"), undefined, epoch(1, "b")])).toBe(3);
  });

  it("keeps its term while it coordinates, unless a member serves another coordinator at that term or later", () => {
    expect(nextTerm(3, "b", [epoch(3, "b"), epoch(2, "a")])).toBe(3);
    expect(nextTerm(3, "b", [epoch(3, "b"), epoch(3, "a")])).toBe(4);
    expect(nextTerm(3, "b", [epoch(7, "c")])).toBe(8);
  });
});

describe("a gossiped address", () => {
  it("is taken as listed, except loopback from a sender on another machine, which means the sender's host", () => {
    expect(gossipedAddress("10.0.0.7:7100", "10.0.0.5:7100")).toBe("10.0.0.7:7100");
    expect(gossipedAddress("localhost:7101", "127.0.0.1:7100")).toBe("127.0.0.1:7101");
    expect(gossipedAddress("127.0.0.1:7101", "10.0.0.5:7100")).toBe("10.0.0.5:7101");
    expect(gossipedAddress("[::1]:7101", "[fd00::5]:7100")).toBe("[fd00::5]:7101");
    expect(gossipedAddress("not an address", "10.0.0.5:7100")).toBeUndefined();
  });
});
