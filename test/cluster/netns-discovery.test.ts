// Three machines simulated by three network namespaces on one bridge (10.77.0.0/24 exists only inside them):
// `cluster up` in each, with NO --peer, must find the others over Bonjour multicast alone, elect one
// coordinator, plan three stages and generate through the HTTP API (directly and forwarded by another node).
// Every API listens on its namespace's loopback only (the default --api-host): a follower relays over the gRPC
// plane, the one way between namespaces it has. On the same cluster, asked of a follower: `cluster status` (text
// and --json) shows the coordinator's plan and live figures, `cluster bench` (its smallest run) prints its JSON
// line, and the follower's dashboard (page, snapshot, WebSocket) serves the coordinator's picture; with the
// coordinator's API cut off from its own agent, status says so and bench fails saying why.
// Needs root and iproute2; skips with the reason otherwise. Namespaces are removed in afterAll whatever happens.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import type { ClusterSnapshot } from "../../cluster/snapshot.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, cliEntry, runCli } from "../helpers/cluster-up.js";
import { ip, must, netnsSkipReason } from "../helpers/netns.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const tag = randomBytes(3).toString("hex");
const bridgeNs = `sc${tag}br`;
const nodeNs = [1, 2, 3].map((i) => `sc${tag}n${i}`);
const address = (i: number) => `10.77.0.${i + 1}`;
const API_KEY = "netns-test-api-key";

const reason = netnsSkipReason();
if (reason) console.warn(`skipping netns discovery test: ${reason}`);

