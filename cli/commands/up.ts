// `cluster up`: makes this machine a node of the cluster. It starts the node agent (gRPC, around this node's
// engine shard), advertises it over Bonjour, joins membership (Bonjour + --peer), and serves the HTTP API. The
// elected coordinator plans, loads the shards (progress bars on stderr) and schedules; every other node's API
// forwards to it.
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { join, resolve } from "node:path";
import { type Command, InvalidArgumentError, Option } from "commander";
import { type ApiServer, isLoopback, startApiServer } from "../../api/server.js";
import { ClusterController } from "../../cluster/controller.js";
import { BonjourDiscovery } from "../../cluster/discovery.js";
import { electCoordinator } from "../../cluster/election.js";
import { humanBytes } from "../../cluster/health.js";
import { Membership, parseHostPort } from "../../cluster/membership.js";
import {
  CLUSTER_KEY_ENV,
  claimNodeId,
  clusterHome,
  givenClusterKey,
  loadOrCreateClusterKey,
  type NodeIdentity,
} from "../../common/cluster-key.js";
import {
  type BackendChoice,
  KV_DTYPES,
  type KvDtype,
  MATMUL_INPUTS,
  type MatmulInputs,
} from "../../common/engine-api.js";
import { ClusterError, errorMessage } from "../../common/errors.js";
import { modelIdOf, readModelConfig } from "../../common/model-config.js";
import { modelFingerprint, readModelTable } from "../../common/model-table.js";
import { probeMulticast } from "../../common/multicast-probe.js";
import { packageVersion } from "../../common/paths.js";
import { checkLayerCount } from "../../common/weight-check.js";
import { clusterTlsOf } from "../../common/wire/cluster-cert.js";
import {
  loadWireTls,
  useClusterTls,
  useWireTls,
  type WireTls,
  wireTlsFilesOf,
} from "../../common/wire/tls.js";
import { readModelFootprint } from "../../coordinator/model-footprint.js";
import { availableBackends } from "../../native/index.js";
import { type Advertisement, advertiseNode } from "../../node-agent/advertise.js";
import { type NodeAgent, startNodeAgent } from "../../node-agent/server.js";
import { hubEnv } from "../../weights/hub-env.js";
import { resolveModel } from "../../weights/resolve.js";
import { checkMulticast } from "../doctor/checks.js";
import { makeModel } from "../make-model/index.js";
import { createLoadProgress } from "../progress.js";

export interface UpOptions {
  model?: string;
  demo?: boolean;
  name?: string;
  port: number;
  apiPort: number;
  apiHost: string;
  apiKey?: string;
  /** Browser origins allowed to call the API (CORS); none by default. */
  corsOrigin: string[];
  key?: string;
  keyFile?: string;
  peer: string[];
  backend: BackendChoice;
  threads?: number;
  matmulInputs: MatmulInputs;
  kvDtype: KvDtype;
  context?: number;
  bonjour: boolean;
  interface?: string;
  /** GB/s; skips the measurement. */
  memoryBandwidth?: number;
  /** Requests generating at once; more get 429 with retry-after. */
  maxSequences?: number;
  maxQueue?: number;
  /** Seconds one request may run end to end. */
  requestTimeout?: number;
  /** Seconds a client may take to send a whole request (headers and body). */
  bodyTimeout: number;
  /** Seconds SIGINT/SIGTERM lets generations in flight finish before failing them. */
  drainTimeout: number;
  /** MB/s this node may send to peers fetching weights from it. */
  maxPushRate?: number;
  /** Prefix cache: RAM tier GB per node (default: what sequences in flight leave), disk tier GB and folder. */
  prefixCacheRam?: number;
  prefixCacheDisk?: number;
  prefixCacheDir?: string;
  /** PEM files for mutual TLS between nodes (all three or none). */
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** false (--no-cluster-tls): plaintext gRPC between nodes even across the network. */
  clusterTls: boolean;
}

function intArg(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max} (got "${value}")`);
    return n;
  };
}

function nonNegativeNumber(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < 0)
      throw new InvalidArgumentError(`${name} must be a number >= 0 (got "${value}")`);
    return n;
  };
}

function positiveNumber(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive number (got "${value}")`);
    return n;
  };
}

function collectPeer(value: string, previous: string[]): string[] {
  try {
    parseHostPort(value, "--peer");
  } catch (err) {
    throw new InvalidArgumentError(errorMessage(err));
  }
  return [...previous, value];
}

