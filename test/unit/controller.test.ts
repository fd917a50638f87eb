// The controller's reconcile steps with no process started: members are records the test adds and removes (as
// membership would on Hello and on a missed heartbeat), and plans load onto in-process pipelines of real
// engines (test/helpers/local-pipeline.ts). Each step checks the state, the plan and who serves.
import { EventEmitter } from "node:events";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { ClusterController } from "../../cluster/controller.js";
import type { Member, MembershipEvents } from "../../cluster/membership.js";
import { modelIdOf } from "../../common/model-config.js";
import type { NodeStatus } from "../../common/wire/types.js";
import { readModelFootprint } from "../../coordinator/model-footprint.js";
import { readModelInfo } from "../../node-agent/capabilities.js";
import { LocalPipeline } from "../helpers/local-pipeline.js";
import { collect, ensureModel } from "../helpers/pipeline-cluster.js";

const GB = 1e9;
let modelDir = "";

/** The members membership would report, changed by the test. */
class TestMembers extends EventEmitter<MembershipEvents> {
  private readonly members = new Map<string, Member>();
  readonly lostReasons: string[] = [];

  add(nodeId: string, memoryFree = 64 * GB, self = false): void {
    const now = Date.now();
    this.members.set(nodeId, {
      nodeId,
      name: `node-${nodeId}`,
      address: `10.0.0.${this.members.size + 1}:7100`,
      apiPort: 8080,
      version: "test",
      capabilities: {
        memory_total: 128 * GB,
        memory_free: memoryFree,
        chip: "test chip",
        cores: 2,
        backends: ["cpu"],
        memory_bandwidth_bps: 100 * GB,
        model_present: true,
        model: readModelInfo(modelDir, 4),
        platform: "linux",
        arch: "x64",
        gpu_working_set_limit: 0,
        gpu_working_set_source: "",
        memory_source: "test",
        cpu_kv_dtype: "f32",
      },
      helloPlanId: "",
      self,
      joinedAt: now,
      lastSeen: now,
    });
    this.emit("change", this.live());
  }

  /** A heartbeat of the member: whom it lists (gossip) and the epoch it serves; "change" as membership emits
   * when whether it lists us changes. */
  heartbeat(nodeId: string, fields: Partial<NodeStatus>): void {
    const member = this.members.get(nodeId)!;
    member.status = { ...(member.status ?? ({} as NodeStatus)), ...fields };
    this.emit("change", this.live());
  }

  remove(nodeId: string): void {
    this.members.delete(nodeId);
    this.emit("change", this.live());
  }

  live(): Member[] {
    return [...this.members.values()].sort((a, b) => (a.nodeId < b.nodeId ? -1 : 1));
  }

  get(nodeId: string): Member | undefined {
    return this.members.get(nodeId);
  }

  markLost(nodeId: string, reason: string): void {
    this.lostReasons.push(reason);
    this.remove(nodeId);
  }

  watch(): () => void {
    return () => {};
  }

  latestStatus(): NodeStatus | undefined {
    return undefined;
  }
}

let controller: ClusterController | undefined;
const pipelines: LocalPipeline[] = [];
/** The epoch each plan was started under. */
const epochs: Array<{ term: number; coordinatorId: string } | undefined> = [];

function start(members: TestMembers, selfId: string, reachGraceMs?: number): ClusterController {
  controller = new ClusterController({
    self: { nodeId: selfId, name: `node-${selfId}`, apiUrl: "http://127.0.0.1:8080" },
    clusterId: "c1",
    clusterKey: "k".repeat(32),
    version: "test",
    modelId: modelIdOf(modelDir),
    footprint: readModelFootprint(modelDir),
    contextTokens: 2048,
    membership: members,
    startPipeline: async (options) => {
      epochs.push(options.epoch);
      const pipeline = await LocalPipeline.start(modelDir, options.plan);
      pipelines.push(pipeline);
      return pipeline;
    },
    settleMs: 0,
    retryMs: 50,
    reachGraceMs,
    log: () => {},
  });
  return controller;
}

async function until(what: string, done: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}: ${JSON.stringify(controller?.health())}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const state = () => controller!.health().state;
const stages = () => controller!.currentPlan()?.stages.map((s) => s.nodeId) ?? [];

beforeAll(async () => {
  modelDir = await ensureModel("tiny-4bit", "tiny");
});

afterEach(async () => {
  await controller?.close();
  for (const p of pipelines.splice(0)) p.close();
  epochs.length = 0;
});

