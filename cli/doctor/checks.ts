// `cluster doctor`'s judgements: each takes what was read off the machine (or recorded on another platform, in
// the tests) and says ok / warn / fail / skip, with a fix for anything not ok. No I/O here: cli/commands/doctor.ts
// reads, these decide.
import type { NetworkInterfaceInfo } from "node:os";
import type { ClusterHealth } from "../../cluster/health.js";
import { LOCAL_NETWORK_FIX, localNetworkErrno } from "../../common/local-network.js";
import type { MulticastProbeResult } from "../../common/multicast-probe.js";
import { wiredLimitCommand } from "../../common/wired-limit.js";
import { formatBytes, headroomForMemory } from "../../coordinator/planner.js";
import { type CpuInfo, describeCpuKernels } from "../../native/index.js";
import type { GpuWorkingSetLimit, MemoryReading } from "../../node-agent/memory-readers.js";

export type CheckStatus = "ok" | "warn" | "fail" | "skip";

export interface CheckResult {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

const ok = (id: string, title: string, detail: string): CheckResult => ({ id, title, status: "ok", detail });
const skip = (id: string, title: string, detail: string): CheckResult => ({
  id,
  title,
  status: "skip",
  detail,
});

export function checkNode(version: string, minimum = "20.19.0"): CheckResult {
  const [major, minor] = version.split(".").map(Number);
  const [wantMajor, wantMinor] = minimum.split(".").map(Number);
  if (major > wantMajor || (major === wantMajor && minor >= wantMinor))
    return ok("node", "Node.js", `v${version}`);
  return {
    id: "node",
    title: "Node.js",
    status: "fail",
    detail: `v${version} is older than v${minimum}`,
    fix: "install Node.js 20.19 or newer (22 LTS recommended), then npm rebuild",
  };
}

export interface EngineFacts {
  platform: NodeJS.Platform;
  arch: string;
  /** Why the addon could not load, when it could not. */
  loadError?: string;
  backends: string[];
  mlx: { version: string; device: string } | null;
  /** The cpu kernels' SIMD path (native cpuInfo()); absent when the addon did not load. */
  cpu?: CpuInfo;
}

export function checkEngine(facts: EngineFacts): CheckResult {
  const id = "engine";
  const title = "Engine and MLX";
  if (facts.loadError)
    return {
      id,
      title,
      status: "fail",
      detail: facts.loadError,
      fix: "run npm install (it builds the engine)",
    };
  const appleSilicon = facts.platform === "darwin" && facts.arch === "arm64";
  if (facts.mlx && facts.mlx.device === "gpu")
    return ok(id, title, `backends ${facts.backends.join(", ")}; MLX ${facts.mlx.version} on the GPU`);
  if (!appleSilicon) {
    const detail = `backends ${facts.backends.join(", ")}${facts.mlx ? ` (MLX ${facts.mlx.version} on ${facts.mlx.device})` : ""}${facts.cpu ? `; cpu kernels ${describeCpuKernels(facts.cpu)}` : ""}; MLX's GPU path is for Apple silicon`;
    // The addon is compiled for the machine it was built on (-march=native): the portable kernels there mean
    // an x86 CPU without AVX2 + FMA, or an addon built on another machine.
    if (facts.cpu?.simd === "portable")
      return {
        id,
        title,
        status: "warn",
        detail: `${detail}; the cpu kernels run without SIMD (several times slower)`,
        fix: "rebuild on this machine (npm rebuild) if the addon came from another one; a CPU without AVX2 + FMA stays on the portable kernels",
      };
    return ok(id, title, detail);
  }
  if (!facts.mlx)
    return {
      id,
      title,
      status: "fail",
      detail: "this engine was built without MLX: it runs on the CPU, several times slower than the GPU",
      fix: "brew install mlx (or python3 -m pip install mlx), then npm rebuild",
    };
  return {
    id,
    title,
    status: "fail",
    detail: `MLX ${facts.mlx.version} runs on ${facts.mlx.device}, not the GPU`,
    fix: "reinstall MLX (brew reinstall mlx) so mlx.metallib sits beside libmlx, then npm rebuild",
  };
}

export interface ModelNeeds {
  /** Weights of the whole model. */
  weightBytes: number;
  /** KV for the context, every layer. */
  kvBytes: number;
  contextTokens: number;
  /** The backend the plan would use here (the wired limit applies to mlx only). */
  backend: "cpu" | "mlx";
}

const GIB = 1024 ** 3;

/** How many machines like this one the model needs: the plan spreads weights + KV over them. */
export function machinesNeeded(needs: ModelNeeds, usablePerMachine: number): number {
  if (usablePerMachine <= 0) return Number.POSITIVE_INFINITY;
  return Math.ceil((needs.weightBytes + needs.kvBytes) / usablePerMachine);
}

export function checkMemory(memory: MemoryReading, needs: ModelNeeds | undefined): CheckResult {
  const id = "memory";
  const title = "Memory";
  const have = `${formatBytes(memory.availableBytes)} available of ${formatBytes(memory.totalBytes)} (${memory.source})`;
  if (!needs) return ok(id, title, `${have}; pass --model to compare with a model's needs`);
  const usable = memory.availableBytes - headroomForMemory(memory.totalBytes);
  const machines = machinesNeeded(needs, usable);
  const want = `the model needs ${formatBytes(needs.weightBytes + needs.kvBytes)} (weights ${formatBytes(needs.weightBytes)} + KV ${formatBytes(needs.kvBytes)} for ${needs.contextTokens} tokens)`;
  if (machines <= 1) return ok(id, title, `${have}; ${want}: it fits on this machine alone`);
  if (!Number.isFinite(machines))
    return {
      id,
      title,
      status: "fail",
      detail: `${have}: nothing left after ${formatBytes(headroomForMemory(memory.totalBytes))} of headroom`,
      fix: "close what holds memory (Activity Monitor / top), or restart the machine",
    };
  return {
    id,
    title,
    status: "warn",
    detail: `${have}; ${want}: about ${machines} machines like this one`,
    fix: `run cluster up on ${machines - 1} more machine(s), or lower --context, or use a smaller quantization`,
  };
}

export function checkGpuLimit(
  limit: GpuWorkingSetLimit | undefined,
  needs: ModelNeeds | undefined,
  machines: number,
): CheckResult {
  const id = "gpu-wired-limit";
  const title = "GPU wired limit";
  if (!limit) return skip(id, title, "not a Mac: no GPU working-set limit");
  const have = `${formatBytes(limit.bytes)} (${limit.source})`;
  if (needs?.backend !== "mlx" || !Number.isFinite(machines))
    return ok(id, title, `${have}; the GPU keeps weights and KV wired up to it`);
  const perMachine = (needs.weightBytes + needs.kvBytes) / Math.max(1, machines) + GIB;
  if (perMachine <= limit.bytes)
    return ok(
      id,
      title,
      `${have}; this machine's share of the model, ${formatBytes(perMachine)}, fits under it`,
    );
  return {
    id,
    title,
    status: "fail",
    detail: `${have}; this machine's share of the model over ${machines} machine(s) is ${formatBytes(perMachine)}`,
    fix: `${wiredLimitCommand(perMachine)} (it resets at reboot), or add a machine, or lower --context`,
  };
}

export function checkModelFiles(
  model: string | undefined,
  resolved:
    | { dir: string; how: string; problem?: string; heldLayers?: number; numLayers?: number }
    | { error: string },
): CheckResult {
  const id = "model";
  const title = "Model files";
  if (!model) return skip(id, title, "no --model given");
  if ("error" in resolved)
    return {
      id,
      title,
      status: "fail",
      detail: resolved.error,
      fix: "check the path, or for a hub model: cluster pull org/name",
    };
  if (resolved.problem)
    return {
      id,
      title,
      status: "fail",
      detail: resolved.problem,
      fix: `download it again (cluster pull ${model}) or copy the named file whole`,
    };
  if (resolved.how === "partial")
    return ok(
      id,
      title,
      `${resolved.dir}: partial checkpoint with ${resolved.heldLayers} of ${resolved.numLayers} layers; the rest come from peers or the hub when the plan needs them`,
    );
  return ok(id, title, `${resolved.dir}: complete (every shard's size matches its header and the index)`);
}

/** Below this, the prefix cache's disk tier and downloads will fail. */
const DISK_FLOOR_BYTES = GIB;
const DISK_COMFORT_BYTES = 20e9;

export function checkDisk(path: string, freeBytes: number, missingModelBytes = 0): CheckResult {
  const id = "disk";
  const title = "Disk space";
  const detail = `${formatBytes(freeBytes)} free at ${path}`;
  if (missingModelBytes > freeBytes)
    return {
      id,
      title,
      status: "fail",
      detail: `${detail}; this node still has ${formatBytes(missingModelBytes)} of its model to fetch`,
      fix: "free disk space, or point HF_HOME / --prefix-cache-dir at a larger disk",
    };
  if (freeBytes < DISK_FLOOR_BYTES)
    return {
      id,
      title,
      status: "fail",
      detail: `${detail}: too little for the prefix cache's disk tier and downloads`,
      fix: "free disk space, or point --prefix-cache-dir at a larger disk (or --prefix-cache-disk 0)",
    };
  if (freeBytes < DISK_COMFORT_BYTES)
    return { id, title, status: "warn", detail, fix: "the prefix cache keeps less on disk; free some space" };
  return ok(id, title, detail);
}

export function checkInterfaces(
  platform: NodeJS.Platform,
  interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>,
): CheckResult {
  const id = "interfaces";
  const title = "Network interfaces";
  const lan = Object.entries(interfaces).flatMap(([name, addrs]) =>
    (addrs ?? []).filter((a) => a.family === "IPv4" && !a.internal).map((a) => `${name} ${a.address}`),
  );
  if (lan.length === 0)
    return {
      id,
      title,
      status: "warn",
      detail: "only loopback: no other machine can reach this one",
      fix: "connect the machines (a Thunderbolt cable between Macs is fastest) and give this one an address",
    };
  if (platform !== "darwin") return ok(id, title, lan.join(", "));
  const bridge = (interfaces.bridge0 ?? []).find((a) => a.family === "IPv4");
  if (bridge) return ok(id, title, `Thunderbolt Bridge bridge0 at ${bridge.address}; all: ${lan.join(", ")}`);
  return {
    id,
    title,
    status: "warn",
    detail: `no Thunderbolt Bridge address (hops go over ${lan.join(", ")})`,
    fix: "connect the Macs with a Thunderbolt cable and turn on System Settings > Network > Thunderbolt Bridge; then start with --interface bridge0",
  };
}

export function checkMulticast(platform: NodeJS.Platform, probe: MulticastProbeResult): CheckResult {
  const id = "multicast";
  const title = "Bonjour (multicast)";
  if (probe.seen) return ok(id, title, `our own announcement came back in ${probe.elapsedMs} ms`);
  const why = probe.error ? ` (${probe.error})` : "";
  return {
    id,
    title,
    status: "fail",
    detail: `our own Bonjour announcement did not come back within ${probe.elapsedMs} ms${why}: nodes will not find each other`,
    fix:
      platform === "darwin"
        ? LOCAL_NETWORK_FIX
        : "allow multicast DNS (UDP 5353) through the firewall and give an interface a multicast route, or join with --peer <host>:<port>",
  };
}

export interface PeerProbe {
  address: string;
  /** How it was found: --peer or Bonjour. */
  via: string;
  /** Round trip of the TCP connect in ms, when it connected. */
  connectMs?: number;
  /** errno code or "timeout" when it did not. */
  error?: string;
}

export function checkPeers(platform: NodeJS.Platform, peers: PeerProbe[]): CheckResult {
  const id = "peers";
  const title = "Other nodes";
  if (peers.length === 0) return skip(id, title, "no --peer given and no node discovered over Bonjour");
  const bad = peers.filter((p) => p.error);
  const list = peers
    .map((p) => `${p.address} (${p.via}): ${p.error ? p.error : `connected in ${p.connectMs} ms`}`)
    .join("; ");
  if (bad.length === 0) return ok(id, title, list);
  const blocked = bad.some((p) => localNetworkErrno(p.error ?? "") !== undefined);
  const fix =
    platform === "darwin" && blocked
      ? LOCAL_NETWORK_FIX
      : bad.some((p) => p.error === "ECONNREFUSED")
        ? "start cluster up on that machine (nothing listens on that port), or check the port it printed"
        : "check the address, the cable and any firewall between the machines (the gRPC port must be open)";
  return { id, title, status: "fail", detail: list, fix };
}

export function checkCluster(
  apiUrl: string,
  health: ClusterHealth | { error: string },
  ourVersion: string,
  maxSkewMs = 2000,
): CheckResult {
  const id = "cluster";
  const title = "Running cluster";
  if ("error" in health)
    return skip(
      id,
      title,
      `no node answers at ${apiUrl} (${health.error}); pass --api URL of a running node`,
    );
  const versions = new Map<string, string[]>();
  for (const node of health.nodes) {
    if (!node.version) continue;
    versions.set(node.version, [...(versions.get(node.version) ?? []), node.name]);
  }
  const skewed = health.nodes.filter(
    (n) => n.clockSkewMs !== undefined && Math.abs(n.clockSkewMs) > maxSkewMs,
  );
  const summary = `${health.nodes.length} node(s), state ${health.state}${health.message ? ` (${health.message})` : ""}`;
  if (versions.size > 1 || (versions.size === 1 && !versions.has(ourVersion)))
    return {
      id,
      title,
      status: "fail",
      detail: `${summary}; versions differ: ${[...versions].map(([v, names]) => `${v} on ${names.join(", ")}`).join("; ")} (this copy: ${ourVersion})`,
      fix: "install the same version on every node (git pull && npm install), then restart them",
    };
  if (skewed.length > 0)
    return {
      id,
      title,
      status: "warn",
      detail: `${summary}; clocks differ: ${skewed.map((n) => `${n.name} ${n.clockSkewMs} ms`).join(", ")}`,
      fix: "turn on automatic time (System Settings > General > Date & Time, or timedatectl set-ntp true)",
    };
  return ok(id, title, `${summary}; every node runs ${ourVersion}; clocks within ${maxSkewMs} ms`);
}

const MARK: Record<CheckStatus, string> = { ok: "ok  ", warn: "WARN", fail: "FAIL", skip: "skip" };

/** One line per check, and the fix under it. */
export function renderChecks(checks: CheckResult[]): string {
  const width = Math.max(...checks.map((c) => c.title.length));
  const lines = checks.flatMap((c) => [
    `${MARK[c.status]}  ${c.title.padEnd(width)}  ${c.detail}`,
    ...(c.fix ? [`${" ".repeat(width + 8)}fix: ${c.fix}`] : []),
  ]);
  const failed = checks.filter((c) => c.status === "fail").length;
  const warned = checks.filter((c) => c.status === "warn").length;
  lines.push(
    "",
    failed === 0 ? `no failures${warned ? `, ${warned} warning(s)` : ""}` : `${failed} check(s) failed`,
  );
  return `${lines.join("\n")}\n`;
}
