// A partial partition, on three `cluster up` processes in three network namespaces on one bridge: n2 and n3 each
// `--peer n1` (the natural set-up), ids fixed so that n1 < n2 < n3. Once they serve as one cluster, blackhole
// routes cut n1 and n2 from each other while both still reach n3. n1 and n2 may then each coordinate, but n3
// serves one of them (n1, its own choice) and refuses the other's LoadShard: its plan must not alternate
// between the two (before coordinator epochs both loaded their plans onto it in turn, every 5-10 s). After the
// cut heals, all three serve as one cluster again.
// Needs root and iproute2; skips with the reason otherwise. Namespaces are removed in afterAll whatever happens.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, cliEntry, runCli } from "../helpers/cluster-up.js";
import { ip, must, netnsSkipReason } from "../helpers/netns.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const tag = randomBytes(3).toString("hex");
const bridgeNs = `sp${tag}br`;
const nodeNs = [1, 2, 3].map((i) => `sp${tag}n${i}`);
const address = (i: number) => `10.78.0.${i + 1}`;
const ids = ["00000000000000a1", "00000000000000b2", "00000000000000c3"];
const API_KEY = "netns-partition-api-key";

const reason = netnsSkipReason();
if (reason) console.warn(`skipping netns partition test: ${reason}`);

