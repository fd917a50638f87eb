// An impostor node for test/cluster/netns-impostor.test.ts, built from the project's own wire code: it serves the
// StudioNode service (proto/cluster.proto), advertises itself over Bonjour (node-agent/advertise.ts) with a
// cluster's public id and the smallest possible node id, says Hello to the real nodes so they probe it back,
// and answers every Hello as attractively as it can (all the memory, the model present), with a proof it has to
// make up. It prints one JSON line per connection and per call it receives (method, metadata, request), and per
// attempt to replay what it captured at a real node, so the test can check that it learned nothing and was
// followed by no one.
// Its wire, by the first argument: "tls": TLS with the certificate derived from ANOTHER cluster key (the real
// certificate cannot be made without the real key), taking any client's certificate and not checking the real
// nodes' (it goes as far as the real nodes let it); "plain": plaintext gRPC.
//
// usage: node fake-node.js <tls|plain> <cluster id> <host> <grpc port> <real node host:port>...
import { randomBytes } from "node:crypto";
import * as net from "node:net";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { clusterTlsOf } from "../../common/wire/cluster-cert.js";
import { studioNodeClientConstructor, studioNodeService } from "../../common/wire/proto.js";
import type { HelloReply, HelloRequest } from "../../common/wire/types.js";
import { advertiseNode } from "../../node-agent/advertise.js";

const IMPOSTOR_ID = "0000000000000000";

const [mode, clusterId, host, portText, ...realNodes] = process.argv.slice(2);
if (mode !== "tls" && mode !== "plain") throw new Error(`fake-node: mode must be tls or plain (got ${mode})`);
const ownTls = await clusterTlsOf(generateClusterKey());
const captured: grpc.Metadata[] = [];

function report(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function record(
  method: string,
  call: { metadata: grpc.Metadata; getPeer(): string },
  request?: unknown,
): void {
  captured.push(call.metadata.clone());
  const metadata = Object.fromEntries(
    Object.entries(call.metadata.getMap()).map(([k, v]) => [k, Buffer.isBuffer(v) ? v.toString("hex") : v]),
  );
  report({ event: "call", method, peer: call.getPeer(), metadata, request: summarize(request) });
}

function summarize(request: unknown): unknown {
  if (!request || typeof request !== "object") return request;
  return Object.fromEntries(
    Object.entries(request).map(([k, v]) => [
      k,
      v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v,
    ]),
  );
}

function helloReply(): HelloReply {
  return {
    version: "0.1.0",
    node_id: IMPOSTOR_ID,
    name: "impostor",
    capabilities: {
      memory_total: 2 ** 40,
      memory_free: 2 ** 40,
      chip: "M9 Ultra",
      cores: 64,
      backends: ["cpu"],
      memory_bandwidth_bps: 2e12,
      model_present: true,
      model: null,
      platform: "linux",
      arch: "x64",
      gpu_working_set_limit: 0,
      gpu_working_set_source: "",
      memory_source: "",
      cpu_kv_dtype: "f32",
    },
    api_port: 8080,
    grpc_port: Number(portText),
    cluster_id: clusterId,
    plan_id: "",
    // It does not hold the key: the best it can do is bytes of the right length.
    nonce: randomBytes(16),
    proof: randomBytes(32),
    time_ms: Date.now(),
  };
}

function refuse(method: string) {
  return (call: grpc.ServerWritableStream<unknown, unknown>) => {
    record(method, call, call.request);
    call.emit("error", { code: grpc.status.UNAVAILABLE, details: "impostor" });
  };
}

const server = new grpc.Server();
server.addService(studioNodeService(), {
  Hello: (call: grpc.ServerUnaryCall<HelloRequest, HelloReply>, callback: grpc.sendUnaryData<HelloReply>) => {
    record("Hello", call, call.request);
    callback(null, helloReply());
  },
  LoadShard: refuse("LoadShard"),
  Status: refuse("Status"),
  Results: refuse("Results"),
  FetchTensors: refuse("FetchTensors"),
  WatchBlocks: refuse("WatchBlocks"),
  Data: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
    record("Data", call);
    call.on("data", () => {});
    call.on("error", () => {});
  },
  Release: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    record("Release", call, call.request);
    cb(null, {});
  },
  Cancel: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    record("Cancel", call, call.request);
    cb(null, {});
  },
  Fork: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    record("Fork", call, call.request);
    cb(null, {});
  },
  StashBlocks: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    record("StashBlocks", call, call.request);
    cb(null, {});
  },
  AssembleBlocks: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    record("AssembleBlocks", call, call.request);
    cb(null, {});
  },
  DropBlocks: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    record("DropBlocks", call, call.request);
    cb(null, {});
  },
});

/** Says Hello to a real node (so it adds us as a caller to probe), and replays whatever metadata we captured. */
function pester(address: string): void {
  const Ctor = studioNodeClientConstructor();
  const credentials =
    mode === "tls"
      ? grpc.credentials.createSsl(ownTls.cert, ownTls.key, ownTls.cert, {
          checkServerIdentity: () => undefined,
          rejectUnauthorized: false,
        })
      : grpc.credentials.createInsecure();
  const client = new Ctor(address, credentials);
  const hello = client.Hello as unknown as (
    req: HelloRequest,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, reply?: HelloReply) => void,
  ) => void;
  const request = {
    node_id: IMPOSTOR_ID,
    cluster_id: clusterId,
    grpc_port: Number(portText),
    nonce: randomBytes(32),
  };
  hello.call(client, request, new grpc.Metadata(), { deadline: Date.now() + 3000 }, (err, reply) => {
    report({ event: "hello-sent", address, code: err?.code ?? 0, capabilities: reply?.capabilities ?? null });
    // Replay the latest captured metadata as a capabilities Hello: with a key or a MAC it would be accepted.
    const replayed = captured.at(-1);
    if (!replayed) return client.close();
    hello.call(client, request, replayed, { deadline: Date.now() + 3000 }, (err2, reply2) => {
      report({ event: "replay", address, code: err2?.code ?? 0, capabilities: reply2?.capabilities ?? null });
      client.close();
    });
  });
}

/** Every connection is reported; over TLS, so is how far the handshake went. Then grpc-js serves it. */
function listen(onListening: () => void): void {
  const inject = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const tlsServer = tls.createServer({
    key: ownTls.key,
    cert: ownTls.cert,
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ["h2"],
  });
  tlsServer.on("secureConnection", (socket: tls.TLSSocket) => {
    report({ event: "tls-connected", peer: socket.remoteAddress });
    inject.injectConnection(socket);
  });
  tlsServer.on("tlsClientError", (err: Error, socket: tls.TLSSocket) =>
    report({ event: "tls-failed", peer: socket.remoteAddress, error: err.message }),
  );
  const listener = net.createServer((socket) => {
    report({ event: "connection", peer: socket.remoteAddress });
    socket.on("error", () => {});
    if (mode === "tls") tlsServer.emit("connection", socket);
    else inject.injectConnection(socket);
  });
  listener.listen(Number(portText), host, onListening);
}

listen(() => {
  advertiseNode({
    nodeId: IMPOSTOR_ID,
    name: "impostor",
    grpcPort: Number(portText),
    clusterId,
    version: "0.1.0",
  });
  report({ event: "listening", mode });
  const tick = () => {
    for (const address of realNodes) pester(address);
  };
  tick();
  setInterval(tick, 1000);
});
