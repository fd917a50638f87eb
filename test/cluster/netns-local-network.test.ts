// What a node logs when it cannot reach a --peer: on macOS 15+, a process without the Local Network permission
// gets EHOSTUNREACH / ENETUNREACH from connect() to LAN addresses, and a launchd service only ever logs that
// line, so on darwin the line says how to grant the permission. The connects here are real: a network namespace
// whose routing table answers one block with "unreachable" and has no route to another, and a real Membership
// (dist/cluster/membership.js) probing --peer candidates there over gRPC, once as darwin and once as linux.
// Needs root and iproute2; skips with the reason otherwise.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LOCAL_NETWORK_GRANT, localNetworkErrno } from "../../common/local-network.js";
import { packageRoot } from "../../common/paths.js";
import { must, netnsSkipReason } from "../helpers/netns.js";

const ns = `ln${randomBytes(3).toString("hex")}`;
const reason = netnsSkipReason();
if (reason) console.warn(`skipping the Local Network hint test: ${reason}`);

const UNREACHABLE = "198.51.100.7:7070"; // its block routed "unreachable": EHOSTUNREACH
const NO_ROUTE = "192.0.2.7:7070"; // no route at all: ENETUNREACH
const REFUSED = "127.0.0.1:1"; // reachable, nothing listening: ECONNREFUSED (no permission would explain it)

/** Every log line a Membership on `platform` writes while probing the three candidates once, from inside ns. */
function probeLines(platform: NodeJS.Platform): string[] {
  const membership = join(packageRoot(), "dist", "cluster", "membership.js");
  const script = `
    const { Membership } = await import(${JSON.stringify(membership)});
    const lines = [];
    const m = new Membership({
      nodeId: "00000000000000a1", clusterId: "c", clusterKey: "k".repeat(32), version: "test", grpcPort: 7070,
      selfAddress: "127.0.0.1:7070", retryMs: 60000, platform: ${JSON.stringify(platform)},
      log: (line) => lines.push(line),
    });
    for (const a of ${JSON.stringify([UNREACHABLE, NO_ROUTE, REFUSED])}) m.addCandidate(a, "peer");
    const until = Date.now() + 15000;
    while (lines.filter((l) => l.includes("not reachable")).length < 3 && Date.now() < until)
      await new Promise((r) => setTimeout(r, 50));
    await m.close();
    console.log(JSON.stringify(lines));`;
  const r = spawnSync("ip", ["netns", "exec", ns, process.execPath, "--input-type=module", "-e", script], {
    encoding: "utf8",
    timeout: 30_000,
  });
  if (r.status !== 0) throw new Error(`the probe in ${ns} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "[]") as string[];
}

const lineFor = (lines: string[], address: string) =>
  lines.find((l) => l.includes(`${address} is not reachable`));

describe.skipIf(reason !== undefined)("a --peer the Local Network permission would block", () => {
  beforeAll(() => {
    must(["netns", "add", ns]);
    must(["-n", ns, "link", "set", "lo", "up"]);
    must(["-n", ns, "route", "add", "unreachable", "198.51.100.0/24"]);
  });
  afterAll(() => {
    spawnSync("ip", ["netns", "delete", ns]);
  });

  it("on darwin, EHOSTUNREACH and ENETUNREACH come with the permission's fix; a refused port does not", () => {
    const lines = probeLines("darwin");
    for (const [address, errno] of [
      [UNREACHABLE, "EHOSTUNREACH"],
      [NO_ROUTE, "ENETUNREACH"],
    ]) {
      const line = lineFor(lines, address);
      expect(line, lines.join("\n")).toContain(errno);
      expect(line).toContain(LOCAL_NETWORK_GRANT);
    }
    const refused = lineFor(lines, REFUSED);
    expect(refused, lines.join("\n")).toContain("ECONNREFUSED");
    expect(refused).not.toContain("Local Network");
  });

  it("on linux the same failures say only that the address is unreachable", () => {
    const lines = probeLines("linux");
    expect(lineFor(lines, UNREACHABLE), lines.join("\n")).toContain("EHOSTUNREACH");
    expect(lines.filter((l) => l.includes("Local Network"))).toEqual([]);
  });
});

describe("localNetworkErrno", () => {
  it("names the codes a missing permission gives, as whole words only", () => {
    expect(localNetworkErrno("connect EHOSTUNREACH 10.0.0.2:7070")).toBe("EHOSTUNREACH");
    expect(localNetworkErrno("EPERM")).toBe("EPERM");
    expect(localNetworkErrno("connect ENETUNREACH 10.0.0.2:7070")).toBe("ENETUNREACH");
    expect(localNetworkErrno("connect ECONNREFUSED 10.0.0.2:7070")).toBeUndefined();
    expect(localNetworkErrno("timeout")).toBeUndefined();
    expect(localNetworkErrno("XEPERMX")).toBeUndefined();
  });
});
