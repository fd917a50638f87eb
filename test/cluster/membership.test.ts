// Membership against real node-agent processes (dist/node-agent/main.js) on loopback: Hello with the key,
// Status as heartbeat, loss on silence (SIGSTOP) and on death (SIGKILL), re-admission, refusal of a node with
// another key, and the election's answer over each view.
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { electCoordinator } from "../../cluster/election.js";
import { type Member, Membership } from "../../cluster/membership.js";
import { clusterIdOf, generateClusterKey } from "../../common/cluster-key.js";
import { NodeClient } from "../../common/wire/client.js";
import { agentEntry, ensureModel } from "../helpers/pipeline-cluster.js";

interface Agent {
  nodeId: string;
  address: string;
  child: ChildProcess;
  log: string[];
}

function spawnAgent(modelDir: string, key: string, nodeId: string): Promise<Agent> {
  const args = [
    agentEntry(),
    "--model",
    modelDir,
    "--port",
    "0",
    "--node-id",
    nodeId,
    "--name",
    `node-${nodeId}`,
  ];
  args.push("--cluster-id", clusterIdOf(key));
  const child = spawn(process.execPath, args, {
    env: { ...process.env, STUDIO_CLUSTER_KEY: key },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const log: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (line) => log.push(line));
  return new Promise((resolve, reject) => {
    child.once("exit", (code, signal) =>
      reject(new Error(`agent ${nodeId} exited (${code ?? signal}):\n${log.join("\n")}`)),
    );
    createInterface({ input: child.stdout! }).once("line", (line) => {
      const { port } = JSON.parse(line) as { port: number };
      resolve({ nodeId, address: `127.0.0.1:${port}`, child, log });
    });
  });
}

function waitFor<T>(what: string, check: () => T | undefined, timeoutMs = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      const value = check();
      if (value !== undefined) {
        clearInterval(timer);
        resolve(value);
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(timer);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }
    }, 50);
  });
}

const ids = (members: Member[]) => members.map((m) => m.nodeId);

const HEARTBEAT_MS = 1500;

