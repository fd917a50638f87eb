// The one picture of the cluster (cluster/health.ts) built from membership records and the plan: one view per
// node with its heartbeat figures, link latency, loading progress and lost stages; the snapshot the dashboard
// reads; and the one text rendering `cluster status` prints.
import { describe, expect, it } from "vitest";
import { buildClusterHealth, type HealthInputs } from "../../cluster/health.js";
import type { Member } from "../../cluster/membership.js";
import { snapshotOf } from "../../cluster/snapshot.js";
import { renderClusterStatus } from "../../cluster/status-text.js";
import type { NodeStatus } from "../../common/wire/types.js";
import type { Plan, PlanStage } from "../../coordinator/planner.js";

function status(id: string, extra: Partial<NodeStatus> = {}): NodeStatus {
  return {
    node_id: id,
    time_us: 0,
    plan_id: "p1",
    loaded: true,
    layer_start: 0,
    layer_end: 0,
    embed: false,
    head: false,
    tokens_per_s: 30,
    busy_fraction: 0.5,
    queue_depth: 1,
    kv_bytes: 1e6,
    weight_bytes: 60e9,
    memory_used: 80e9,
    memory_total: 192e9,
    sequences: 1,
    inbound_hop_p50_us: 0,
    inbound_hop_p99_us: 0,
    batches: 10,
    mean_batch_items: 1,
    backend: "mlx",
    inbound_hop_count: 0,
    cache_ram_bytes: 0,
    cache_disk_bytes: 0,
    cache_disk_budget_bytes: 0,
    cache_ram_hit_tokens: 0,
    cache_disk_hit_tokens: 0,
    prompt_tokens_computed: 0,
    ...extra,
  };
}

function member(id: string, nodeStatus?: NodeStatus, lastSeenAgoMs = 200): Member {
  return {
    nodeId: id,
    name: `node-${id}`,
    address: `10.0.0.${id}:7100`,
    apiPort: 8080,
    version: "0.1.0",
    capabilities: {
      memory_total: 192e9,
      memory_free: 100e9,
      chip: "Apple M2 Ultra",
      cores: 24,
      backends: ["cpu", "mlx"],
      memory_bandwidth_bps: 800e9,
      model_present: true,
      model: null,
      platform: "darwin",
      arch: "arm64",
      gpu_working_set_limit: 0,
      gpu_working_set_source: "",
      memory_source: "test",
      cpu_kv_dtype: "f32",
    },
    helloPlanId: "",
    status: nodeStatus,
    self: id === "1",
    joinedAt: 0,
    lastSeen: Date.now() - lastSeenAgoMs,
  };
}

function stage(id: string, start: number, end: number): PlanStage {
  return {
    nodeId: id,
    name: `node-${id}`,
    address: `10.0.0.${id}:7100`,
    layerStart: start,
    layerEnd: end,
    embed: start === 0,
    head: end === 62,
    weightBytes: 40e9,
    kvReserveBytes: 1e9,
    headroomBytes: 10e9,
    needBytes: 52e9,
    availableBytes: 180e9,
    bandwidthBps: 800e9,
    secondsPerToken: 0.01,
  };
}

const plan: Plan = {
  planId: "p1",
  backend: "mlx",
  numLayers: 62,
  contextTokens: 65536,
  stages: [stage("1", 0, 21), stage("2", 21, 42), stage("3", 42, 62)],
  idle: [],
  bottleneckSecondsPerToken: 0.01,
};

function inputs(state: HealthInputs["state"], members: Member[], extra: Partial<HealthInputs> = {}) {
  return {
    state,
    clusterId: "c1",
    modelId: "MiniMax-M2.1-4bit",
    version: "0.1.0",
    numLayers: 62,
    self: { nodeId: "1", name: "node-1", apiUrl: "http://10.0.0.1:8080" },
    coordinator: members.find((m) => m.nodeId === "1"),
    members,
    plan,
    loadProgress: new Map<string, number>(),
    ...extra,
  } satisfies HealthInputs;
}

