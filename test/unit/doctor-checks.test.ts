// `cluster doctor`'s macOS branches and cross-node checks, on outputs recorded as macOS gives them (vm_stat and
// sysctl in test/fixtures/platform/, os.networkInterfaces() of a Mac Studio with a Thunderbolt bridge) and on
// cluster health as a node serves it. The Linux branches run for real in test/cluster/doctor.test.ts.

import { readFileSync } from "node:fs";
import type { NetworkInterfaceInfo } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  checkCluster,
  checkEngine,
  checkGpuLimit,
  checkInterfaces,
  checkMemory,
  checkMulticast,
  checkPeers,
  machinesNeeded,
  renderChecks,
} from "../../cli/doctor/checks.js";
import type { ClusterHealth, NodeView } from "../../cluster/health.js";
import { macFigures } from "../../node-agent/memory-gauge.js";

const GIB = 1024 ** 3;
const fixture = (name: string) =>
  readFileSync(join(import.meta.dirname, "..", "fixtures", "platform", name), "utf8");

const v4 = (address: string, internal = false): NetworkInterfaceInfo => ({
  address,
  netmask: "255.255.0.0",
  family: "IPv4",
  mac: "3a:0f:12:aa:bb:cc",
  internal,
  cidr: `${address}/16`,
});

/** os.networkInterfaces() on a Mac Studio on Ethernet with a Thunderbolt cable to another. */
const studioInterfaces: NodeJS.Dict<NetworkInterfaceInfo[]> = {
  lo0: [v4("127.0.0.1", true)],
  en0: [v4("192.168.1.20")],
  bridge0: [v4("169.254.33.7")],
};

describe("doctor on a Mac", () => {
  it("the engine: MLX on the GPU is ok; without MLX, or on its CPU, it fails with the install line", () => {
    const mac = { platform: "darwin" as const, arch: "arm64", backends: ["cpu", "mlx"] };
    expect(checkEngine({ ...mac, mlx: { version: "0.31.1", device: "gpu" } }).status).toBe("ok");
    const none = checkEngine({ ...mac, backends: ["cpu"], mlx: null });
    expect(none).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/brew install mlx.*npm rebuild/),
    });
    const cpu = checkEngine({ ...mac, mlx: { version: "0.31.1", device: "cpu" } });
    expect(cpu).toMatchObject({ status: "fail", fix: expect.stringMatching(/mlx\.metallib/) });
  });

  it("the engine elsewhere: names the cpu kernels' SIMD path, and warns when they run without SIMD", () => {
    const linux = { platform: "linux" as const, arch: "x64", backends: ["cpu"], mlx: null };
    expect(checkEngine({ ...linux, cpu: { simd: "avx2", int16: true, int8: true } })).toMatchObject({
      status: "ok",
      detail: expect.stringMatching(
        /cpu kernels avx2, int16 dots for 4\/8-bit weights, int8 inputs available for 4-bit weights/,
      ),
    });
    expect(checkEngine({ ...linux, cpu: { simd: "portable", int16: false, int8: false } })).toMatchObject({
      status: "warn",
      detail: expect.stringMatching(/cpu kernels portable; .*without SIMD/),
      fix: expect.stringMatching(/npm rebuild/),
    });
  });

  it("interfaces: the Thunderbolt bridge is found; without it, how to turn it on", () => {
    expect(checkInterfaces("darwin", studioInterfaces)).toMatchObject({
      status: "ok",
      detail: expect.stringMatching(/Thunderbolt Bridge bridge0 at 169\.254\.33\.7/),
    });
    const { bridge0: _, ...noBridge } = studioInterfaces;
    expect(checkInterfaces("darwin", noBridge)).toMatchObject({
      status: "warn",
      fix: expect.stringMatching(/Thunderbolt Bridge.*--interface bridge0/),
    });
  });

  it("no multicast and unreachable peers point at the Local Network permission", () => {
    const multicast = checkMulticast("darwin", { seen: false, elapsedMs: 4000, nodes: [] });
    expect(multicast).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/Privacy & Security > Local Network/),
    });
    const peers = checkPeers("darwin", [
      { address: "192.168.1.21:7100", via: "--peer", error: "EHOSTUNREACH" },
    ]);
    expect(peers).toMatchObject({ status: "fail", fix: expect.stringMatching(/Local Network/) });
    // On Linux the same failures are a firewall's or a route's.
    expect(checkMulticast("linux", { seen: false, elapsedMs: 4000, nodes: [] }).fix).toMatch(/UDP 5353/);
  });

  it("memory and the GPU wired limit from vm_stat and sysctl: MiniMax-M2.1 on 96 GB and 192 GB Macs", () => {
    const gb192 = macFigures(fixture("macos-vm_stat-192gb.txt"), String(192 * GIB), "0");
    // 8-bit, 64k context on two of these: 242.9 GB of weights + 16.6 GB of KV.
    const eightBit = {
      weightBytes: 242.9e9,
      kvBytes: 16.6e9,
      contextTokens: 65_536,
      backend: "mlx" as const,
    };
    const memory = checkMemory(gb192.reading, eightBit);
    expect(memory).toMatchObject({
      status: "warn",
      detail: expect.stringMatching(/about 2 machines like this one/),
    });
    const usable = gb192.reading.availableBytes - (GIB + Math.round(192 * GIB * 0.05));
    expect(checkGpuLimit(gb192.limit, eightBit, machinesNeeded(eightBit, usable)).status).toBe("ok");

    // 4-bit, 128k context on two 96 GB Macs: over the default limit; the fix is the sysctl line.
    const gb96 = {
      bytes: 0.75 * 96 * GIB,
      source: "estimate: 75% of memory (iogpu.wired_limit_mb is 0)",
      raised: false,
    };
    const fourBit = {
      weightBytes: 128.6e9,
      kvBytes: 33.3e9,
      contextTokens: 131_072,
      backend: "mlx" as const,
    };
    const over = checkGpuLimit(gb96, fourBit, 2);
    expect(over).toMatchObject({
      status: "fail",
      fix: expect.stringMatching(/^sudo sysctl iogpu\.wired_limit_mb=\d+ \(it resets at reboot\)/),
    });
    expect(checkGpuLimit(undefined, fourBit, 2).status).toBe("skip");
  });
});

