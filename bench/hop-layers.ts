// Where one gRPC Data hop spends its time: timestamps at each layer of the product's Data path between two
// processes, one activation-sized frame every HOP_GAP_MS (default 20, a decode token's pace). A diagnostic for
// bench/RESULTS.md, not a contract: it hooks two grpc-js internals (the server call's HTTP/2 data handler and
// the subchannel call's send), so a grpc-js upgrade may need it adjusted; it says so when a hook is missing.
//   node dist/bench/hop-layers.js      (HOP_MESSAGES, HOP_GAP_MS, HOP_BYTES)
// Layers, all on the clock the stages use (nowUs):
//   stamp -> write() returns        sender: grpc-js write path down to the (deferred) framing
//   write() -> subchannel send      sender: grpc-js filters, framing, retry buffer (microtasks)
//   subchannel send -> HTTP/2 data  both: node http2 + socket write, kernel, receiver wake-up, nghttp2 parse
//   HTTP/2 data -> decode           receiver: grpc-js message decoder, read queue (a microtask)
//   decode                          receiver: the DataFrame codec
//   decode -> handler               receiver: grpc-js listener, stream 'data'
import { fork } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { NodeClient } from "../common/wire/client.js";
import { nowUs } from "../common/wire/frames.js";
import { serverOptions, studioNodeService } from "../common/wire/proto.js";
import type { DataFrame, DataFrameOut } from "../common/wire/types.js";
import { KeyedSurface } from "../node-agent/grpc-surface.js";
import { decodeStepFrame } from "./hop-floor.js";
import { median, round } from "./stats.js";

const receiverFlag = "--hop-layers-receiver";
const warmupMessages = 20;
const require = createRequire(import.meta.url);

type Method = (this: unknown, ...args: unknown[]) => unknown;

/** Wraps a grpc-js internal method so `before` runs first; throws naming the hook when it is gone. */
function hook(modulePath: string, className: string, method: string, before: () => void): void {
  const mod = require(modulePath) as Record<string, { prototype: Record<string, Method> } | undefined>;
  const proto = mod[className]?.prototype;
  const original = proto?.[method];
  if (!proto || typeof original !== "function")
    throw new Error(
      `hop-layers: ${className}.${method} is not in ${modulePath} (grpc-js changed); adjust the hook`,
    );
  proto[method] = function (this: unknown, ...args: unknown[]) {
    before();
    return original.apply(this, args);
  };
}

interface ReceiverRow {
  sent: number;
  h2: number;
  decodeStart: number;
  decodeEnd: number;
  handler: number;
}

async function receiver(messages: number): Promise<void> {
  let row: Partial<ReceiverRow> = {};
  const rows: ReceiverRow[] = [];
  hook(
    "@grpc/grpc-js/build/src/server-interceptors.js",
    "BaseServerInterceptingCall",
    "handleDataFrame",
    () => {
      row = { h2: nowUs() };
    },
  );
  const service = studioNodeService();
  const decode = service.Data.requestDeserialize;
  const timed = {
    ...service,
    Data: {
      ...service.Data,
      requestDeserialize: (buf: Buffer) => {
        row.decodeStart = nowUs();
        const frame = decode(buf);
        row.decodeEnd = nowUs();
        return frame;
      },
    },
  };
  const server = new grpc.Server(serverOptions);
  // The handshake Hello the client makes before its Data call (node-agent/grpc-surface.ts); Data itself is
  // not checked here, so the timings show the transport alone.
  const surface = new KeyedSurface({ clusterKey: "hop-layers", nodeId: "hop-layers" }, () => {});
  server.addService(timed, {
    Hello: surface.hello(async () => {
      throw new Error("hop-layers serves only the handshake");
    }),
    Data: (call: grpc.ServerDuplexStream<DataFrame, DataFrameOut>) => {
      call.on("data", (frame: DataFrame) => {
        rows.push({ ...(row as ReceiverRow), handler: nowUs(), sent: frame.sent_at_us });
        if (rows.length === messages) process.send?.(rows);
      });
      call.on("error", () => {});
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  process.send?.({ port });
  process.on("disconnect", () => process.exit(0));
}

async function sender(messages: number, gapMs: number, payloadBytes: number): Promise<void> {
  const subchannelSends: number[] = [];
  hook("@grpc/grpc-js/build/src/subchannel-call.js", "Http2SubchannelCall", "sendMessageWithContext", () =>
    subchannelSends.push(nowUs()),
  );
  const child = fork(fileURLToPath(import.meta.url), [receiverFlag, String(messages)], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  try {
    const { port } = await new Promise<{ port: number }>((resolve) => child.once("message", resolve));
    const rowsPromise = new Promise<ReceiverRow[]>((resolve) => child.once("message", resolve));
    // The receiver does not check the MAC; the sender still signs its call, as stages do.
    const client = new NodeClient(`127.0.0.1:${port}`, "hop-layers");
    const stream = client.data();
    stream.on("error", () => {});
    const writeReturns: number[] = [];
    const payload = new Uint8Array(payloadBytes);
    for (let i = 0; i < messages; i++) {
      const sentAt = nowUs();
      stream.write(decodeStepFrame(i + 1, payload, "hop-layers", sentAt));
      writeReturns.push(nowUs() - sentAt);
      await new Promise((r) => setTimeout(r, gapMs));
    }
    const rows = (await rowsPromise).slice(warmupMessages);
    const sends = subchannelSends.slice(warmupMessages);
    const writes = writeReturns.slice(warmupMessages);
    const at = (f: (r: ReceiverRow, i: number) => number): number => round(median(rows.map(f)), 0);
    const layers = {
      write_returns_us: round(median(writes), 0),
      write_to_subchannel_us: at((r, i) => sends[i] - r.sent - writes[i]),
      subchannel_to_http2_data_us: at((r, i) => r.h2 - sends[i]),
      http2_data_to_decode_us: at((r) => r.decodeStart - r.h2),
      decode_us: at((r) => r.decodeEnd - r.decodeStart),
      decode_to_handler_us: at((r) => r.handler - r.decodeEnd),
      total_us: at((r) => r.handler - r.sent),
    };
    console.log(
      `gRPC Data hop by layer (${messages} frames of ${payloadBytes} bytes every ${gapMs} ms, medians): stamp -> write() returns ${layers.write_returns_us} us; -> subchannel send ${layers.write_to_subchannel_us} us; -> receiver's HTTP/2 data ${layers.subchannel_to_http2_data_us} us; -> decode ${layers.http2_data_to_decode_us} us; decode ${layers.decode_us} us; -> handler ${layers.decode_to_handler_us} us; total ${layers.total_us} us`,
    );
    console.log(
      JSON.stringify({ bench: "hop-layers", gap_ms: gapMs, payload_bytes: payloadBytes, ...layers }),
    );
    stream.end();
    client.close();
  } finally {
    child.kill();
  }
}

function positiveEnv(name: string, fallback: number): number {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number`);
  return value;
}

if (process.argv[2] === receiverFlag) await receiver(Number(process.argv[3]));
else
  await sender(
    positiveEnv("HOP_MESSAGES", 300),
    positiveEnv("HOP_GAP_MS", 20),
    positiveEnv("HOP_BYTES", 8192),
  );
