// An impostor on the LAN (test/helpers/fake-node.ts, built from the project's wire code) in its own network
// namespace, next to two real `cluster up` nodes in two others (one bridge, Bonjour only, no --peer). It
// advertises the cluster's public id with the smallest node id, says Hello to the real nodes and answers theirs
// as attractively as it can, once speaking TLS with the certificate of ANOTHER cluster key (the real one cannot
// be made without the key) and once plaintext. The real nodes speak TLS by default off loopback, so no call
// reaches it at all (every handshake with it fails), it learns nothing, no real node follows it (it is never a
// member, never the coordinator), and the real nodes log it as refused while they serve. Needs root and
// iproute2; skips with the reason otherwise.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import { clusterIdOf, generateClusterKey } from "../../common/cluster-key.js";
import { packageRoot } from "../../common/paths.js";
import { type CliProcess, cliEntry, runCli } from "../helpers/cluster-up.js";
import { ip, must, netnsSkipReason } from "../helpers/netns.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const tag = randomBytes(3).toString("hex");
const API_KEY = "netns-impostor-api-key";
const FAKE = 2; // the third namespace holds the impostor
const IMPOSTOR_ID = "0000000000000000"; // test/helpers/fake-node.ts: the smallest id there is

/** One set of namespaces per case: `mode` names them and picks their subnet. */
function network(mode: "tls" | "plain") {
  const t = `${tag}${mode === "tls" ? "t" : "p"}`;
  return {
    bridgeNs: `si${t}br`,
    nodeNs: [1, 2, 3].map((i) => `si${t}n${i}`),
    address: (i: number) => `10.78.${mode === "tls" ? 0 : 1}.${i + 1}`,
    hostSide: (i: number) => `w${t}${i}`,
  };
}
type Network = ReturnType<typeof network>;

const reason = netnsSkipReason();
if (reason) console.warn(`skipping netns impostor test: ${reason}`);

