// What every StudioNode method shares on the server side: the check of the call's MAC before the method runs (a
// refused call is logged with its peer; common/wire/auth.ts), the handshake Hello, errors as gRPC statuses,
// and small helpers for peers and frames.
import * as grpc from "@grpc/grpc-js";
import { clusterIdOf } from "../common/cluster-key.js";
import { errorMessage } from "../common/errors.js";
import {
  BODY_DIGEST,
  CallVerifier,
  ClusterSecret,
  callAuthHeader,
  NONCE_BYTES,
  unauthenticatedStatus,
} from "../common/wire/auth.js";
import { nowUs } from "../common/wire/frames.js";
import {
  type DataFrame,
  type DataFrameOut,
  FrameKind,
  type HelloReply,
  type HelloRequest,
} from "../common/wire/types.js";

/** What every server call offers (grpc-js does not export its own name for it). */
export interface SurfaceCall {
  readonly metadata: grpc.Metadata;
  getPeer(): string;
  getPath(): string;
}

export interface SurfaceIdentity {
  clusterKey: string;
  nodeId: string;
}

export class KeyedSurface {
  private readonly verifier: CallVerifier;

  constructor(
    identity: SurfaceIdentity,
    private readonly log: (line: string) => void,
  ) {
    const secret = new ClusterSecret(identity.clusterKey);
    // The cluster id is the key's public digest, whatever the caller configured: the proof covers it.
    this.verifier = new CallVerifier(secret, identity.nodeId, clusterIdOf(identity.clusterKey));
  }

  private refused(method: string, call: SurfaceCall): grpc.ServiceError | undefined {
    // A single-request call's MAC covers its request's bytes (withBodyDigests put their digest on it).
    const request = (call as { request?: Record<symbol, unknown> }).request;
    const body = request?.[BODY_DIGEST];
    const problem = this.verifier.problem(
      call.metadata,
      call.getPath(),
      Buffer.isBuffer(body) ? body : undefined,
    );
    if (!problem) return undefined;
    this.log(`refused ${method} from ${call.getPeer()}: ${problem}`);
    return unauthenticatedStatus(problem);
  }

  /**
   * Hello: unsigned, it is the handshake and gets only the node's id, cluster id and proof (nothing a caller
   * without the key may learn more of); signed, it runs body for the full identity and capabilities. Both
   * replies carry the proof over the caller's nonce.
   */
  hello(
    body: (req: HelloRequest, call: grpc.ServerUnaryCall<HelloRequest, HelloReply>) => Promise<HelloReply>,
  ): grpc.handleUnaryCall<HelloRequest, HelloReply> {
    return (call, callback) => {
      const nonce = call.request.nonce;
      if (!nonce || nonce.length !== NONCE_BYTES) {
        const problem = `Hello needs a ${NONCE_BYTES}-byte nonce (the caller runs an older version)`;
        this.log(`refused Hello from ${call.getPeer()}: ${problem}`);
        callback(grpcStatus(grpc.status.UNAUTHENTICATED, problem));
        return;
      }
      const proof = this.verifier.proofFields(call.request);
      if (call.metadata.get(callAuthHeader).length === 0) {
        callback(null, this.handshakeReply(proof));
        return;
      }
      const refusal = this.refused("Hello", call);
      if (refusal) {
        callback(refusal);
        return;
      }
      body(call.request, call).then(
        (reply) =>
          callback(null, {
            ...reply,
            node_id: this.verifier.nodeId,
            cluster_id: this.verifier.clusterId,
            ...proof,
          }),
        (err) => callback(asStatus(err)),
      );
    };
  }

  private handshakeReply(proof: Pick<HelloReply, "nonce" | "proof" | "time_ms">): HelloReply {
    return {
      version: "",
      node_id: this.verifier.nodeId,
      name: "",
      capabilities: null,
      api_port: 0,
      grpc_port: 0,
      cluster_id: this.verifier.clusterId,
      plan_id: "",
      ...proof,
    };
  }

  /** A unary handler that runs body only for a caller holding the key; body's rejection becomes a status. */
  unary<Req, Res>(
    method: string,
    body: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const refusal = this.refused(method, call);
      if (refusal) {
        callback(refusal);
        return;
      }
      body(call.request, call).then(
        (reply) => callback(null, reply),
        (err) => callback(asStatus(err)),
      );
    };
  }

  /** A streaming handler that runs body only for a caller holding the key. */
  stream<C extends SurfaceCall & NodeJS.EventEmitter>(
    method: string,
    body: (call: C) => void,
  ): (call: C) => void {
    return (call) => {
      const refusal = this.refused(method, call);
      if (refusal) {
        call.emit("error", refusal);
        return;
      }
      try {
        body(call);
      } catch (err) {
        call.emit("error", asStatus(err));
      }
    };
  }
}

export function grpcStatus(code: grpc.status, message: string): grpc.ServiceError {
  const err = new Error(message) as grpc.ServiceError;
  err.code = code;
  err.details = message;
  err.metadata = new grpc.Metadata();
  return err;
}

/** A thrown value as a status: one that already is keeps its code, anything else is INTERNAL. */
export function asStatus(err: unknown): grpc.ServiceError {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "number" && (err as { details?: unknown }).details !== undefined)
    return err as grpc.ServiceError;
  return grpcStatus(grpc.status.INTERNAL, errorMessage(err));
}

/** The host of a grpc-js peer string: "1.2.3.4:5678", "[::1]:5678", "ipv4:1.2.3.4:5678" or "ipv6:[::1]:5678". */
export function peerHost(peer: string): string | undefined {
  const bare = peer.replace(/^ipv[46]:/, "");
  const v6 = /^\[([^\]]+)\]:\d+$/.exec(bare);
  if (v6) return v6[1].startsWith("::ffff:") ? v6[1].slice(7) : v6[1];
  const v4 = /^([^:]+):\d+$/.exec(bare);
  return v4?.[1];
}

/** The ERROR frame answering a frame this node cannot attribute to its work. */
export function refusalFrame(frame: DataFrame, message: string, code = "cluster_not_ready"): DataFrameOut {
  return {
    kind: FrameKind.ERROR,
    seq: frame.seq,
    step: frame.step,
    error_code: code,
    error: message,
    sent_at_us: nowUs(),
  };
}