/** "*", or an origin as browsers send it: scheme://host[:port], no path. */
function collectOrigin(value: string, previous: string[]): string[] {
  if (value !== "*") {
    let origin: string | undefined;
    try {
      origin = new URL(value).origin;
    } catch {
      origin = undefined;
    }
    if (origin !== value.replace(/\/$/, ""))
      throw new InvalidArgumentError(
        `--cors-origin must be "*" or an origin such as http://localhost:3000 (got "${value}")`,
      );
  }
  return [...previous, value.replace(/\/$/, "")];
}

/** An interface name (en0, bridge0) or one of this machine's IPv4 addresses -> that IPv4 address. */
export function resolveInterfaceAddress(value: string): string {
  const interfaces = networkInterfaces();
  const all = Object.values(interfaces).flatMap((list) => list ?? []);
  if (all.some((a) => a.address === value)) return value;
  const byName = interfaces[value]?.find((a) => a.family === "IPv4");
  if (byName) return byName.address;
  const names = Object.keys(interfaces).join(", ");
  throw new Error(
    `--interface "${value}" is neither an interface with an IPv4 address nor one of this machine's addresses (interfaces: ${names})`,
  );
}

/** The host other nodes reach this one at: the chosen interface, loopback for a loopback-only cluster, else the first external IPv4. */
/**
 * Where the node agent listens: the --interface address; loopback when Bonjour is off and every --peer is on
 * loopback (a cluster of one machine: no port open to the network); else all interfaces, since peers on the LAN
 * may name this node with their --peer or find it over Bonjour.
 */
function grpcBindHost(interfaceAddress: string | undefined, peers: string[], bonjour: boolean): string {
  if (interfaceAddress) return interfaceAddress;
  const loopbackOnly = !bonjour && peers.length > 0 && peers.every((p) => isLoopback(parseHostPort(p).host));
  return loopbackOnly ? "127.0.0.1" : "0.0.0.0";
}

function selfHost(interfaceAddress: string | undefined, peers: string[], bonjour: boolean): string {
  if (interfaceAddress) return interfaceAddress;
  const loopbackOnly = peers.length > 0 && peers.every((p) => isLoopback(parseHostPort(p).host));
  if (loopbackOnly || (peers.length === 0 && !bonjour)) return "127.0.0.1";
  const external = Object.values(networkInterfaces())
    .flatMap((list) => list ?? [])
    .find((a) => a.family === "IPv4" && !a.internal);
  return external?.address ?? "127.0.0.1";
}

/**
 * The demo model (preset "demo": small, the real model's window, a fixed reply with reasoning then text), made
 * once under the studio-cluster home (atomically: several nodes may start at once).
 */
async function demoModelDir(): Promise<string> {
  const dir = join(clusterHome(), "models", "demo");
  if (existsSync(join(dir, "config.json"))) return dir;
  mkdirSync(join(clusterHome(), "models"), { recursive: true });
  const scratch = `${dir}.tmp-${process.pid}`;
  rmSync(scratch, { recursive: true, force: true });
  process.stderr.write(`making the demo model in ${dir} ...\n`);
  await makeModel({ dir: scratch, preset: "demo" });
  try {
    renameSync(scratch, dir);
  } catch (err) {
    // Another node made it first: use theirs (same preset and seed, so the same model).
    rmSync(scratch, { recursive: true, force: true });
    if (!existsSync(join(dir, "config.json"))) throw err;
  }
  return dir;
}

