// The hop-latency floor of this machine: one-way latency of one activation-sized message every `gapMs` between
// two otherwise idle processes, over a raw TCP socket (no framing beyond a length) and over the product's gRPC
// Data path (the real service definition, codec and cluster-key interceptor). Both sides stamp with nowUs(), the
// clock the stages use, so the figures compare directly with a stage's inbound hop p50.
// bench/pipeline.ts runs it in the same run; `node dist/bench/hop-floor.js` runs it alone (HOP_MESSAGES,
// HOP_GAP_MS, HOP_BYTES) and prints one JSON line.
import { type ChildProcess, fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { connect, createServer, type Socket } from "node:net";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { NodeClient } from "../common/wire/client.js";
import { nowUs } from "../common/wire/frames.js";
import { serverOptions, studioNodeService } from "../common/wire/proto.js";
import { type DataFrame, type DataFrameOut, Dtype, FrameKind } from "../common/wire/types.js";
import { KeyedSurface } from "../node-agent/grpc-surface.js";
import { median, quantile, round } from "./stats.js";

export interface HopFloorOptions {
  messages?: number;
  gapMs?: number;
  payloadBytes?: number;
}

export interface LinkLatency {
  p50_us: number;
  p99_us: number;
}

export interface HopFloor {
  tcp: LinkLatency;
  grpc: LinkLatency;
  messages: number;
  gapMs: number;
  payloadBytes: number;
}

const receiverFlag = "--hop-floor-receiver";
/** The first messages warm up connections and code; they are not counted. */
const warmupMessages = 20;

interface ReceiverReady {
  tcpPort: number;
  grpcPort: number;
}

type ReceiverMessage = ReceiverReady | { link: "tcp" | "grpc"; latencies: number[] };

function percentiles(latencies: number[]): LinkLatency {
  const measured = latencies.slice(warmupMessages);
  return { p50_us: round(median(measured), 0), p99_us: round(quantile(measured, 0.99), 0) };
}

/** Spawns the receiver, sends over TCP and then over gRPC, and returns both links' percentiles. */
/** A decode step's HIDDEN frame (one token of f32 activations), as a stage writes it. */
export function decodeStepFrame(
  step: number,
  payload: Uint8Array,
  planId: string,
  sentAtUs: number,
): DataFrameOut {
  return {
    kind: FrameKind.HIDDEN,
    seq: 1,
    step,
    position: 15 + step,
    count: 1,
    dtype: Dtype.F32,
    shape: [1, payload.byteLength / 4],
    want_result: true,
    plan_id: planId,
    origin_at_us: sentAtUs,
    wave: 0,
    sampling: null,
    payload,
    chunk_index: 0,
    chunk_count: 1,
    sent_at_us: sentAtUs,
  };
}

export async function measureHopFloor(opts: HopFloorOptions = {}): Promise<HopFloor> {
  const messages = opts.messages ?? 300;
  const gapMs = opts.gapMs ?? 20;
  const payloadBytes = opts.payloadBytes ?? 8192;
  const key = randomBytes(16).toString("hex");
  const child = fork(fileURLToPath(import.meta.url), [receiverFlag, String(messages)], {
    env: { ...process.env, STUDIO_CLUSTER_KEY: key },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  try {
    const ready = (await nextMessage(child)) as ReceiverReady;
    const tcp = await sendTcp(child, ready.tcpPort, messages, gapMs, payloadBytes);
    const grpcLink = await sendGrpc(child, ready.grpcPort, key, messages, gapMs, payloadBytes);
    return { tcp, grpc: grpcLink, messages, gapMs, payloadBytes };
  } finally {
    child.kill();
  }
}

function nextMessage(child: ChildProcess): Promise<ReceiverMessage> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`hop-floor receiver exited (${code})`));
    child.once("exit", onExit);
    child.once("message", (m) => {
      child.off("exit", onExit);
      resolve(m as ReceiverMessage);
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function sendTcp(
  child: ChildProcess,
  port: number,
  messages: number,
  gapMs: number,
  payloadBytes: number,
): Promise<LinkLatency> {
  const socket = connect(port, "127.0.0.1");
  socket.setNoDelay(true);
  await new Promise((r) => socket.once("connect", r));
  const result = nextMessage(child);
  for (let i = 0; i < messages; i++) {
    // [u32 length][f64 sent_at_us][payload]: the receiver stamps on the last byte of a message.
    const message = Buffer.alloc(12 + payloadBytes);
    message.writeUInt32LE(8 + payloadBytes, 0);
    message.writeDoubleLE(nowUs(), 4);
    socket.write(message);
    await sleep(gapMs);
  }
  const reply = await result;
  socket.destroy();
  return percentiles((reply as { latencies: number[] }).latencies);
}

async function sendGrpc(
  child: ChildProcess,
  port: number,
  key: string,
  messages: number,
  gapMs: number,
  payloadBytes: number,
): Promise<LinkLatency> {
  const client = new NodeClient(`127.0.0.1:${port}`, key);
  const stream = client.data();
  stream.on("error", () => {});
  const result = nextMessage(child);
  const payload = new Uint8Array(payloadBytes);
  for (let i = 0; i < messages; i++) {
    const frame = decodeStepFrame(i + 1, payload, "hop-floor", nowUs());
    stream.write(frame);
    await sleep(gapMs);
  }
  const reply = await result;
  stream.end();
  client.close();
  return percentiles((reply as { latencies: number[] }).latencies);
}

// ------------------------------------------------------------ receiver process

function serveTcp(messages: number): Promise<number> {
  const latencies: number[] = [];
  const server = createServer((socket: Socket) => {
    socket.setNoDelay(true);
    let pending: Buffer = Buffer.alloc(0);
    socket.on("data", (data: Buffer) => {
      pending = pending.length === 0 ? data : Buffer.concat([pending, data]);
      while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32LE(0)) {
        latencies.push(nowUs() - pending.readDoubleLE(4));
        pending = pending.subarray(4 + pending.readUInt32LE(0));
        if (latencies.length === messages) process.send?.({ link: "tcp", latencies });
      }
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(portOf(server.address()))));
}

function portOf(address: ReturnType<ReturnType<typeof createServer>["address"]>): number {
  if (!address || typeof address === "string") throw new Error("hop-floor: no TCP port");
  return address.port;
}

function serveGrpc(messages: number, key: string): Promise<number> {
  const latencies: number[] = [];
  const server = new grpc.Server(serverOptions);
  // The node agent's rule (node-agent/grpc-surface.ts): the handshake Hello, then the MAC checked once per
  // Data call.
  const surface = new KeyedSurface({ clusterKey: key, nodeId: "hop-floor" }, () => {});
  server.addService(studioNodeService(), {
    Hello: surface.hello(async () => {
      throw new Error("hop-floor serves only the handshake");
    }),
    Data: surface.stream("Data", (call: grpc.ServerDuplexStream<DataFrame, DataFrameOut>) => {
      call.on("data", (frame: DataFrame) => {
        latencies.push(nowUs() - frame.sent_at_us);
        if (latencies.length === messages) process.send?.({ link: "grpc", latencies });
      });
      call.on("end", () => call.end());
      call.on("error", () => {});
    }),
  });
  return new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
}

async function receiver(messages: number): Promise<void> {
  const key = process.env.STUDIO_CLUSTER_KEY ?? "";
  const [tcpPort, grpcPort] = await Promise.all([serveTcp(messages), serveGrpc(messages, key)]);
  process.send?.({ tcpPort, grpcPort } satisfies ReceiverReady);
  process.on("disconnect", () => process.exit(0));
}

function positiveEnv(name: string, fallback: number): number {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number`);
  return value;
}

if (process.argv[2] === receiverFlag) {
  await receiver(Number(process.argv[3]));
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const floor = await measureHopFloor({
    messages: positiveEnv("HOP_MESSAGES", 300),
    gapMs: positiveEnv("HOP_GAP_MS", 20),
    payloadBytes: positiveEnv("HOP_BYTES", 8192),
  });
  console.log(
    `hop floor (${floor.messages} messages of ${floor.payloadBytes} bytes every ${floor.gapMs} ms, idle processes): raw TCP p50 ${floor.tcp.p50_us} us p99 ${floor.tcp.p99_us} us; gRPC Data p50 ${floor.grpc.p50_us} us p99 ${floor.grpc.p99_us} us`,
  );
  console.log(
    JSON.stringify({
      bench: "hop-floor",
      tcp_p50_us: floor.tcp.p50_us,
      tcp_p99_us: floor.tcp.p99_us,
      grpc_p50_us: floor.grpc.p50_us,
      grpc_p99_us: floor.grpc.p99_us,
      gap_ms: floor.gapMs,
      payload_bytes: floor.payloadBytes,
    }),
  );
}
