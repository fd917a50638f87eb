// Bonjour discovery with the real bonjour-service on this host's multicast, and the election rule.
import { afterEach, describe, expect, it } from "vitest";
import { BonjourDiscovery, type DiscoveredNode } from "../../cluster/discovery.js";
import { electCoordinator } from "../../cluster/election.js";
import { parseHostPort } from "../../cluster/membership.js";
import { clusterIdOf, generateClusterKey } from "../../common/cluster-key.js";
import { type Advertisement, advertiseNode } from "../../node-agent/advertise.js";

function waitFor<T>(what: string, check: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      const value = check();
      if (value !== undefined) {
        clearInterval(timer);
        resolve(value);
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(timer);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, 50);
  });
}

describe("election", () => {
  it("picks the live member with the smallest node id, whatever the order", () => {
    const members = [{ nodeId: "b2" }, { nodeId: "0f" }, { nodeId: "a1" }];
    expect(electCoordinator(members)?.nodeId).toBe("0f");
    expect(electCoordinator([...members].reverse())?.nodeId).toBe("0f");
    // The coordinator is lost: the next by the same rule takes over.
    expect(electCoordinator(members.filter((m) => m.nodeId !== "0f"))?.nodeId).toBe("a1");
    expect(electCoordinator([])).toBeUndefined();
  });
});

describe("parseHostPort", () => {
  it("accepts host:port and names a bad value", () => {
    expect(parseHostPort("10.0.0.2:7100")).toEqual({ host: "10.0.0.2", port: 7100 });
    expect(parseHostPort("[::1]:7100")).toEqual({ host: "[::1]", port: 7100 });
    expect(() => parseHostPort("10.0.0.2", "--peer")).toThrow('--peer "10.0.0.2" is not host:port');
    expect(() => parseHostPort("h:70000", "--peer")).toThrow(/not host:port/);
  });
});

describe("Bonjour discovery on this host", () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });

  it("finds nodes of its own cluster (not others), and sees them leave on goodbye", async () => {
    const key = generateClusterKey();
    const clusterId = clusterIdOf(key);
    const discovery = new BonjourDiscovery({ clusterId, requeryMs: 500 });
    cleanups.push(() => discovery.close());
    const seen: DiscoveredNode[] = [];
    const gone: DiscoveredNode[] = [];
    discovery.on("up", (n) => seen.push(n));
    discovery.on("down", (n) => gone.push(n));

    const ads: Advertisement[] = [];
    const nodeA = { nodeId: "aaaaaaaaaaaaaaaa", name: "alpha", grpcPort: 41001 };
    const nodeB = { nodeId: "bbbbbbbbbbbbbbbb", name: "beta", grpcPort: 41002 };
    for (const n of [nodeA, nodeB]) ads.push(advertiseNode({ ...n, clusterId, version: "0.1.0" }));
    // Another cluster on the same network: must be ignored.
    const stranger = advertiseNode({
      nodeId: "cccccccccccccccc",
      name: "stranger",
      grpcPort: 41003,
      clusterId: clusterIdOf(generateClusterKey()),
      version: "0.1.0",
    });
    cleanups.push(async () => {
      await Promise.all([...ads, stranger].map((a) => a.stop()));
    });

    await waitFor("both nodes", () => (discovery.nodes().length >= 2 ? true : undefined));
    const byId = new Map(discovery.nodes().map((n) => [n.nodeId, n]));
    expect([...byId.keys()].sort()).toEqual([nodeA.nodeId, nodeB.nodeId]);
    expect(byId.get(nodeA.nodeId)?.address).toMatch(/^\d+\.\d+\.\d+\.\d+:41001$/);
    expect(byId.get(nodeB.nodeId)?.address).toMatch(/:41002$/);
    expect(byId.get(nodeA.nodeId)?.clusterId).toBe(clusterId);
    expect(seen.some((n) => n.nodeId === "cccccccccccccccc")).toBe(false);

    // A clean shutdown sends a goodbye: the browser reports the node down at once.
    await ads[1].stop();
    await waitFor("beta to leave", () => (gone.some((n) => n.nodeId === nodeB.nodeId) ? true : undefined));
    expect(discovery.nodes().map((n) => n.nodeId)).toEqual([nodeA.nodeId]);
  });

  it("finds a node that was advertising before the browser started", async () => {
    const clusterId = clusterIdOf(generateClusterKey());
    const ad = advertiseNode({
      nodeId: "dddddddddddddddd",
      name: "early",
      grpcPort: 41004,
      clusterId,
      version: "x",
    });
    cleanups.push(() => ad.stop());
    await new Promise((r) => setTimeout(r, 500));
    const discovery = new BonjourDiscovery({ clusterId, requeryMs: 500 });
    cleanups.push(() => discovery.close());
    const node = await waitFor("the early node", () => discovery.nodes()[0]);
    expect(node.nodeId).toBe("dddddddddddddddd");
  });
});