function setUpNetwork(): void {
  for (const ns of [bridgeNs, ...nodeNs]) must(["netns", "add", ns]);
  must(["-n", bridgeNs, "link", "add", "br0", "type", "bridge"]);
  must(["-n", bridgeNs, "link", "set", "br0", "up"]);
  nodeNs.forEach((ns, i) => {
    const hostSide = `w${tag}${i}`;
    must(["link", "add", hostSide, "netns", bridgeNs, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    must(["-n", bridgeNs, "link", "set", hostSide, "master", "br0"]);
    must(["-n", bridgeNs, "link", "set", hostSide, "up"]);
    must(["-n", ns, "link", "set", "lo", "up"]);
    must(["-n", ns, "addr", "add", `${address(i)}/24`, "dev", "eth0"]);
    must(["-n", ns, "link", "set", "eth0", "up"]);
  });
}

function tearDownNetwork(): void {
  for (const ns of [...nodeNs, bridgeNs]) ip(["netns", "delete", ns]);
}

/** Cuts (or heals) n1 <-> n2 both ways; both keep reaching n3. */
function cut(on: boolean): void {
  const verb = on ? "add" : "del";
  must(["-n", nodeNs[0], "route", verb, "blackhole", `${address(1)}/32`]);
  must(["-n", nodeNs[1], "route", verb, "blackhole", `${address(0)}/32`]);
}

/** A node's /health, fetched from inside its namespace. */
function health(i: number): ClusterHealth | undefined {
  const url = `http://${address(i)}:8080/health`;
  const script =
    `const r = await fetch(${JSON.stringify(url)}, { headers: { authorization: "Bearer ${API_KEY}" }, ` +
    `signal: AbortSignal.timeout(3000) }).catch(() => undefined);` +
    `console.log(r ? await r.text() : "null");`;
  const r = spawnSync(
    "ip",
    ["netns", "exec", nodeNs[i], process.execPath, "--input-type=module", "-e", script],
    {
      encoding: "utf8",
      timeout: 20_000,
    },
  );
  if (r.status !== 0) return undefined;
  return JSON.parse(r.stdout) ?? undefined;
}

const liveIds = (h: ClusterHealth | undefined) =>
  h
    ? liveNodes(h)
        .map((n) => n.id)
        .sort()
        .join()
    : "";

describe.skipIf(reason !== undefined)("a partial partition between two of three nodes", () => {
  const procs: CliProcess[] = [];
  const homes: string[] = [];
  const outputs = () => procs.map((p) => p.output()).join("\n");

  /** Polls the nodes' health until `done` accepts them; fails with everything they printed. */
  async function until(what: string, done: (views: Array<ClusterHealth | undefined>) => boolean, ms: number) {
    const started = Date.now();
    let views: Array<ClusterHealth | undefined> = [];
    while (Date.now() - started < ms) {
      for (const p of procs) if (p.child.exitCode !== null) throw new Error(`a node exited:\n${outputs()}`);
      views = [0, 1, 2].map(health);
      if (done(views)) return views;
      await new Promise((r) => setTimeout(r, 1000));
    }
    throw new Error(`timed out waiting for ${what}: ${JSON.stringify(views).slice(0, 3000)}\n${outputs()}`);
  }

  /** The plans n3's node agent loaded ("plan <id>: layers ..." lines). */
  const n3Plans = () => procs[2].stderr.filter((l) => /\] plan [0-9a-f]+: layers /.test(l));

  beforeAll(async () => {
    cliEntry(); // fails early with a clear message when dist/ is missing
    setUpNetwork();
    const modelDir = await ensureModel("tiny", "tiny");
    const key = generateClusterKey();
    nodeNs.forEach((ns, i) => {
      const home = mkdtempSync(join(tmpdir(), `netns-partition-n${i + 1}-`));
      homes.push(home);
      mkdirSync(join(home, "nodes"), { recursive: true, mode: 0o700 });
      writeFileSync(join(home, "nodes", `n${i + 1}.id`), `${ids[i]}\n`);
      const args = ["up", "--model", modelDir, "--key", key, "--name", `n${i + 1}`, "--port", "7100"];
      args.push("--interface", address(i), "--no-bonjour", "--threads", "1", "--memory-bandwidth", "50");
      args.push("--api-port", "8080", "--api-host", address(i), "--api-key", API_KEY);
      if (i > 0) args.push("--peer", `${address(0)}:7100`);
      procs.push(runCli(args, { STUDIO_CLUSTER_HOME: home }, ["ip", "netns", "exec", ns]));
    });
  });

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.stop("SIGKILL")));
    tearDownNetwork();
    for (const home of homes) rmSync(home, { recursive: true, force: true });
  });

  it("keeps the third node's plan steady while two coordinators see it, and serves as one again after", async () => {
    const all = ids.join();
    await until(
      "one cluster of three",
      (v) =>
        v.every((h) => liveIds(h) === all && h?.coordinator?.id === ids[0]) &&
        v[0]?.state === "ready" &&
        v[0].plan?.stages.length === 3,
      90_000,
    );

    cut(true);
    // n1 re-plans on the nodes it still reaches; n3 still elects n1 and follows it.
    await until(
      "n1 to serve with n3",
      (v) =>
        v[0]?.state === "ready" &&
        v[0].plan?.stages.map((s) => s.nodeId).join() === [ids[0], ids[2]].join() &&
        v[2]?.coordinator?.id === ids[0],
      60_000,
    );
    // n2 sees only n3 and itself: it coordinates, and n3 refuses its plan.
    const refusedN2 = new RegExp(`REFUSED LoadShard of plan [0-9a-f]+ from coordinator ${ids[1]} `);
    await until("n3 to refuse n2's plan", () => procs[2].stderr.some((l) => refusedN2.test(l)), 60_000);
    const plansBefore = n3Plans().length;
    await new Promise((r) => setTimeout(r, 20_000));
    expect(n3Plans().slice(plansBefore), outputs()).toEqual([]);
    const during = health(2);
    expect(during?.coordinator?.id).toBe(ids[0]);
    expect(health(0)?.state).toBe("ready");
    // n3 kept serving n1, never n2.
    expect(procs[2].stderr.filter((l) => l.includes(`now serving coordinator ${ids[1]}`))).toEqual([]);

    cut(false);
    await until(
      "one cluster of three again",
      (v) =>
        v.every((h) => liveIds(h) === all && h?.coordinator?.id === ids[0] && h.ok) &&
        v[0]?.state === "ready" &&
        v[0].plan?.stages.length === 3,
      90_000,
    );
  }, 300_000);
});