describe("the controller's reconcile loop", () => {
  it("waits for members, plans on itself, serves, then plans on two nodes when one joins", async () => {
    const members = new TestMembers();
    start(members, "b");
    await until("the planning state", () => state() === "planning");
    expect(controller!.health().message).toBe("waiting for members");

    members.add("b", 64 * GB, true);
    await until("a one-stage plan to serve", () => state() === "ready");
    expect(stages()).toEqual(["b"]);
    const reply = await collect(
      controller!.generator()!.generate({ prompt: [5, 6, 7], maxTokens: 3, sampling: {}, stopTokenIds: [] }),
    );
    expect(reply.tokens).toHaveLength(3);

    members.add("c");
    await until("a two-stage plan", () => state() === "ready" && stages().length === 2);
    expect(stages()).toEqual(["b", "c"]);
    expect(controller!.health().nodes.map((n) => n.role)).toEqual(["coordinator", "node"]);
  });

  it("follows a member with a smaller id, and coordinates again when it leaves", async () => {
    const members = new TestMembers();
    members.add("b", 64 * GB, true);
    start(members, "b");
    await until("serving alone", () => state() === "ready");

    members.add("a");
    await until("following", () => state() === "following");
    expect(controller!.generator()).toBeUndefined();
    expect(controller!.health().coordinator?.apiUrl).toBe("http://10.0.0.2:8080");
    expect(controller!.health()).toMatchObject({ ok: true, coordinator: { id: "a" } });

    members.remove("a");
    await until("coordinating again", () => state() === "ready");
    expect(controller!.health().coordinator?.id).toBe("b");
  });

  it("a node lost by the pipeline leaves membership and the rest re-plans at once", async () => {
    const members = new TestMembers();
    members.add("b", 64 * GB, true);
    members.add("c");
    start(members, "b");
    await until("a two-stage plan", () => state() === "ready" && stages().length === 2);

    pipelines.at(-1)!.lose(1);
    expect(state()).toBe("not_ready");
    expect(controller!.health().message).toContain("node-c at 10.0.0.2:7100 stopped responding");
    expect(members.lostReasons[0]).toContain("stopped responding");
    await until("a one-stage plan", () => state() === "ready" && stages().length === 1);
    expect(stages()).toEqual(["b"]);
  });

  it("says in bytes why a model does not fit, and plans once a member with room joins", async () => {
    const members = new TestMembers();
    members.add("b", 0.5 * GB, true);
    start(members, "b");
    await until("the not-ready state", () => state() === "not_ready");
    expect(controller!.health().message).toMatch(/does not fit on 1 node\(s\): it needs .* \(\d+ B\)/);
    const refused = controller!
      .generator()!
      .generate({ prompt: [5], maxTokens: 1, sampling: {}, stopTokenIds: [] });
    await expect(collect(refused)).rejects.toMatchObject({ code: "cluster_not_ready" });

    members.add("c", 64 * GB);
    await until("a plan on the roomy node", () => state() === "ready");
    expect(stages()).toEqual(["c"]);
  });

  it("leaves out a smaller id that does not list it (after a grace), and follows it once it does", async () => {
    const members = new TestMembers();
    members.add("b", 64 * GB, true);
    members.add("a");
    members.heartbeat("a", { members: [{ node_id: "a", address: "10.0.0.2:7100" }] });
    start(members, "b", 500);
    // a joined a moment ago and may still be probing us back: b follows it meanwhile, loading nothing.
    await until("following a", () => state() === "following");
    expect(controller!.health().coordinator?.id).toBe("a");
    expect(epochs).toEqual([]);
    // a still does not see b after the grace: b coordinates the members that see it, itself alone.
    await until("serving alone", () => state() === "ready");
    expect(stages()).toEqual(["b"]);
    expect(controller!.health().coordinator?.id).toBe("b");

    members.heartbeat("a", {
      members: [
        { node_id: "a", address: "10.0.0.2:7100" },
        { node_id: "b", address: "10.0.0.1:7100" },
      ],
    });
    await until("following a", () => state() === "following");
    expect(controller!.health().coordinator?.id).toBe("a");
  });

  it("plans under a term above any other coordinator's its members serve, and keeps it", async () => {
    const members = new TestMembers();
    members.add("b", 64 * GB, true);
    members.add("c");
    members.heartbeat("c", { coordinator_term: 4, coordinator_id: "a" });
    start(members, "b");
    await until("a two-stage plan", () => state() === "ready" && stages().length === 2);
    expect(epochs.at(-1)).toEqual({ term: 5, coordinatorId: "b" });

    // c now serves b (term 5); a new member brings a re-plan under the same term.
    members.heartbeat("c", { coordinator_term: 5, coordinator_id: "b" });
    members.add("d");
    await until("a three-stage plan", () => state() === "ready" && stages().length === 3);
    expect(epochs.at(-1)).toEqual({ term: 5, coordinatorId: "b" });
  });
});