function node(name: string, version: string, clockSkewMs?: number): NodeView {
  return { name, version, clockSkewMs } as NodeView;
}

describe("doctor across the cluster", () => {
  const health = (nodes: NodeView[]) => ({ state: "ready", nodes }) as unknown as ClusterHealth;

  it("versions must match ours and each other; clocks within 2 s", () => {
    expect(
      checkCluster("http://a", health([node("a", "0.1.0", 3), node("b", "0.1.0", -40)]), "0.1.0").status,
    ).toBe("ok");
    const versions = checkCluster("http://a", health([node("a", "0.1.0"), node("b", "0.2.0")]), "0.1.0");
    expect(versions).toMatchObject({ status: "fail", detail: expect.stringMatching(/0\.2\.0 on b/) });
    const clocks = checkCluster(
      "http://a",
      health([node("a", "0.1.0", 0), node("b", "0.1.0", 7300)]),
      "0.1.0",
    );
    expect(clocks).toMatchObject({ status: "warn", detail: expect.stringMatching(/b 7300 ms/) });
    expect(checkCluster("http://a", { error: "ECONNREFUSED" }, "0.1.0").status).toBe("skip");
  });

  it("prints one line per check and the fix under it", () => {
    const text = renderChecks([
      checkMulticast("darwin", { seen: true, elapsedMs: 12, nodes: [] }),
      checkPeers("linux", [{ address: "10.0.0.2:7100", via: "--peer", error: "ECONNREFUSED" }]),
    ]);
    expect(text).toMatch(/^ok {4}Bonjour \(multicast\) {2}our own announcement came back in 12 ms\n/);
    expect(text).toMatch(/FAIL {2}Other nodes .*ECONNREFUSED\n +fix: start cluster up/);
    expect(text.trim().endsWith("1 check(s) failed")).toBe(true);
  });
});