function setUpNetwork(): void {
  for (const ns of [bridgeNs, ...nodeNs]) must(["netns", "add", ns]);
  must(["-n", bridgeNs, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
  must(["-n", bridgeNs, "link", "set", "br0", "up"]);
  nodeNs.forEach((ns, i) => {
    const hostSide = `v${tag}${i}`;
    must(["link", "add", hostSide, "netns", bridgeNs, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    must(["-n", bridgeNs, "link", "set", hostSide, "master", "br0"]);
    must(["-n", bridgeNs, "link", "set", hostSide, "up"]);
    must(["-n", ns, "link", "set", "lo", "up"]);
    must(["-n", ns, "addr", "add", `${address(i)}/24`, "dev", "eth0"]);
    must(["-n", ns, "link", "set", "eth0", "up"]);
    // No default route in the namespace: mDNS needs to know where multicast goes.
    must(["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
  });
}

function tearDownNetwork(): void {
  for (const ns of [...nodeNs, bridgeNs]) ip(["netns", "delete", ns]);
}

/** Runs a small script with node inside a namespace and returns its stdout (JSON by convention). */
function nsNode(ns: string, script: string): string {
  const r = spawnSync("ip", ["netns", "exec", ns, process.execPath, "--input-type=module", "-e", script], {
    encoding: "utf8",
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`node in ${ns} failed: ${r.stderr}`);
  return r.stdout;
}

/** Each node's API, on its own namespace's loopback. */
const API_URL = "http://127.0.0.1:8080";

function health(i: number): ClusterHealth | undefined {
  const url = `${API_URL}/health`;
  const out = nsNode(
    nodeNs[i],
    `const r = await fetch(${JSON.stringify(url)}, { headers: { authorization: "Bearer ${API_KEY}" } }).catch(() => undefined);` +
      `console.log(r ? await r.text() : "null");`,
  );
  return JSON.parse(out) ?? undefined;
}

interface ChatResult {
  status: number;
  text: string;
  relayedFrom: string | null;
  /** Set when the API could not be reached at all. */
  error?: string;
}

function chat(ns: string, apiUrl: string, prompt: string): ChatResult {
  const body = { messages: [{ role: "user", content: prompt }], max_tokens: 8, temperature: 0 };
  const out = nsNode(
    ns,
    `const r = await fetch(${JSON.stringify(`${apiUrl}/v1/chat/completions`)}, { method: "POST", ` +
      `headers: { "content-type": "application/json", authorization: "Bearer ${API_KEY}" }, ` +
      `body: ${JSON.stringify(JSON.stringify(body))}, signal: AbortSignal.timeout(5000) }).catch((e) => e);` +
      `if (r instanceof Error) { console.log(JSON.stringify({ status: 0, text: "", relayedFrom: null, error: String(r.cause ?? r) })); process.exit(0); }` +
      `const b = await r.json(); const m = b.choices?.[0]?.message ?? {};` +
      `console.log(JSON.stringify({ status: r.status, text: (m.reasoning_content ?? "") + "|" + (m.content ?? ""), ` +
      `relayedFrom: r.headers.get("x-studio-cluster-relayed-from"), body: b }));`,
  );
  return JSON.parse(out) as ChatResult;
}

/** The real CLI inside a namespace: `node dist/cli/main.js ARGS`. */
function nsCli(ns: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync("ip", ["netns", "exec", ns, process.execPath, cliEntry(), ...args], {
    encoding: "utf8",
    timeout: 240_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** GET `path` of the namespace's own API with the key: status, content type and body. */
function nsGet(ns: string, path: string, headers: Record<string, string> = {}) {
  const out = nsNode(
    ns,
    `const r = await fetch(${JSON.stringify(`${API_URL}${path}`)}, { redirect: "manual", headers: ${JSON.stringify(headers)} });` +
      `console.log(JSON.stringify({ status: r.status, type: r.headers.get("content-type"), body: await r.text() }));`,
  );
  return JSON.parse(out) as { status: number; type: string | null; body: string };
}

/** The first message of the namespace's dashboard WebSocket. */
function nsLiveMessage(ns: string): { type: string; snapshot?: ClusterSnapshot; message?: string } {
  const out = nsNode(
    ns,
    `const { WebSocket } = await import("ws");` +
      `const ws = new WebSocket(${JSON.stringify(`ws://127.0.0.1:8080/dashboard/live?key=${API_KEY}`)});` +
      `ws.on("message", (d) => { console.log(String(d)); process.exit(0); });` +
      `ws.on("error", (e) => { console.log(JSON.stringify({ type: "failed", message: String(e) })); process.exit(0); });`,
  );
  return JSON.parse(out);
}

describe.skipIf(reason !== undefined)("Bonjour discovery across three network namespaces", () => {
  const procs: CliProcess[] = [];
  const homes: string[] = [];
  // Set by the first test, which brings the cluster up; the others ask a follower about it.
  let coordinatorId = "";
  let coordinatorIndex = -1;
  let followerIndex = -1;

  beforeAll(async () => {
    cliEntry(); // fails early with a clear message when dist/ is missing
    setUpNetwork();
    const modelDir = await ensureModel("tiny", "tiny");
    const key = generateClusterKey();
    nodeNs.forEach((ns, i) => {
      const home = mkdtempSync(join(tmpdir(), `netns-node${i + 1}-`));
      homes.push(home);
      const args = ["up", "--model", modelDir, "--key", key, "--name", `node${i + 1}`, "--port", "7100"];
      // The default --api-host (127.0.0.1): nothing outside the namespace reaches the API.
      args.push("--api-port", "8080", "--api-key", API_KEY, "--threads", "1");
      // Equal machines: a measured bandwidth on two busy cores is noise, and the split should not depend on it.
      args.push("--memory-bandwidth", "50");
      procs.push(runCli(args, { STUDIO_CLUSTER_HOME: home }, ["ip", "netns", "exec", ns]));
    });
  });

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop("SIGKILL")));
    tearDownNetwork();
    for (const home of homes) rmSync(home, { recursive: true, force: true });
  });

  it("find each other without --peer, elect one coordinator, plan three stages and generate", async () => {
    let views: Array<ClusterHealth | undefined> = [];
    const started = Date.now();
    const agreed = () =>
      views.every((h) => h !== undefined && liveNodes(h).length === 3) &&
      new Set(views.map((h) => h?.coordinator?.id)).size === 1 &&
      views.some((h) => h?.state === "ready" && h.plan?.stages.length === 3);
    while (Date.now() - started < 60_000) {
      for (const p of procs)
        if (p.child.exitCode !== null)
          throw new Error(`a node exited:\n${procs.map((q) => q.output()).join("\n")}`);
      views = [0, 1, 2].map(health);
      if (agreed()) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect(
      agreed(),
      `views: ${JSON.stringify(views, null, 1)}\n${procs.map((p) => p.output()).join("\n")}`,
    ).toBe(true);
    coordinatorId = views[0]!.coordinator!.id;
    coordinatorIndex = views.findIndex((h) => h!.node.id === coordinatorId);
    const coordinator = views[coordinatorIndex]!;
    // Every member was found at its namespace address, by Bonjour alone.
    expect(
      liveNodes(coordinator)
        .map((m) => m.address.split(":")[0])
        .sort(),
    ).toEqual([0, 1, 2].map(address));
    expect(coordinatorId).toBe([...liveNodes(coordinator).map((m) => m.id)].sort()[0]);
    const stages = coordinator.plan!.stages;
    expect(stages.map((s) => [s.layerStart, s.layerEnd])).toEqual([
      [0, 2],
      [2, 4],
      [4, 6],
    ]);
    expect(new Set(stages.map((s) => s.nodeId)).size).toBe(3);
    for (const h of views) expect(h!.state).toBe(h!.node.id === coordinatorId ? "ready" : "following");

    const direct = chat(nodeNs[coordinatorIndex], API_URL, "Three machines, one model.");
    expect(direct.status, JSON.stringify(direct)).toBe(200);
    expect(direct.relayedFrom).toBeNull();
    followerIndex = (coordinatorIndex + 1) % 3;
    // The coordinator's API is out of the follower's reach: only the gRPC plane joins them.
    const unreachable = chat(nodeNs[followerIndex], `http://${address(coordinatorIndex)}:8080`, "x");
    expect(unreachable.status, JSON.stringify(unreachable)).toBe(0);
    const forwarded = chat(nodeNs[followerIndex], API_URL, "Three machines, one model.");
    expect(forwarded.status, JSON.stringify(forwarded)).toBe(200);
    expect(forwarded.text).toBe(direct.text);
    expect(forwarded.relayedFrom).toContain(`${coordinatorId}) at ${address(coordinatorIndex)}:7100`);
  });
  it("a follower's `cluster status` and dashboard show the coordinator's plan and live figures", () => {
    expect(followerIndex, "the cluster came up in the first test").toBeGreaterThanOrEqual(0);
    const follower = nodeNs[followerIndex];
    const text = nsCli(follower, ["status", "--api", API_URL, "--api-key", API_KEY]);
    expect(text.status, `${text.stdout}\n${text.stderr}`).toBe(0);
    expect(text.stderr).not.toContain("no live figures");
    expect(text.stdout).toMatch(/this node: node\d \(\w+\), node,/);
    // The coordinator by its gRPC address, not its API's URL (on its own loopback, unreachable from here).
    expect(text.stdout).toContain(
      `coordinator: node${coordinatorIndex + 1} (${coordinatorId}) at ${address(coordinatorIndex)}:7100 (gRPC)`,
    );
    expect(text.stdout).toMatch(/plan \S+ \(cpu, context \d+ tokens, 3 stages\):/);
    for (const layers of ["[0,2)", "[2,4)", "[4,6)"]) expect(text.stdout).toContain(`layers ${layers}`);
    // The two generations of the first test, counted where they ran: the coordinator.
    expect(text.stdout).toMatch(/throughput [\d.]+ tok\/s/);
    expect(text.stdout).toMatch(/recent requests: [2-9]/);

    const json = nsCli(follower, ["status", "--api", API_URL, "--api-key", API_KEY, "--json"]);
    expect(json.status, json.stderr).toBe(0);
    const status = JSON.parse(json.stdout) as ClusterHealth & { live?: ClusterSnapshot };
    expect(status.node.role).toBe("node");
    expect(status.plan?.stages).toHaveLength(3);
    expect(status.live?.coordinatorId).toBe(coordinatorId);
    expect(status.live?.recent.length).toBeGreaterThanOrEqual(2);
    expect(status.live?.nodes.filter((n) => n.health !== "lost")).toHaveLength(3);

    // The dashboard: the page itself (no redirect to the coordinator's loopback), the coordinator's snapshot.
    const page = nsGet(follower, `/?key=${API_KEY}`);
    expect(page.status).toBe(200);
    expect(page.type).toMatch(/^text\/html/);
    const snapshot = nsGet(follower, "/dashboard/snapshot.json", { authorization: `Bearer ${API_KEY}` });
    expect(snapshot.status, snapshot.body).toBe(200);
    const fromFollower = JSON.parse(snapshot.body) as ClusterSnapshot;
    expect(fromFollower.plan?.stages).toHaveLength(3);
    expect(fromFollower.recent.length).toBeGreaterThanOrEqual(2);
    // Still under the follower's key.
    expect(nsGet(follower, "/dashboard/snapshot.json").status).toBe(401);
    const live = nsLiveMessage(follower);
    expect(live.type, JSON.stringify(live)).toBe("snapshot");
    expect(live.snapshot?.coordinatorId).toBe(coordinatorId);
    expect(live.snapshot?.plan?.stages).toHaveLength(3);
    expect(live.snapshot?.recent.length).toBeGreaterThanOrEqual(2);
    // On the coordinator, a forged relay secret still gets nothing.
    const forged = nsGet(nodeNs[coordinatorIndex], "/dashboard/snapshot.json", {
      "x-studio-cluster-relay": "forged",
      "x-studio-cluster-forwarded": "1",
    });
    expect(forged.status).toBe(401);
  }, 120_000);

  it("`cluster bench` asked of a follower measures the cluster and prints its JSON line", () => {
    expect(followerIndex, "the cluster came up in the first test").toBeGreaterThanOrEqual(0);
    // Its smallest run: one run per figure, 2-token decodes, one small prompt, a small agent turn.
    const args = ["bench", "--api", API_URL, "--api-key", API_KEY, "--tokens", "2", "--prompts", "32"];
    const run = nsCli(nodeNs[followerIndex], [...args, "--agent", "64", "--runs", "1"]);
    expect(run.status, `${run.stdout}\n${run.stderr}`).toBe(0);
    const figures = JSON.parse(run.stdout.trim().split("\n").at(-1) ?? "");
    expect(figures.bench).toBe("cluster");
    expect(figures.nodes.map((n: { name: string }) => n.name).sort()).toEqual(["node1", "node2", "node3"]);
    expect(figures.decode_tps_1).toBeGreaterThan(0);
    expect(figures.hop_p50_us).toHaveLength(2);
  }, 300_000);

  it("with the coordinator's API cut off, a follower's status says why and bench fails saying so", () => {
    expect(followerIndex, "the cluster came up in the first test").toBeGreaterThanOrEqual(0);
    // The coordinator's agent reaches its API on its namespace's loopback: without 127.0.0.1 there, every relay
    // fails while the gRPC plane (and so membership) stays whole.
    must(["-n", nodeNs[coordinatorIndex], "addr", "del", "127.0.0.1/8", "dev", "lo"]);
    try {
      const follower = nodeNs[followerIndex];
      const text = nsCli(follower, ["status", "--api", API_URL, "--api-key", API_KEY]);
      expect(text.status, `${text.stdout}\n${text.stderr}`).toBe(0);
      // What the follower knows itself, then why there is no plan nor live figures.
      expect(text.stdout).toMatch(/nodes \(3, 6 layers\)/);
      expect(text.stdout).toContain("plan: none");
      expect(text.stdout).toMatch(
        new RegExp(
          `live figures: unavailable: .*the coordinator node\\d \\(${coordinatorId}\\) .*cannot be reached`,
        ),
      );
      const bench = nsCli(follower, ["bench", "--api", API_URL, "--api-key", API_KEY, "--runs", "1"]);
      expect(bench.status).toBe(1);
      expect(bench.stderr).toMatch(
        new RegExp(
          `^cluster bench: cannot read the coordinator node\\d \\(${coordinatorId}\\)'s plan .*cannot be reached`,
          "m",
        ),
      );
    } finally {
      must(["-n", nodeNs[coordinatorIndex], "addr", "add", "127.0.0.1/8", "dev", "lo"]);
    }
  }, 120_000);
});