/** --model as a checkpoint folder: a folder as given, or a hub id found locally or started from the hub. */
async function modelDirOf(value: string, hub: ReturnType<typeof hubEnv>): Promise<string> {
  const resolved = await resolveModel(value, {
    env: hub,
    home: clusterHome(),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  const how = {
    folder: "the folder",
    "hf-cache": "the Hugging Face cache",
    lmstudio: "LM Studio's models folder",
    partial: "this node's partial checkpoint (missing layers are fetched when the plan needs them)",
    "hub-metadata": "the hub's metadata (layers are fetched when the plan says which)",
  }[resolved.how];
  if (resolved.how !== "folder") say(`model ${value}: using ${how} at ${resolved.dir}`);
  return resolved.dir;
}

/** The API's URL as this process reaches it: a wildcard address (0.0.0.0, ::) is dialled on loopback. */
export function loopbackUrlOf(apiUrl: string): string {
  const url = new URL(apiUrl);
  if (url.hostname === "0.0.0.0") url.hostname = "127.0.0.1";
  else if (url.hostname === "[::]") url.hostname = "[::1]";
  return url.origin;
}

/** startApiServer, with the usual cause of failure spelled out. */
async function listenApi(...args: Parameters<typeof startApiServer>): Promise<ApiServer> {
  try {
    return await startApiServer(...args);
  } catch (err) {
    const { host, port } = args[1];
    if ((err as NodeJS.ErrnoException).code === "EADDRINUSE")
      throw new Error(
        `the API port ${host}:${port} is in use (another node on this machine? pass --api-port)`,
      );
    throw err;
  }
}

/**
 * Bonjour fails silently where multicast is blocked (on macOS 15+, a process without the Local Network
 * permission, often a launchd service): the node then just never finds anyone. Say so, with the fix.
 */
async function warnIfMulticastBlocked(interfaceAddress: string | undefined): Promise<void> {
  const check = checkMulticast(process.platform, await probeMulticast(5000, interfaceAddress));
  if (check.status === "fail")
    process.stderr.write(`studio-cluster: warning: ${check.detail}\n  fix: ${check.fix}\n`);
}

/** The gRPC plane's protection: the user's TLS files, else (by default) TLS derived from the cluster key. */
async function secureWire(files: WireTls | undefined, clusterTls: boolean, key: string): Promise<void> {
  if (files) {
    useWireTls(files);
    say("gRPC between nodes: mutual TLS with your --tls-* certificates, on every channel");
  } else if (clusterTls) {
    useClusterTls(await clusterTlsOf(key));
    say("gRPC between nodes: mutual TLS with the cluster key's certificate (loopback stays plaintext)");
  } else {
    useWireTls(undefined);
    process.stderr.write(
      "warning: --no-cluster-tls: gRPC between nodes is plaintext; anyone on the network path can read prompts' tokens and activations\n",
    );
  }
}

function say(line: string): void {
  process.stdout.write(`studio-cluster: ${line}\n`);
}

export async function runUp(opts: UpOptions): Promise<void> {
  if (!opts.model && !opts.demo)
    throw new Error("give the model with --model DIR, or --demo for the tiny demo model");
  if (opts.model && opts.demo) throw new Error("--model and --demo exclude each other");
  if (!isLoopback(opts.apiHost) && !opts.apiKey)
    throw new Error(
      `--api-host ${opts.apiHost} is not loopback: it requires --api-key (anyone on the network could use the model otherwise)`,
    );
  const tlsFiles = wireTlsFilesOf(opts);
  const wireTls = tlsFiles ? loadWireTls(tlsFiles) : undefined;
  const interfaceAddress = opts.interface ? resolveInterfaceAddress(opts.interface) : undefined;
  const hub = hubEnv();
  const modelDir = opts.model ? await modelDirOf(opts.model, hub) : await demoModelDir();
  const config = readModelConfig(modelDir);
  const footprint = readModelFootprint(modelDir);
  const contextTokens = opts.context ?? config.maxPositionEmbeddings;
  if (contextTokens > config.maxPositionEmbeddings)
    throw new Error(
      `--context ${contextTokens} exceeds the model's max_position_embeddings ${config.maxPositionEmbeddings}`,
    );
  const modelId = modelIdOf(modelDir);
  const table = readModelTable(modelDir);
  checkLayerCount(modelDir, config.numLayers, table.tensors.keys());
  const fingerprint = modelFingerprint(table);
  const version = packageVersion();

  const given = givenClusterKey(opts);
  if (given.from === "--key")
    process.stderr.write(
      `warning: a key given with --key is visible to every user of this machine (ps); use --key-file FILE or ${CLUSTER_KEY_ENV}\n`,
    );
  const key = loadOrCreateClusterKey({ key: given.key });
  if (key.created) {
    const model = opts.demo ? "--demo" : "--model DIR";
    process.stderr.write(
      `\nA new cluster key was generated and stored in ${key.file} (it is shown only this once):\n\n  ${key.key}\n\n` +
        "Join other machines to this cluster with one of (the key stays out of `ps`; a key file must be chmod 600):\n\n" +
        `  ${CLUSTER_KEY_ENV}=${key.key} cluster up ${model}\n` +
        `  cluster up --key-file FILE ${model}\n\n`,
    );
  }
  // Before any client or the agent's server exists: they all take their credentials from this setting.
  await secureWire(wireTls, opts.clusterTls, key.key);
  const identity: NodeIdentity = claimNodeId({
    instance: opts.name ?? (opts.port ? `port-${opts.port}` : "default"),
  });
  const name = opts.name ?? identity.instance;
  const cleanups: Array<() => Promise<void> | void> = [() => identity.release()];
  const shutdown = async () => {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch (err) {
        process.stderr.write(`shutdown: ${errorMessage(err)}\n`);
      }
    }
  };

  let drainApi: () => Promise<void> = async () => {};
  try {
    let controller: ClusterController | undefined;
    // Known to this process only: the agent's loopback requests for followers carry it (api/auth.ts checkRelay).
    const relayToken = randomBytes(32).toString("base64url");
    const api: ApiServer = await listenApi(
      {
        generator: () => controller?.generator(),
        modelDir,
        modelId,
        health: () => controller?.health() ?? { ok: false, state: "planning", message: "starting" },
        relay: () => controller?.coordinatorRelay(),
        // Dashboard and /metrics (a 503, and an error line on the page, while this node is starting).
        snapshot: () => {
          if (!controller) throw new ClusterError("cluster_not_ready", "this node is still starting");
          return controller.snapshot();
        },
      },
      {
        host: opts.apiHost,
        port: opts.apiPort,
        apiKey: opts.apiKey,
        requestTimeoutMs: opts.requestTimeout ? opts.requestTimeout * 1000 : undefined,
        corsOrigins: opts.corsOrigin,
        bodyTimeoutMs: opts.bodyTimeout * 1000,
        relayToken,
      },
    );
    // Closed last (cleanups run in reverse); by then drainApi below has ended every stream with a terminal event.
    cleanups.push(() => api.close());
    drainApi = () => api.close({ graceMs: opts.drainTimeout * 1000 });
    const apiPort = Number(new URL(api.url).port);

    // Membership starts once the agent's port is known; until then a caller's Hello has nobody to tell.
    let onPeerHello: ((address: string) => void) | undefined;
    let membership: Membership | undefined;
    const agent: NodeAgent = await startNodeAgent({
      modelDir,
      grpcHost: grpcBindHost(interfaceAddress, opts.peer, opts.bonjour),
      grpcPort: opts.port,
      clusterKey: key.key,
      nodeId: identity.nodeId,
      name,
      apiPort,
      clusterId: key.clusterId,
      backend: opts.backend,
      // "--backend cpu" keeps the planner from choosing mlx for the pipeline; otherwise the engine says.
      // --backend mlx offers mlx even where MLX has no GPU (a CPU-only build, for testing); auto follows the engine.
      backends: opts.backend === "cpu" ? ["cpu"] : opts.backend === "mlx" ? availableBackends() : undefined,
      threads: opts.threads,
      matmulInputs: opts.matmulInputs,
      kvDtype: opts.kvDtype,
      memoryBandwidthBps: opts.memoryBandwidth ? opts.memoryBandwidth * 1e9 : undefined,
      hubEnv: hub,
      maxPushBytesPerSecond: opts.maxPushRate ? opts.maxPushRate * 1e6 : undefined,
      // The prefix cache's disk tier: this node's own folder (several nodes of one machine never share one).
      cacheDir:
        opts.prefixCacheDisk === 0
          ? undefined
          : resolve(opts.prefixCacheDir ?? join(clusterHome(), "kv-cache", identity.nodeId)),
      cacheDiskBytes: opts.prefixCacheDisk === undefined ? undefined : Math.floor(opts.prefixCacheDisk * 1e9),
      onPeerHello: (peer) => {
        if (peer.clusterId === key.clusterId) onPeerHello?.(peer.address);
      },
      // Gossip of the member list, and the view a LoadShard from a new coordinator is judged by
      // (common/coordinator-epoch.ts).
      gossip: () => membership?.gossip() ?? [],
      // Followers' API requests (RelayHttp), performed against this process's API on this machine.
      httpRelay: { url: loopbackUrlOf(api.url), token: relayToken },
      coordinatorView: {
        isLive: (nodeId) => membership?.get(nodeId) !== undefined,
        choice: () => (membership ? electCoordinator(membership.live(), identity.nodeId)?.nodeId : undefined),
      },
    });
    cleanups.push(() => agent.close());
    const host = selfHost(interfaceAddress, opts.peer, opts.bonjour);
    const selfAddress = `${host}:${agent.port}`;
    say(
      `node ${name} (${identity.nodeId}) gRPC ${selfAddress}, API ${api.url}, model ${modelId}, cluster ${key.clusterId}`,
    );

    membership = new Membership({
      nodeId: identity.nodeId,
      clusterId: key.clusterId,
      clusterKey: key.key,
      version,
      grpcPort: agent.port,
      selfAddress,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    const members = membership;
    cleanups.push(() => members.close());
    // Gossip travels at once: members hear of a change with the next NodeStatus, sent now rather than at its tick.
    members.on("change", () => agent.membersChanged());
    members.addCandidate(`${interfaceAddress ?? "127.0.0.1"}:${agent.port}`, "self");
    for (const peer of opts.peer) members.addCandidate(peer, "peer");
    onPeerHello = (address) => members.addCandidate(address, "caller");

    if (opts.bonjour) {
      const discovery = new BonjourDiscovery({ clusterId: key.clusterId, interfaceAddress });
      discovery.on("up", (node) => members.addCandidate(node.address, "bonjour"));
      discovery.on("down", (node) => members.removeCandidate(node.address, "bonjour"));
      cleanups.push(() => discovery.close());
      const advertisement: Advertisement = advertiseNode({
        nodeId: identity.nodeId,
        name,
        grpcPort: agent.port,
        clusterId: key.clusterId,
        version,
        interfaceAddress,
      });
      cleanups.push(() => advertisement.stop());
      void warnIfMulticastBlocked(interfaceAddress);
    }

    const progress = createLoadProgress();
    controller = new ClusterController({
      self: { nodeId: identity.nodeId, name, apiUrl: api.url },
      // Nodes of one machine are configured alike: with our API on loopback, theirs are too.
      localApiHost: isLoopback(opts.apiHost) ? "127.0.0.1" : undefined,
      clusterId: key.clusterId,
      clusterKey: key.key,
      version,
      modelId,
      fingerprint,
      footprint,
      contextTokens,
      threads: opts.threads,
      maxSequences: opts.maxSequences,
      maxQueue: opts.maxQueue,
      prefixCacheRamBytes:
        opts.prefixCacheRam === undefined ? undefined : Math.floor(opts.prefixCacheRam * 1e9),
      membership: members,
      onProgress: (stage, read, total) => progress.update(stage.name, read, total),
      onFetchProgress: (stage, done, total, source) =>
        progress.update(`${stage.name} <- ${source}`, done, total),
      onStageFetched: (stage, bytes, sources) =>
        say(
          `${stage.name} received ${bytes} bytes of weights (${humanBytes(bytes)}) for layers [${stage.layerStart},${stage.layerEnd}) from ${sources}`,
        ),
      onStageLoaded: (stage, bytes) =>
        progress.done(
          stage.name,
          `layers [${stage.layerStart},${stage.layerEnd}) loaded, ${humanBytes(bytes)}`,
        ),
      onState: (line) => {
        if (!line.startsWith("state loading")) progress.stop();
        say(line);
      },
      log: (line) => process.stderr.write(`${line}\n`),
    });
    const running = controller;
    cleanups.push(() => running.close());
  } catch (err) {
    await shutdown();
    throw err;
  }

  await new Promise<void>((resolveStop) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        process.stderr.write(`${signal} again: exiting now\n`);
        process.exit(130);
      }
      stopping = true;
      say(`${signal}: leaving the cluster (requests in flight finish or fail first)`);
      // The API drains first, while the pipeline still serves: each open stream ends with its terminal event.
      drainApi()
        .catch((err: unknown) => process.stderr.write(`drain: ${errorMessage(err)}\n`))
        .then(shutdown)
        .then(resolveStop, resolveStop);
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
  });
}

export function register(program: Command): void {
  program
    .command("up")
    .description("Join (or start) the cluster on this machine and serve the OpenAI-compatible API")
    .option(
      "--model <dir|org/name[@rev]>",
      "the model: a checkpoint folder (MLX safetensors layout), or a Hugging Face model id found in the HF cache or LM Studio, else fetched (only this node's layers)",
    )
    .option("--demo", "use the generated demo model, which gives one fixed reply (made on first use)")
    .option("--name <name>", "this node's name (default: one per gRPC port)")
    .option("--port <port>", "gRPC port of the node agent (0 = any free port)", intArg("--port", 0, 65535), 0)
    .option("--api-port <port>", "HTTP API port", intArg("--api-port", 0, 65535), 8080)
    .option("--api-host <host>", "HTTP API address (anything but loopback requires --api-key)", "127.0.0.1")
    .option("--api-key <key>", "require this bearer key on the HTTP API")
    .option(
      "--cors-origin <origin>",
      'let web pages from this origin call the HTTP API, e.g. http://localhost:3000, or "*" for any (repeatable; default: none)',
      collectOrigin,
      [],
    )
    .option(
      "--key <key>",
      "the cluster key (printed by the first node); visible in ps: prefer --key-file or $STUDIO_CLUSTER_KEY",
    )
    .option(
      "--key-file <file>",
      "read the cluster key from this file (mode 600); else $STUDIO_CLUSTER_KEY, else the stored key, else a new one",
    )
    .option(
      "--peer <host:port>",
      "another node's gRPC address, where multicast does not reach (repeatable)",
      collectPeer,
      [],
    )
    .addOption(
      new Option("--backend <backend>", "engine backend").choices(["auto", "cpu", "mlx"]).default("auto"),
    )
    .option("--threads <n>", "engine threads (default: all cores)", intArg("--threads", 1, 1024))
    .addOption(
      new Option(
        "--matmul-inputs <mode>",
        "cpu backend precision: int8 quantizes 4-bit matmul inputs per group (llama.cpp's Q8 way, ~1.3x faster prefill on x86, coarser logits)",
      )
        .choices(MATMUL_INPUTS)
        .default("default"),
    )
    .addOption(
      new Option(
        "--kv-dtype <dtype>",
        "cpu backend KV cache: f16 halves its memory and prefix-cache bytes (outputs within ~1e-3 of f32)",
      )
        .choices(KV_DTYPES)
        .default("f32"),
    )
    .option(
      "--context <tokens>",
      "context length to reserve KV memory for (default: the model's maximum)",
      intArg("--context", 1, 16_777_216),
    )
    .option("--no-bonjour", "do not advertise or browse with Bonjour (use --peer)")
    .option("--interface <if>", "network interface (name or IPv4 address) for the data plane and Bonjour")
    .option(
      "--memory-bandwidth <GB/s>",
      "this machine's memory bandwidth, which the planner splits layers by (default: measured at start)",
      positiveNumber("--memory-bandwidth"),
    )
    .option(
      "--max-sequences <n>",
      "requests generating at once; more wait in the queue (default 64)",
      intArg("--max-sequences", 1, 100_000),
    )
    .option(
      "--max-queue <n>",
      "requests that may wait for a slot; more are answered 429 with retry-after (default 256)",
      intArg("--max-queue", 0, 100_000),
    )
    .option(
      "--request-timeout <seconds>",
      "longest a request may run end to end; it then ends with a timeout error (default: no limit)",
      positiveNumber("--request-timeout"),
    )
    .option(
      "--body-timeout <seconds>",
      "longest a client may take to send a whole request (headers and body); slower ones get 408",
      positiveNumber("--body-timeout"),
      30,
    )
    .option(
      "--drain-timeout <seconds>",
      "on SIGINT/SIGTERM, how long requests in flight may finish before they are failed",
      positiveNumber("--drain-timeout"),
      10,
    )
    .option(
      "--max-push-rate <MB/s>",
      "cap on the bytes per second this node sends to peers fetching weights from it (default: none)",
      positiveNumber("--max-push-rate"),
    )
    .option(
      "--prefix-cache-ram <GB>",
      "prefix cache RAM per node, 0 = no prefix cache (default: the KV memory sequences in flight leave)",
      nonNegativeNumber("--prefix-cache-ram"),
    )
    .option(
      "--prefix-cache-disk <GB>",
      "prefix cache on disk per node, 0 = none (default: half of the free disk space)",
      nonNegativeNumber("--prefix-cache-disk"),
    )
    .option(
      "--prefix-cache-dir <dir>",
      "this node's prefix cache folder (default: ~/.studio-cluster/kv-cache/<node id>)",
    )
    .option(
      "--tls-cert <pem>",
      "this node's certificate, for mutual TLS between nodes (with --tls-key, --tls-ca)",
    )
    .option("--tls-key <pem>", "this node's private key for TLS between nodes")
    .option("--tls-ca <pem>", "the cluster CA: peers must present a certificate it signed")
    .option(
      "--no-cluster-tls",
      "plaintext gRPC between nodes (default: mutual TLS with a certificate derived from the cluster key, off loopback); only on a network you trust, and on every node",
    )
    .action(async (opts: UpOptions) => {
      try {
        await runUp(opts);
        process.exit(0);
      } catch (err) {
        process.stderr.write(`cluster up: ${errorMessage(err)}\n`);
        process.exit(1);
      }
    });
}
