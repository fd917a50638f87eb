// `cluster doctor`: checks this machine (and, with --api, the running cluster) for what stops a first run, one
// line per check with a fix. The judgements are in cli/doctor/checks.ts; this file reads the machine.
import { statfsSync } from "node:fs";
import { connect } from "node:net";
import { networkInterfaces } from "node:os";
import { dirname, resolve } from "node:path";
import { type Command, Option } from "commander";
import { type ClusterHealth, isClusterHealth } from "../../cluster/health.js";
import { clusterHome } from "../../common/cluster-key.js";
import { KV_DTYPES, type KvDtype } from "../../common/engine-api.js";
import { errorMessage } from "../../common/errors.js";
import { readModelConfig } from "../../common/model-config.js";
import { heldParts, readManifest, readModelTable } from "../../common/model-table.js";
import { probeMulticast } from "../../common/multicast-probe.js";
import { packageVersion } from "../../common/paths.js";
import { kvBytesPerTokenPerLayer, readModelFootprint } from "../../coordinator/model-footprint.js";
import { headroomForMemory } from "../../coordinator/planner.js";
import { systemMemory } from "../../node-agent/memory-gauge.js";
import { checkpointProblem } from "../../weights/checkpoint-check.js";
import { hubEnv } from "../../weights/hub-env.js";
import { resolveModel } from "../../weights/resolve.js";
import {
  type CheckResult,
  checkCluster,
  checkDisk,
  checkEngine,
  checkGpuLimit,
  checkInterfaces,
  checkMemory,
  checkModelFiles,
  checkMulticast,
  checkNode,
  checkPeers,
  type EngineFacts,
  type ModelNeeds,
  machinesNeeded,
  type PeerProbe,
  renderChecks,
} from "../doctor/checks.js";
import { positiveInt } from "../options.js";

interface DoctorOptions {
  model?: string;
  context?: number;
  kvDtype: KvDtype;
  peer: string[];
  api: string;
  apiKey?: string;
  bonjour: boolean;
  timeout: number;
  json?: boolean;
}

async function engineFacts(): Promise<EngineFacts> {
  const facts: EngineFacts = { platform: process.platform, arch: process.arch, backends: [], mlx: null };
  try {
    const engine = await import("../../native/index.js");
    facts.backends = engine.availableBackends();
    facts.mlx = engine.mlxInfo();
    facts.cpu = engine.cpuInfo();
  } catch (err) {
    facts.loadError = errorMessage(err);
  }
  return facts;
}

interface ModelFacts {
  resolved: Parameters<typeof checkModelFiles>[1];
  needs?: ModelNeeds;
  dir?: string;
  missingBytes: number;
}

async function modelFacts(
  value: string,
  context: number | undefined,
  kvDtype: KvDtype,
  mlxGpu: boolean,
): Promise<ModelFacts> {
  let dir: string;
  let how: string;
  try {
    // Offline: the doctor looks, it never downloads.
    ({ dir, how } = await resolveModel(value, { env: { ...hubEnv(), offline: true }, home: clusterHome() }));
  } catch (err) {
    return { resolved: { error: errorMessage(err) }, missingBytes: 0 };
  }
  const partial = readManifest(dir) !== undefined;
  const problem = partial ? undefined : checkpointProblem(dir);
  if (problem) return { resolved: { dir, how, problem }, dir, missingBytes: 0 };
  try {
    const config = readModelConfig(dir);
    const table = readModelTable(dir);
    const held = heldParts(dir, table);
    const footprint = readModelFootprint(dir);
    const weightBytes =
      footprint.layerBytes.reduce((a, b) => a + b, 0) + footprint.embedBytes + footprint.headBytes;
    const contextTokens = context ?? config.maxPositionEmbeddings;
    const backend = mlxGpu ? "mlx" : "cpu";
    const kvBytes =
      kvBytesPerTokenPerLayer(footprint, backend, kvDtype) * contextTokens * footprint.numLayers;
    const heldBytes = partial ? heldTensorBytes(table, held) : weightBytes;
    return {
      resolved: {
        dir,
        how: partial ? "partial" : how,
        heldLayers: held.layers.length,
        numLayers: config.numLayers,
      },
      needs: { weightBytes, kvBytes, contextTokens, backend },
      dir,
      missingBytes: Math.max(0, weightBytes - heldBytes),
    };
  } catch (err) {
    return { resolved: { dir, how, problem: errorMessage(err) }, dir, missingBytes: 0 };
  }
}

function heldTensorBytes(
  table: ReturnType<typeof readModelTable>,
  held: ReturnType<typeof heldParts>,
): number {
  const layers = new Set(held.layers);
  let bytes = 0;
  for (const t of table.tensors.values()) {
    const layer = /^model\.layers\.(\d+)\./.exec(t.name);
    if (
      layer ? layers.has(Number(layer[1])) : t.name.startsWith("model.embed_tokens.") ? held.embed : held.head
    )
      bytes += t.byteLength;
  }
  return bytes;
}

