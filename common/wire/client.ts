// A typed StudioNode client: the server proves the cluster key before any call goes out, and every call is signed
// for that server (auth.ts; the key itself never travels); unary calls return Promises, streams stay grpc-js
// streams. Used by the coordinator (control + data) and by stages (their downstream Data stream).
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { clusterIdOf } from "../cluster-key.js";
import { ClusterSecret, NONCE_BYTES, PeerSession, type ProvenPeer, verifyHelloReply } from "./auth.js";
import { channelOptions, studioNodeClientConstructor } from "./proto.js";
import { channelCredentials } from "./tls.js";
import type {
  AssembleBlocksReply,
  AssembleBlocksRequest,
  BlockEvents,
  CancelReply,
  DataFrame,
  DataFrameOut,
  DropBlocksReply,
  DropBlocksRequest,
  ForkRequest,
  HelloReply,
  HelloRequest,
  LoadProgress,
  LoadShardRequest,
  NodeStatus,
  RelayHttpChunk,
  RelayHttpRequest,
  ReleaseReply,
  ResultsRequest,
  SeqsRequest,
  StashBlocksReply,
  StashBlocksRequest,
  StatusRequest,
} from "./types.js";

type MetadataUnary = (
  request: object,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, reply: unknown) => void,
) => grpc.ClientUnaryCall;

type UnaryMethod = (
  request: object,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, reply: unknown) => void,
) => grpc.ClientUnaryCall;

interface RawClient extends grpc.Client {
  Hello: UnaryMethod;
  Release: UnaryMethod;
  Cancel: UnaryMethod;
  Fork: UnaryMethod;
  LoadShard(request: LoadShardRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<LoadProgress>;
  Status(request: StatusRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<NodeStatus>;
  Data(options?: grpc.CallOptions): grpc.ClientDuplexStream<DataFrameOut, DataFrame>;
  Results(request: ResultsRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<DataFrame>;
  StashBlocks: UnaryMethod;
  AssembleBlocks: UnaryMethod;
  DropBlocks: UnaryMethod;
  WatchBlocks(
    request: { plan_id: string },
    options?: grpc.CallOptions,
  ): grpc.ClientReadableStream<BlockEvents>;
  RelayHttp(request: RelayHttpRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<RelayHttpChunk>;
}

export type DataStream = grpc.ClientDuplexStream<DataFrameOut, DataFrame>;

const unaryDeadlineMs = 10_000;

export class NodeClient {
  readonly address: string;
  private readonly raw: RawClient;
  private readonly secret: ClusterSecret;
  private readonly clusterId: string;
  private readonly session: PeerSession;

  constructor(address: string, clusterKey: string) {
    this.address = address;
    this.secret = new ClusterSecret(clusterKey);
    this.clusterId = clusterIdOf(clusterKey);
    this.session = new PeerSession(this.secret, this.clusterId, address, (request, metadata, deadlineMs) =>
      this.unary(this.raw.Hello, request, deadlineMs, metadata),
    );
    const Ctor = studioNodeClientConstructor();
    this.raw = new Ctor(address, channelCredentials(address), {
      ...channelOptions,
      interceptors: [this.session.interceptor()],
    }) as unknown as RawClient;
  }

  private unary<T>(
    method: UnaryMethod,
    request: object,
    deadlineMs: number,
    metadata = new grpc.Metadata(),
  ): Promise<T> {
    return new Promise((resolve, reject) => {
      const callback = (err: grpc.ServiceError | null, reply: unknown) => {
        if (err) reject(err);
        else resolve(reply as T);
      };
      (method as unknown as MetadataUnary).call(
        this.raw,
        request,
        metadata,
        { deadline: Date.now() + deadlineMs },
        callback,
      );
    });
  }

  /**
   * The handshake alone: resolves with the server's proven identity, rejects with PeerProofError when it is of
   * another cluster or cannot prove the key (or with the call's error when it is unreachable).
   */
  prove(): Promise<ProvenPeer> {
    return this.session.proven();
  }

  /** Identity and capabilities (a signed call), its reply checked against a fresh nonce of ours. */
  async hello(request: HelloRequest = {}, deadlineMs = unaryDeadlineMs): Promise<HelloReply> {
    const nonce = randomBytes(NONCE_BYTES);
    const reply = await this.unary<HelloReply>(this.raw.Hello, { ...request, nonce }, deadlineMs);
    const clientId = request.node_id ?? "";
    verifyHelloReply(this.secret, this.clusterId, this.address, { nonce, clientId }, reply);
    return reply;
  }

  release(request: SeqsRequest, deadlineMs = unaryDeadlineMs): Promise<ReleaseReply> {
    return this.unary(this.raw.Release, request, deadlineMs);
  }

  cancel(request: SeqsRequest, deadlineMs = unaryDeadlineMs): Promise<CancelReply> {
    return this.unary(this.raw.Cancel, request, deadlineMs);
  }

  fork(request: ForkRequest, deadlineMs = unaryDeadlineMs): Promise<void> {
    return this.unary(this.raw.Fork, request, deadlineMs);
  }

  /** Streams progress to onProgress; resolves with the final (done) message, rejects on error. */
  loadShard(request: LoadShardRequest, onProgress?: (p: LoadProgress) => void): Promise<LoadProgress> {
    return new Promise((resolve, reject) => {
      const call = this.raw.LoadShard(request);
      let final: LoadProgress | undefined;
      call.on("data", (p: LoadProgress) => {
        if (p.done) final = p;
        else if (!p.error) onProgress?.(p);
      });
      call.on("error", reject);
      call.on("end", () => {
        if (final) resolve(final);
        else reject(new Error(`LoadShard on ${this.address} ended without a done message`));
      });
    });
  }

  /** hopsSinceUs: hop figures over frames received since then only (wall clock, us); 0 = the last minute. */
  status(intervalMs = 1000, hopsSinceUs = 0): grpc.ClientReadableStream<NodeStatus> {
    return this.raw.Status({ interval_ms: intervalMs, hops_since_us: hopsSinceUs });
  }

  data(): DataStream {
    return this.raw.Data();
  }

  results(planId: string): grpc.ClientReadableStream<DataFrame> {
    return this.raw.Results({ plan_id: planId });
  }

  // Prefix-cache blocks. Copies and reads from disk take longer than a control call: a minute is the bound.

  stashBlocks(request: StashBlocksRequest, deadlineMs = 60_000): Promise<StashBlocksReply> {
    return this.unary(this.raw.StashBlocks, request, deadlineMs);
  }

  assembleBlocks(request: AssembleBlocksRequest, deadlineMs = 60_000): Promise<AssembleBlocksReply> {
    return this.unary(this.raw.AssembleBlocks, request, deadlineMs);
  }

  dropBlocks(request: DropBlocksRequest, deadlineMs = 60_000): Promise<DropBlocksReply> {
    return this.unary(this.raw.DropBlocks, request, deadlineMs);
  }

  watchBlocks(planId: string): grpc.ClientReadableStream<BlockEvents> {
    return this.raw.WatchBlocks({ plan_id: planId });
  }

  /** A follower's HTTP request, performed by this node against its own API (common/wire/http-relay.ts). */
  relayHttp(request: RelayHttpRequest): grpc.ClientReadableStream<RelayHttpChunk> {
    return this.raw.RelayHttp(request);
  }

  close(): void {
    this.raw.close();
  }
}
