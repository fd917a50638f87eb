// The dashboard snapshot built from membership health: node cards, lost stages, loading progress, link latency.
import { describe, expect, it } from "vitest";
import type { ClusterHealth, MemberHealth } from "../../cluster/health.js";
import { renderClusterHealth } from "../../cluster/health.js";
import { SnapshotBuilder } from "../../cluster/snapshot-builder.js";

function member(id: string, extra: Partial<MemberHealth> = {}): MemberHealth {
  return {
    id,
    name: `node-${id}`,
    address: `10.0.0.${id}:7100`,
    role: id === "1" ? "coordinator" : "node",
    chip: "Apple M2 Ultra",
    cores: 24,
    backends: ["cpu", "mlx"],
    memoryTotalBytes: 192e9,
    memoryUsedBytes: 80e9,
    memoryBandwidthBps: 800e9,
    planId: "p1",
    loaded: true,
    tokensPerSecond: 30,
    busyFraction: 0.5,
    queueDepth: 1,
    kvBytes: 1e6,
    weightBytes: 60e9,
    inboundHopP50Us: 0,
    lastSeenMs: 200,
    ...extra,
  };
}

function health(state: ClusterHealth["state"], members: MemberHealth[]): ClusterHealth {
  const stage = (id: string, start: number, end: number) => ({
    nodeId: id,
    name: `node-${id}`,
    address: `10.0.0.${id}:7100`,
    layerStart: start,
    layerEnd: end,
    embed: start === 0,
    head: end === 62,
    weightBytes: 40e9,
    kvReserveBytes: 1e9,
    needBytes: 52e9,
    availableBytes: 180e9,
  });
  return {
    ok: state === "ready",
    state,
    clusterId: "c1",
    modelId: "MiniMax-M2.1-4bit",
    version: "0.1.0",
    node: { id: "1", name: "node-1", role: "coordinator", apiUrl: "http://10.0.0.1:8080" },
    coordinator: { id: "1", name: "node-1", apiUrl: "http://10.0.0.1:8080" },
    members,
    plan: {
      planId: "p1",
      backend: "mlx",
      contextTokens: 65536,
      numLayers: 62,
      stages: [stage("1", 0, 21), stage("2", 21, 42), stage("3", 42, 62)],
    },
  };
}

describe("SnapshotBuilder", () => {
  it("shows every member, the downstream link latency, and a plan stage whose node left as lost", () => {
    const builder = new SnapshotBuilder();
    const h = health("ready", [
      member("1", { layerStart: 0, layerEnd: 21 }),
      member("2", { layerStart: 21, layerEnd: 42, inboundHopP50Us: 180 }),
    ]);
    const snap = builder.build(h, 62);
    expect(snap.state).toBe("ready");
    expect(snap.coordinatorId).toBe("1");
    expect(snap.numLayers).toBe(62);
    expect(snap.nodes.map((n) => [n.id, n.health])).toEqual([
      ["1", "ok"],
      ["2", "ok"],
      ["3", "lost"],
    ]);
    // Node 1's link goes to node 2, whose inbound hop median is what node 1's frames take.
    expect(snap.nodes[0].linkLatencyUs).toBe(180);
    expect(snap.nodes[0]).toMatchObject({ embed: true, head: false, layerStart: 0, layerEnd: 21, cores: 24 });
    expect(snap.nodes[2]).toMatchObject({ layerStart: 42, layerEnd: 62, head: true });
  });

  it("reports loading progress per node while a plan loads", () => {
    const builder = new SnapshotBuilder();
    builder.progress("2", 30, 120);
    const snap = builder.build(health("loading", [member("1"), member("2", { loaded: false })]), 62);
    expect(snap.state).toBe("loading");
    expect(snap.nodes[1]).toMatchObject({
      health: "loading",
      loadProgress: 0.25,
      layerStart: 21,
      layerEnd: 42,
    });
    builder.clearProgress();
    expect(builder.build(health("loading", [member("2", { loaded: false })]), 62).nodes[0].loadProgress).toBe(
      0,
    );
  });
});

describe("renderClusterHealth", () => {
  it("prints members, roles and the plan's layer ranges with byte figures", () => {
    const text = renderClusterHealth(health("ready", [member("1"), member("2")]));
    expect(text).toContain("state ready (serving)");
    expect(text).toContain("members (2):");
    expect(text).toMatch(/\* node-1 .*coordinator/);
    expect(text).toMatch(
      /stage 0: node-1 +layers \[0,21\) embed {2}weights 40\.0 GB \+ KV 1\.0 GB, needs 52\.0 GB of 180\.0 GB/,
    );
    expect(text).toMatch(/stage 2: node-3 +layers \[42,62\) head/);
  });
});
