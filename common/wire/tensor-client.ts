// The FetchTensors call (weights moving between nodes, docs/weights.md) on a channel of its own: the same
// credentials and key handshake as every other call (tls.ts, auth.ts), but its own HTTP/2 connection with a large
// flow-control window, so a bulk transfer neither shares a window with the latency-bound Data streams nor
// stalls on the 64 KiB default.
import * as grpc from "@grpc/grpc-js";
import { clusterIdOf } from "../cluster-key.js";
import { ClusterSecret, PeerSession } from "./auth.js";
import { channelOptions, studioNodeService } from "./proto.js";
import { withTensorChunkCodec } from "./tensor-chunk.js";
import { channelCredentials } from "./tls.js";
import type { FetchTensorsRequest, HelloReply, HelloRequest, TensorChunk } from "./types.js";

/** Receive window of the bulk channel: several chunks in flight on a fast link. */
const bulkWindowBytes = 16 * 1024 * 1024;

interface RawTensorClient extends grpc.Client {
  Hello(
    request: HelloRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, reply: unknown) => void,
  ): grpc.ClientUnaryCall;
  FetchTensors(
    request: FetchTensorsRequest,
    options?: grpc.CallOptions,
  ): grpc.ClientReadableStream<TensorChunk>;
}

export class TensorClient {
  private readonly raw: RawTensorClient;

  constructor(
    readonly address: string,
    clusterKey: string,
  ) {
    // Its own handshake on its own connection: the Hello goes over the bulk channel too.
    const session = new PeerSession(
      new ClusterSecret(clusterKey),
      clusterIdOf(clusterKey),
      address,
      (request, metadata, deadlineMs) =>
        new Promise((resolve, reject) => {
          this.raw.Hello(request, metadata, { deadline: Date.now() + deadlineMs }, (err, reply) =>
            err ? reject(err) : resolve(reply as HelloReply),
          );
        }),
    );
    // Chunks decoded by hand: the payload stays a view of the received message (common/wire/tensor-chunk.ts).
    const Ctor = grpc.makeGenericClientConstructor(withTensorChunkCodec(studioNodeService()), "StudioNode");
    this.raw = new Ctor(address, channelCredentials(address), {
      ...channelOptions,
      "grpc-node.flow_control_window": bulkWindowBytes,
      // A connection of its own, never the pooled one the control and data calls use.
      "grpc.use_local_subchannel_pool": 1,
      interceptors: [session.interceptor()],
    }) as unknown as RawTensorClient;
  }

  fetchTensors(request: FetchTensorsRequest): grpc.ClientReadableStream<TensorChunk> {
    return this.raw.FetchTensors(request);
  }

  close(): void {
    this.raw.close();
  }
}