function setUpNetwork({ bridgeNs, nodeNs, address, hostSide: hostSideOf }: Network): void {
  for (const ns of [bridgeNs, ...nodeNs]) must(["netns", "add", ns]);
  must(["-n", bridgeNs, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
  must(["-n", bridgeNs, "link", "set", "br0", "up"]);
  nodeNs.forEach((ns, i) => {
    const hostSide = hostSideOf(i);
    must(["link", "add", hostSide, "netns", bridgeNs, "type", "veth", "peer", "name", "eth0", "netns", ns]);
    must(["-n", bridgeNs, "link", "set", hostSide, "master", "br0"]);
    must(["-n", bridgeNs, "link", "set", hostSide, "up"]);
    must(["-n", ns, "link", "set", "lo", "up"]);
    must(["-n", ns, "addr", "add", `${address(i)}/24`, "dev", "eth0"]);
    must(["-n", ns, "link", "set", "eth0", "up"]);
    must(["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
  });
}

function tearDownNetwork({ bridgeNs, nodeNs }: Network): void {
  for (const ns of [...nodeNs, bridgeNs]) ip(["netns", "delete", ns]);
}

function health({ nodeNs, address }: Network, i: number): ClusterHealth | undefined {
  const url = `http://${address(i)}:8080/health`;
  const script =
    `const r = await fetch(${JSON.stringify(url)}).catch(() => undefined);` +
    `console.log(r ? await r.text() : "null");`;
  const r = spawnSync(
    "ip",
    ["netns", "exec", nodeNs[i], process.execPath, "--input-type=module", "-e", script],
    {
      encoding: "utf8",
      timeout: 30_000,
    },
  );
  try {
    return JSON.parse(r.stdout) ?? undefined;
  } catch {
    return undefined;
  }
}

interface FakeEvent {
  event: string;
  method?: string;
  metadata?: Record<string, string>;
  request?: Record<string, unknown>;
  code?: number;
  capabilities?: unknown;
  peer?: string;
}

describe.skipIf(reason !== undefined).each(["tls", "plain"] as const)(
  "an impostor node speaking %s in its own network namespace",
  (mode) => {
    const net = network(mode);
    const { nodeNs, address } = net;
    const procs: CliProcess[] = [];
    const homes: string[] = [];
    const fakeEvents: FakeEvent[] = [];
    const fakeLines: string[] = [];
    let stopFake = () => {};
    const key = generateClusterKey();

    beforeAll(async () => {
      cliEntry();
      setUpNetwork(net);
      const modelDir = await ensureModel("tiny", "tiny");
      for (const i of [0, 1]) {
        const home = mkdtempSync(join(tmpdir(), `impostor-node${i + 1}-`));
        homes.push(home);
        const args = ["up", "--model", modelDir, "--key", key, "--name", `real${i + 1}`, "--port", "7100"];
        args.push("--api-port", "8080", "--api-host", address(i), "--api-key", API_KEY, "--threads", "1");
        args.push("--memory-bandwidth", "50");
        procs.push(runCli(args, { STUDIO_CLUSTER_HOME: home }, ["ip", "netns", "exec", nodeNs[i]]));
      }
      // The cluster id is public (every node's TXT record carries it); the impostor is handed it to save a browse.
      const fakeScript = join(packageRoot(), "dist", "test", "helpers", "fake-node.js");
      const fakeArgs = [
        fakeScript,
        mode,
        clusterIdOf(key),
        address(FAKE),
        "7100",
        `${address(0)}:7100`,
        `${address(1)}:7100`,
      ];
      const fake = spawn("ip", ["netns", "exec", nodeNs[FAKE], process.execPath, ...fakeArgs], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      createInterface({ input: fake.stdout! }).on("line", (line) => {
        fakeLines.push(line);
        try {
          fakeEvents.push(JSON.parse(line) as FakeEvent);
        } catch {
          // not an event line
        }
      });
      createInterface({ input: fake.stderr! }).on("line", (line) => fakeLines.push(`stderr: ${line}`));
      stopFake = () => fake.kill("SIGKILL");
    });

    afterAll(async () => {
      stopFake();
      await Promise.all(procs.map((p) => p.stop("SIGKILL")));
      tearDownNetwork(net);
      for (const home of homes) rmSync(home, { recursive: true, force: true });
    });

    it("gets no call, learns nothing, is followed by no one, and is logged as refused while the real nodes serve", async () => {
      let views: Array<ClusterHealth | undefined> = [];
      const started = Date.now();
      const dump = () =>
        `views: ${JSON.stringify(views, null, 1)}\nfake:\n${fakeLines.slice(-40).join("\n")}\n${procs.map((p) => p.output()).join("\n")}`;
      // Both real nodes tried it (Bonjour, its Hellos): the checks below are about nodes that did.
      const probedByBoth = () =>
        [0, 1].every((i) => fakeEvents.some((e) => e.event === "connection" && e.peer?.includes(address(i))));
      const ready = () =>
        views.every((h) => h !== undefined && liveNodes(h).length === 2) &&
        views.some((h) => h?.state === "ready") &&
        probedByBoth();
      while (Date.now() - started < 60_000) {
        for (const p of procs) if (p.child.exitCode !== null) throw new Error(`a node exited:\n${dump()}`);
        views = [0, 1].map((i) => health(net, i));
        if (ready()) break;
        await new Promise((r) => setTimeout(r, 1000));
      }
      expect(ready(), dump()).toBe(true);
      // A few more seconds of the impostor's pestering (Bonjour re-announcements, its Hellos, its replays).
      await new Promise((r) => setTimeout(r, 5000));
      views = [0, 1].map((i) => health(net, i));

      // No one follows it: it is no member anywhere and the coordinator is the smallest real id.
      for (const h of views) {
        expect(
          liveNodes(h!).map((m) => m.id),
          dump(),
        ).not.toContain(IMPOSTOR_ID);
        expect(h!.coordinator?.id, dump()).not.toBe(IMPOSTOR_ID);
      }
      const realIds = liveNodes(views[0]!)
        .map((m) => m.id)
        .sort();
      expect(views.map((h) => h!.coordinator?.id)).toEqual([realIds[0], realIds[0]]);

      // It learned nothing: no call of a real node reached it (no handshake with it completes), its own Hellos
      // got nothing back, it captured nothing to replay, and the key appears nowhere in what it saw.
      const calls = fakeEvents.filter((e) => e.event === "call");
      expect(calls, dump()).toEqual([]);
      const realAddresses = [0, 1].map(address);
      const completed = fakeEvents.filter(
        (e) => e.event === "tls-connected" && realAddresses.some((a) => e.peer?.includes(a)),
      );
      expect(completed, "a TLS handshake of a real node with the impostor completed").toEqual([]);
      const hellos = fakeEvents.filter((e) => e.event === "hello-sent");
      expect(hellos.length, dump()).toBeGreaterThan(0);
      for (const e of hellos) expect(e.capabilities, JSON.stringify(e)).toBeNull();
      expect(fakeEvents.filter((e) => e.event === "replay")).toEqual([]);
      expect(fakeLines.join("\n")).not.toContain(key);

      // Both real nodes logged it as refused: its connections (another key's certificate, or plaintext from the
      // network) and, over TLS, their own probe of it (its certificate is not the cluster's).
      const fake = address(FAKE).replace(/\./g, "\\.");
      const why = mode === "tls" ? "TLS handshake failed" : "plaintext from the network";
      for (const p of procs) {
        expect(p.output(), dump()).toMatch(new RegExp(`REFUSED connection from ${fake}:\\d+: ${why}`));
        if (mode === "tls")
          expect(p.output(), dump()).toMatch(new RegExp(`REFUSED ${fake}:7100: TLS handshake failed`));
      }
    });
  },
);