/** Free bytes on the disk holding `path` (or its nearest existing parent). */
function freeDiskBytes(path: string): { path: string; free: number } {
  let at = resolve(path);
  for (;;) {
    try {
      const fs = statfsSync(at);
      return { path: at, free: fs.bavail * fs.bsize };
    } catch {
      const parent = dirname(at);
      if (parent === at) return { path: at, free: 0 };
      at = parent;
    }
  }
}

function probePeer(address: string, via: string, timeoutMs: number): Promise<PeerProbe> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(":")),
    Number(address.slice(address.lastIndexOf(":") + 1)),
  ];
  const started = performance.now();
  return new Promise((done) => {
    const socket = connect({ host, port });
    const finish = (result: PeerProbe) => {
      socket.destroy();
      done(result);
    };
    socket.setTimeout(timeoutMs, () => finish({ address, via, error: "timeout" }));
    socket.once("connect", () =>
      finish({ address, via, connectMs: Math.round(performance.now() - started) }),
    );
    socket.once("error", (err: NodeJS.ErrnoException) =>
      finish({ address, via, error: err.code ?? err.message }),
    );
  });
}

async function clusterHealth(
  apiUrl: string,
  apiKey: string | undefined,
): Promise<ClusterHealth | { error: string }> {
  try {
    const response = await fetch(`${apiUrl.replace(/\/+$/, "")}/health`, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(3000),
    });
    const body: unknown = await response.json();
    return isClusterHealth(body) ? body : { error: `answered ${response.status} without cluster health` };
  } catch (err) {
    return { error: errorMessage((err as { cause?: unknown }).cause ?? err) };
  }
}

export async function runDoctor(opts: DoctorOptions): Promise<CheckResult[]> {
  const engine = await engineFacts();
  const mlxGpu = engine.mlx?.device === "gpu";
  const model = opts.model ? await modelFacts(opts.model, opts.context, opts.kvDtype, mlxGpu) : undefined;
  const memory = systemMemory.read();
  const usable = memory.availableBytes - headroomForMemory(memory.totalBytes);
  const machines = model?.needs ? machinesNeeded(model.needs, usable) : 1;
  const disk = freeDiskBytes(model?.dir ?? clusterHome());
  const probe = opts.bonjour ? await probeMulticast(opts.timeout) : undefined;
  const candidates = [
    ...opts.peer.map((address) => ({ address, via: "--peer" })),
    ...(probe?.nodes ?? []).map((address) => ({ address, via: "Bonjour" })),
  ];
  const peers = await Promise.all(candidates.map((c) => probePeer(c.address, c.via, 2000)));
  return [
    checkNode(process.versions.node),
    checkEngine(engine),
    checkModelFiles(opts.model, model?.resolved ?? { error: "" }),
    checkMemory(memory, model?.needs),
    checkGpuLimit(systemMemory.gpuLimit(), model?.needs, machines),
    checkDisk(disk.path, disk.free, model?.missingBytes ?? 0),
    checkInterfaces(process.platform, networkInterfaces()),
    probe
      ? checkMulticast(process.platform, probe)
      : { id: "multicast", title: "Bonjour (multicast)", status: "skip", detail: "--no-bonjour given" },
    checkPeers(process.platform, peers),
    checkCluster(opts.api, await clusterHealth(opts.api, opts.apiKey), packageVersion()),
  ];
}

export function register(program: Command): void {
  program
    .command("doctor")
    .description(
      "check this machine (and a running cluster) for what stops a first run, each problem with its fix",
    )
    .option(
      "--model <dir|org/name>",
      "the model to check: files complete, memory and GPU limit against its size",
    )
    .option(
      "--context <tokens>",
      "context to size the KV memory for (default: the model's maximum)",
      positiveInt("--context"),
    )
    .addOption(
      new Option(
        "--kv-dtype <dtype>",
        "the cpu backend's KV cache you run cluster up with (f16 halves the KV)",
      )
        .choices(KV_DTYPES)
        .default("f32"),
    )
    .option(
      "--peer <host:port>",
      "another node's gRPC address to try (repeatable)",
      (v: string, all: string[]) => [...all, v],
      [],
    )
    .option(
      "--api <url>",
      "a running node's HTTP address, for versions and clocks across the cluster",
      "http://127.0.0.1:8080",
    )
    .option("--api-key <key>", "the API key that node was started with")
    .option("--no-bonjour", "skip the multicast check")
    .option(
      "--timeout <ms>",
      "how long to wait for our own Bonjour announcement",
      positiveInt("--timeout"),
      4000,
    )
    .option("--json", "print the checks as JSON")
    .action(async (opts: DoctorOptions) => {
      const checks = await runDoctor(opts);
      const failed = checks.some((c) => c.status === "fail");
      if (opts.json) process.stdout.write(`${JSON.stringify({ ok: !failed, checks }, null, 2)}\n`);
      else process.stdout.write(renderChecks(checks));
      process.exitCode = failed ? 1 : 0;
    });
}
