#!/usr/bin/env node
// A node agent as its own process (tests, benches, service managers): prints one JSON line with its port once
// it listens, serves until SIGTERM/SIGINT. The key comes from --key or STUDIO_CLUSTER_KEY (the environment keeps
// it out of `ps`).
import { parseArgs } from "node:util";
import { type BackendChoice, isKvDtype, isMatmulInputs } from "../common/engine-api.js";
import { clusterTlsOf } from "../common/wire/cluster-cert.js";
import { loadWireTls, useClusterTls, useWireTls, wireTlsFilesOf } from "../common/wire/tls.js";
import { startNodeAgent } from "./server.js";

function usage(problem: string): never {
  console.error(`node-agent: ${problem}`);
  console.error(
    "usage: node-agent --model DIR [--host 127.0.0.1] [--port 0] [--key KEY] [--node-id ID] [--name NAME] [--cluster-id ID] [--backend auto|cpu|mlx] [--threads N] [--matmul-inputs default|int8] [--kv-dtype f32|f16] [--cache-dir DIR [--cache-disk-bytes N]] [--stdin-lifeline] [--tls-cert PEM --tls-key PEM --tls-ca PEM | --no-cluster-tls]",
  );
  process.exit(2);
}

function intOption(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) usage(`--${name} must be a non-negative integer (got "${value}")`);
  return n;
}

const { values } = parseArgs({
  options: {
    model: { type: "string" },
    host: { type: "string" },
    port: { type: "string" },
    key: { type: "string" },
    "node-id": { type: "string" },
    name: { type: "string" },
    "cluster-id": { type: "string" },
    backend: { type: "string" },
    threads: { type: "string" },
    "matmul-inputs": { type: "string" },
    "kv-dtype": { type: "string" },
    "cache-dir": { type: "string" },
    "cache-disk-bytes": { type: "string" },
    "stdin-lifeline": { type: "boolean" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
    "tls-ca": { type: "string" },
    "no-cluster-tls": { type: "boolean" },
  },
  strict: true,
});

const key = values.key ?? process.env.STUDIO_CLUSTER_KEY;
if (!values.model) usage("--model is required");
if (!key) usage("a cluster key is required (--key or STUDIO_CLUSTER_KEY)");
const backend = (values.backend ?? "auto") as BackendChoice;
if (!["auto", "cpu", "mlx"].includes(backend)) usage(`--backend must be auto, cpu or mlx (got "${backend}")`);
const port = intOption(values.port, "port", 0);
const threads = intOption(values.threads, "threads", 0);
const matmulInputs = values["matmul-inputs"] ?? "default";
if (!isMatmulInputs(matmulInputs)) usage(`--matmul-inputs must be default or int8 (got "${matmulInputs}")`);
const kvDtype = values["kv-dtype"] ?? "f32";
if (!isKvDtype(kvDtype)) usage(`--kv-dtype must be f32 or f16 (got "${kvDtype}")`);
const cacheDiskBytes =
  values["cache-disk-bytes"] === undefined
    ? undefined
    : intOption(values["cache-disk-bytes"], "cache-disk-bytes", 0);
const nodeId = values["node-id"] ?? `node-${process.pid}`;
try {
  const tlsFiles = wireTlsFilesOf({
    tlsCert: values["tls-cert"],
    tlsKey: values["tls-key"],
    tlsCa: values["tls-ca"],
  });
  if (tlsFiles) useWireTls(loadWireTls(tlsFiles));
} catch (err) {
  usage((err as Error).message);
}
// The default, as with `cluster up`: TLS derived from the cluster key off loopback.
if (!values["tls-cert"] && !values["no-cluster-tls"]) useClusterTls(await clusterTlsOf(key));

const agent = await startNodeAgent({
  modelDir: values.model,
  grpcHost: values.host ?? "127.0.0.1",
  grpcPort: port,
  clusterKey: key,
  nodeId,
  name: values.name ?? nodeId,
  clusterId: values["cluster-id"] ?? "",
  backend,
  threads: threads || undefined,
  matmulInputs,
  kvDtype,
  cacheDir: values["cache-dir"],
  cacheDiskBytes,
});
console.log(JSON.stringify({ event: "listening", port: agent.port, nodeId, pid: process.pid }));

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  agent.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
}
for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, stop);
// A parent that spawned us with a pipe on stdin (tests, benches) ends us by going away, even if it crashes.
if (values["stdin-lifeline"]) {
  process.stdin.on("end", stop);
  process.stdin.on("error", stop);
  process.stdin.resume();
}