describe("the cluster picture", () => {
  it("shows every member, the downstream link latency, and a plan stage whose node left as lost", () => {
    const health = buildClusterHealth(
      inputs("ready", [
        member("1", status("1", { layer_start: 0, layer_end: 21, embed: true })),
        member("2", status("2", { layer_start: 21, layer_end: 42, inbound_hop_p50_us: 180 }), 2500),
      ]),
    );
    expect(health.ok).toBe(true);
    expect(health.node.role).toBe("coordinator");
    expect(health.nodes.map((n) => [n.id, n.role, n.health])).toEqual([
      ["1", "coordinator", "ok"],
      ["2", "node", "degraded"],
      ["3", "node", "lost"],
    ]);
    // Node 1's link goes to node 2, whose inbound hop median is what node 1's frames take.
    expect(health.nodes[0].linkLatencyUs).toBe(180);
    expect(health.nodes[0]).toMatchObject({
      embed: true,
      head: false,
      layerStart: 0,
      layerEnd: 21,
      cores: 24,
    });
    expect(health.nodes[2]).toMatchObject({ layerStart: 42, layerEnd: 62, head: true });
    expect(health.nodes[1].apiUrl).toBe("http://10.0.0.2:8080");

    const snap = snapshotOf(health);
    expect(snap).toMatchObject({ state: "ready", coordinatorId: "1", numLayers: 62, message: undefined });
    expect(snap.nodes).toBe(health.nodes);
  });

  it("reports loading progress per node while a plan loads, with the plan's layers", () => {
    const loading = buildClusterHealth(
      inputs("loading", [member("1", status("1", { loaded: false })), member("2")], {
        loadProgress: new Map([["2", 0.25]]),
        message: "loading plan p1",
      }),
    );
    expect(loading.ok).toBe(false);
    expect(loading.nodes[1]).toMatchObject({
      health: "loading",
      loadProgress: 0.25,
      layerStart: 21,
      layerEnd: 42,
    });
    expect(loading.nodes[0].loadProgress).toBe(0);
    expect(snapshotOf(loading)).toMatchObject({ state: "loading", message: "loading plan p1" });
  });

  it("a follower serves through its coordinator: its snapshot reads ready", () => {
    const following = buildClusterHealth(
      inputs(
        "following",
        [
          { ...member("1"), self: false },
          { ...member("2"), self: true },
        ],
        {
          self: { nodeId: "2", name: "node-2", apiUrl: "http://10.0.0.2:8080" },
          plan: undefined,
        },
      ),
    );
    expect(following.ok).toBe(true);
    expect(following.node.role).toBe("node");
    expect(following.coordinator).toEqual({ id: "1", name: "node-1", apiUrl: "http://10.0.0.1:8080" });
    expect(snapshotOf(following).state).toBe("ready");
    // Status names the coordinator by its gRPC address: its API's URL may be its own loopback.
    const address = following.nodes.find((n) => n.id === "1")!.address;
    expect(renderClusterStatus(following)).toContain(`coordinator: node-1 (1) at ${address} (gRPC)`);
  });
});

describe("renderClusterStatus", () => {
  it("prints every node with role, health and layers, then the plan's layer ranges with byte figures", () => {
    const health = buildClusterHealth(
      inputs("ready", [
        member("1", status("1", { layer_start: 0, layer_end: 21, embed: true })),
        member("2", status("2", { layer_start: 21, layer_end: 42 })),
      ]),
    );
    const text = renderClusterStatus(health);
    expect(text).toContain("state ready (serving)");
    expect(text).toContain("coordinator: node-1 (1), this node");
    expect(text).toContain("nodes (3, 62 layers):");
    expect(text).toMatch(/\* node-1 +1 +coordinator +ok +\[0,21\)E/);
    expect(text).toMatch(/ {3}node-3 +3 +node +lost +\[42,62\)H/);
    expect(text).toMatch(
      /stage 0: node-1 +layers \[0,21\) embed {2}weights 40\.0 GB \+ KV 1\.0 GB, needs 52\.0 GB of 180\.0 GB/,
    );
    expect(text).toMatch(/stage 2: node-3 +layers \[42,62\) head/);
    expect(text).not.toContain("requests in flight");
  });

  it("adds the coordinator's live figures and requests when given its snapshot", () => {
    const health = buildClusterHealth(inputs("ready", [member("1", status("1")), member("2", status("2"))]));
    const now = Date.now();
    const live = {
      ...snapshotOf(health),
      inFlight: [
        {
          id: "req-1",
          api: "responses" as const,
          startedAt: now - 2000,
          status: "decoding" as const,
          promptTokens: 100,
          cachedTokens: 64,
          outputTokens: 5,
        },
      ],
      throughput: [{ t: now, v: 42 }],
      ttftMs: [{ t: now, v: 300 }],
    };
    const text = renderClusterStatus(health, { live, now });
    expect(text).toContain("throughput 42.0 tok/s (last second)");
    expect(text).toContain("TTFT median 300 ms");
    expect(text).toMatch(/req-1 +responses +decoding +prompt 100 \(cached 64\) {2}out 5/);
    expect(text).toContain("recent requests: 0");
  });
});