describe("membership over real node agents", () => {
  const key = generateClusterKey();
  const clusterId = clusterIdOf(key);
  const agents: Agent[] = [];
  const views: Membership[] = [];
  const logs: string[] = [];
  let modelDir = "";

  function view(self: Agent): Membership {
    const m = new Membership({
      nodeId: self.nodeId,
      clusterId,
      clusterKey: key,
      version: "test",
      grpcPort: Number(self.address.split(":")[1]),
      selfAddress: self.address,
      heartbeatTimeoutMs: HEARTBEAT_MS,
      retryMs: 300,
      log: (line) => logs.push(line),
    });
    views.push(m);
    m.addCandidate(self.address, "self");
    return m;
  }

  beforeAll(async () => {
    modelDir = await ensureModel("tiny", "tiny");
    for (const id of ["0a", "0b", "0c"]) agents.push(await spawnAgent(modelDir, key, id));
  });

  afterAll(async () => {
    await Promise.all(views.map((v) => v.close()));
    for (const a of agents) {
      a.child.kill("SIGCONT");
      a.child.kill("SIGKILL");
    }
  });

  it("admits every node of the cluster, with capabilities, and elects the smallest id", async () => {
    const [a, b, c] = agents;
    const m = view(a);
    m.addCandidate(b.address, "peer");
    // The same node under another spelling of its address: one member, not two.
    m.addCandidate(`localhost:${c.address.split(":")[1]}`, "peer");
    m.addCandidate(c.address, "bonjour");
    await waitFor("three members", () => (m.live().length === 3 ? true : undefined));
    expect(ids(m.live())).toEqual(["0a", "0b", "0c"]);
    const self = m.get("0a")!;
    expect(self.self).toBe(true);
    expect(self.capabilities.model?.num_layers).toBeGreaterThan(0);
    expect(self.capabilities.memory_total).toBeGreaterThan(0);
    expect(electCoordinator(m.live())?.nodeId).toBe("0a");
    // Heartbeats keep arriving.
    const before = m.get("0b")!.lastSeen;
    await waitFor("a heartbeat", () => (m.get("0b")!.lastSeen > before ? true : undefined), 3000);
  });

  it("never admits a node that holds another cluster key, and says why", async () => {
    const stranger = await spawnAgent(modelDir, generateClusterKey(), "00");
    agents.push(stranger);
    const m = views[0];
    m.addCandidate(stranger.address, "peer");
    await waitFor("the refusal", () =>
      logs.some(
        (l) => l.includes(`${stranger.address} (node 00,`) && l.includes("belongs to another cluster"),
      )
        ? true
        : undefined,
    );
    expect(ids(m.live())).not.toContain("00");
    // The stranger's handshake failed on our side, so it never got a signed call (it would have refused it).
    expect(stranger.log.filter((l) => l.includes("refused"))).toEqual([]);
  });

  it("drops a node whose heartbeat stops (SIGSTOP) and re-admits it when it answers again", async () => {
    const m = views[0];
    const b = agents[1];
    b.child.kill("SIGSTOP");
    const stoppedAt = Date.now();
    await waitFor("0b to be dropped", () => (m.get("0b") === undefined ? true : undefined), 10_000);
    // Within the heartbeat timeout plus a watchdog tick or two.
    expect(Date.now() - stoppedAt).toBeLessThan(5000);
    expect(ids(m.live())).toEqual(["0a", "0c"]);
    b.child.kill("SIGCONT");
    await waitFor("0b to come back", () => (m.get("0b") ? true : undefined), 10_000);
    expect(ids(m.live())).toEqual(["0a", "0b", "0c"]);
  });

  it("does not drop members when its own event loop was stalled past the heartbeat timeout", async () => {
    const m = views[0];
    const before = ids(m.live());
    const lost: string[] = [];
    const onChange = (members: Array<{ nodeId: string }>) => {
      for (const id of before) if (!members.some((x) => x.nodeId === id)) lost.push(id);
    };
    m.on("change", onChange);
    try {
      // A busy coordinator: 2x the heartbeat timeout without yielding (a huge prompt, a long GC).
      const until = Date.now() + 2 * HEARTBEAT_MS;
      while (Date.now() < until) {
        // spin
      }
      await new Promise((r) => setTimeout(r, HEARTBEAT_MS));
      expect(lost, "members dropped for our own stall").toEqual([]);
      expect(ids(m.live())).toEqual(before);
    } finally {
      m.off("change", onChange);
    }
  });

  it("keeps members' capabilities current (a node measures its bandwidth after it started)", async () => {
    const m = views[0];
    const c = agents[2];
    const client = new NodeClient(c.address, key);
    try {
      const fresh = await client.hello({});
      expect(fresh.capabilities?.memory_bandwidth_bps).toBeGreaterThan(0);
      await waitFor(
        "0c's capabilities to match its own answer",
        () =>
          m.get("0c")?.capabilities.memory_bandwidth_bps === fresh.capabilities?.memory_bandwidth_bps
            ? true
            : undefined,
        12_000,
      );
    } finally {
      client.close();
    }
  });

  it("hands the coordinator role to the next smallest id when the coordinator dies", async () => {
    const [a, b, c] = agents;
    // Node 0b's view of the cluster.
    const m = view(b);
    m.addCandidate(a.address, "peer");
    m.addCandidate(c.address, "peer");
    await waitFor("0b to see three members", () => (m.live().length === 3 ? true : undefined));
    expect(electCoordinator(m.live())?.nodeId).toBe("0a");
    a.child.kill("SIGKILL");
    await waitFor("0a to be dropped", () => (m.get("0a") === undefined ? true : undefined), 10_000);
    expect(electCoordinator(m.live())?.nodeId).toBe("0b");
    expect(ids(m.live())).toEqual(["0b", "0c"]);
  });
});
