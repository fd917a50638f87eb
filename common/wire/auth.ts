// The cluster key on the wire, without ever sending it.
//
// 1. Handshake (the server proves first). A client's first call to an address is an unsigned Hello carrying a
//    fresh 32-byte nonce. The server answers with its node id, cluster id, its epoch (16 random bytes drawn at
//    process start), its clock, and proof = HMAC(helloKey, label, client nonce, epoch, both node ids, cluster
//    id, clock). The client checks the proof before it sends anything else: a peer that cannot produce it
//    learns a nonce and nothing more, and is never called again on that client.
// 2. Every later call carries "x-cluster-auth: v1.<time ms>.<nonce>.<mac>", mac = HMAC(callKey, label, the
//    proven server's node id and epoch, the method's path, the request's bytes when the call has a single
//    request, time, nonce). The server accepts it only for itself
//    (its id and this process's epoch), for that method, within ±30 s of its own clock (the client corrects by
//    the offset it measured in the handshake), and only once (a nonce cache covering the window). A captured
//    call cannot be replayed, sent to another node, to another method, or to the same node after a restart.
// helloKey and callKey are derived from the key with distinct labels, so no value serves in two places.
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import type { HelloReply, HelloRequest } from "./types.js";

export const callAuthHeader = "x-cluster-auth";
/** Client-side marker of the handshake Hello: the interceptor removes it and sends the call unsigned. */
const handshakeMarker = "x-cluster-handshake";
const LABEL = "studio-cluster/v1";
export const NONCE_BYTES = 32;
/** How far a call's time may be from the server's clock (after the client's correction). */
export const REPLAY_WINDOW_MS = 30_000;
const HANDSHAKE_DEADLINE_MS = 5_000;

/** The two keys derived from the cluster key; the key itself is used for nothing else. */
export class ClusterSecret {
  readonly helloKey: Buffer;
  readonly callKey: Buffer;
  constructor(clusterKey: string) {
    this.helloKey = createHmac("sha256", clusterKey).update(`${LABEL} hello-proof`).digest();
    this.callKey = createHmac("sha256", clusterKey).update(`${LABEL} call-mac`).digest();
  }
}

function mac(key: Buffer, parts: Array<string | Buffer>): Buffer {
  const h = createHmac("sha256", key);
  for (const part of parts) {
    const bytes = typeof part === "string" ? Buffer.from(part, "utf8") : part;
    // Length-prefixed, so no two different part lists hash the same bytes.
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length);
    h.update(length).update(bytes);
  }
  return h.digest();
}

export interface HelloProofInput {
  clientNonce: Buffer;
  epoch: Buffer;
  clientId: string;
  serverId: string;
  clusterId: string;
  timeMs: number;
}

export function helloProof(secret: ClusterSecret, p: HelloProofInput): Buffer {
  return mac(secret.helloKey, [
    `${LABEL} hello`,
    p.clientNonce,
    p.epoch,
    p.clientId,
    p.serverId,
    p.clusterId,
    String(p.timeMs),
  ]);
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** What a client knows of a server once it proved the key. */
export interface ProvenPeer {
  nodeId: string;
  clusterId: string;
  epoch: Buffer;
  /** Server clock minus ours, measured at the handshake. */
  clockOffsetMs: number;
}

/** A peer failed the handshake: it is of another cluster, or it claims ours without holding the key. */
export class PeerProofError extends Error {
  readonly code = grpc.status.UNAUTHENTICATED;
  readonly details: string;
  readonly metadata = new grpc.Metadata();
  constructor(
    message: string,
    readonly kind: "other-cluster" | "impostor",
    readonly claimedId: string,
  ) {
    super(message);
    this.name = "PeerProofError";
    this.details = message;
  }
}

/** Checks a Hello reply's proof against the nonce we sent; throws PeerProofError naming what is wrong. */
export function verifyHelloReply(
  secret: ClusterSecret,
  ourClusterId: string,
  address: string,
  request: { nonce: Buffer; clientId: string },
  reply: HelloReply,
): void {
  const who = `${address} (node ${reply.node_id || "?"}, cluster ${reply.cluster_id || "?"})`;
  if (reply.cluster_id !== ourClusterId)
    throw new PeerProofError(`${who} belongs to another cluster`, "other-cluster", reply.node_id);
  const epoch = Buffer.from(reply.nonce ?? []);
  const proof = Buffer.from(reply.proof ?? []);
  const expected = helloProof(secret, {
    clientNonce: request.nonce,
    epoch,
    clientId: request.clientId,
    serverId: reply.node_id,
    clusterId: reply.cluster_id,
    timeMs: Number(reply.time_ms ?? 0),
  });
  if (epoch.length !== 16 || !sameBytes(proof, expected))
    throw new PeerProofError(
      `${who} claims our cluster but did not prove it holds the cluster key: ignored, never followed`,
      "impostor",
      reply.node_id,
    );
}

function callMac(
  secret: ClusterSecret,
  peer: { nodeId: string; epoch: Buffer },
  path: string,
  t: string,
  n: string,
  body: Buffer,
) {
  return mac(secret.callKey, [`${LABEL} call`, peer.nodeId, peer.epoch, path, t, n, body]);
}

/** sha256 of a request message's wire bytes: what binds a call's MAC to its contents. */
export function bodyDigest(bytes: Uint8Array): Buffer {
  return createHash("sha256").update(bytes).digest();
}

/**
 * The x-cluster-auth value for one call to a proven peer. `body`: the digest of the call's one request message
 * (unary and server-streaming calls), so an on-path change of the request fails the MAC; empty for a call that
 * streams its requests (Data), whose messages the call's MAC does not cover.
 */
export function signCall(
  secret: ClusterSecret,
  peer: ProvenPeer,
  path: string,
  body: Buffer = Buffer.alloc(0),
): string {
  const time = String(Math.round(Date.now() + peer.clockOffsetMs));
  const nonce = randomBytes(16).toString("base64url");
  return `v1.${time}.${nonce}.${callMac(secret, peer, path, time, nonce, body).toString("base64url")}`;
}

/** Where a server's deserializer leaves the digest of a request's wire bytes (withBodyDigests). */
export const BODY_DIGEST = Symbol("studio-cluster request body digest");

/**
 * The service definition with every single-request method's deserializer noting the digest of the bytes it
 * decoded on the request object, for the MAC check (the handler sees only the decoded object).
 */
export function withBodyDigests(service: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(service)) {
    if (method.requestStream) {
      out[name] = method;
      continue;
    }
    const decode = method.requestDeserialize;
    out[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        const request = decode(bytes) as object;
        Object.defineProperty(request, BODY_DIGEST, { value: bodyDigest(bytes), enumerable: false });
        return request;
      },
    };
  }
  return out;
}

/**
 * The server's side: this process's epoch, the handshake reply's proof, and the check of every signed call.
 * One per node agent server (the nonce cache is per process, the epoch makes older processes' MACs void).
 */
export class CallVerifier {
  readonly epoch = randomBytes(16);
  /** nonce -> when it may be forgotten; insertion order is expiry order. */
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly secret: ClusterSecret,
    readonly nodeId: string,
    readonly clusterId: string,
    private readonly windowMs = REPLAY_WINDOW_MS,
    private readonly maxNonces = 1_000_000,
  ) {}

  /** The fields a Hello reply adds for the caller's nonce. */
  proofFields(request: HelloRequest): { nonce: Buffer; proof: Buffer; time_ms: number } {
    const timeMs = Date.now();
    const proof = helloProof(this.secret, {
      clientNonce: Buffer.from(request.nonce ?? []),
      epoch: this.epoch,
      clientId: request.node_id ?? "",
      serverId: this.nodeId,
      clusterId: this.clusterId,
      timeMs,
    });
    return { nonce: this.epoch, proof, time_ms: timeMs };
  }

  /** Why the call is refused, or undefined when it is a fresh, valid call to this node for this method. */
  problem(metadata: grpc.Metadata, path: string, body: Buffer = Buffer.alloc(0)): string | undefined {
    const value = metadata.get(callAuthHeader)[0];
    if (value === undefined)
      return `missing ${callAuthHeader} metadata (a caller without the cluster key, or an older version)`;
    if (typeof value !== "string") return `${callAuthHeader} must be text`;
    const parts = value.split(".");
    if (parts.length !== 4 || parts[0] !== "v1") return `${callAuthHeader} is malformed`;
    const [, time, nonce, given] = parts;
    const expected = callMac(this.secret, this, path, time, nonce, body);
    if (!sameBytes(Buffer.from(given, "base64url"), expected))
      return "the call's MAC is wrong (another cluster key, another node or process, another method, or a request altered on the way)";
    const skew = Number(time) - Date.now();
    if (!Number.isFinite(skew) || Math.abs(skew) > this.windowMs)
      return `the call is ${Math.round(skew / 1000)} s off this node's clock (replayed, or clocks drifted mid-session)`;
    return this.remember(nonce);
  }

  private remember(nonce: string): string | undefined {
    const now = Date.now();
    for (const [old, expiry] of this.seen) {
      if (expiry > now) break;
      this.seen.delete(old);
    }
    if (this.seen.has(nonce)) return "the call was replayed (its nonce was already used)";
    if (this.seen.size >= this.maxNonces) return "too many calls in the replay window; retry shortly";
    this.seen.set(nonce, now + 2 * this.windowMs + 1000);
    return undefined;
  }
}

type HandshakeCall = (
  request: HelloRequest,
  metadata: grpc.Metadata,
  deadlineMs: number,
) => Promise<HelloReply>;

/**
 * A client's view of one server address: the handshake, done once and again after a refusal (the node may have
 * restarted, or another node taken its address). Its interceptor holds every call until the server is proven.
 */
export class PeerSession {
  private proving: Promise<ProvenPeer> | undefined;

  constructor(
    private readonly secret: ClusterSecret,
    private readonly clusterId: string,
    private readonly address: string,
    private readonly handshakeCall: HandshakeCall,
  ) {}

  proven(): Promise<ProvenPeer> {
    if (!this.proving) {
      this.proving = this.handshake();
      // A failed handshake is not kept: the next call tries again.
      this.proving.catch(() => this.reset());
    }
    return this.proving;
  }

  reset(): void {
    this.proving = undefined;
  }

  private async handshake(): Promise<ProvenPeer> {
    const nonce = randomBytes(NONCE_BYTES);
    const metadata = new grpc.Metadata();
    metadata.set(handshakeMarker, "1");
    const sentAt = Date.now();
    const reply = await this.handshakeCall({ nonce }, metadata, HANDSHAKE_DEADLINE_MS);
    const receivedAt = Date.now();
    verifyHelloReply(this.secret, this.clusterId, this.address, { nonce, clientId: "" }, reply);
    return {
      nodeId: reply.node_id,
      clusterId: reply.cluster_id,
      epoch: Buffer.from(reply.nonce ?? []),
      clockOffsetMs: Number(reply.time_ms) - (sentAt + receivedAt) / 2,
    };
  }

  /** Signs every call made through the client once the server is proven; fails it if it cannot be. */
  interceptor(): grpc.Interceptor {
    return (options, nextCall) => {
      /** For a single-request call: signs it once its message is known (metadata waits until then). */
      let signBody: ((message: unknown) => Promise<boolean>) | undefined;
      return new grpc.InterceptingCall(nextCall(options), {
        start: (metadata, listener, next) => {
          // A refusal may mean the node restarted (new epoch): prove it again before the next call.
          const watched = {
            ...listener,
            onReceiveStatus: (status: grpc.StatusObject) => {
              if (status.code === grpc.status.UNAUTHENTICATED) this.reset();
              listener.onReceiveStatus(status);
            },
          };
          if (metadata.get(handshakeMarker).length > 0) {
            metadata.remove(handshakeMarker);
            next(metadata, watched);
            return;
          }
          const definition = options.method_definition;
          const sign = (body?: Buffer) =>
            this.proven().then(
              (peer) => {
                metadata.set(callAuthHeader, signCall(this.secret, peer, definition.path, body));
                next(metadata, watched);
                return true;
              },
              (err: Error & { code?: number }) => {
                listener.onReceiveStatus({
                  code: typeof err.code === "number" ? err.code : grpc.status.UNAVAILABLE,
                  details: `${this.address}: ${err.message}`,
                  metadata: new grpc.Metadata(),
                });
                return false;
              },
            );
          // A call that streams its requests is signed now; one with a single request waits for it (below).
          if (definition.requestStream) void sign();
          else signBody = (message) => sign(bodyDigest(definition.requestSerialize(message)));
        },
        sendMessage: (message, next) => {
          const signing = signBody;
          signBody = undefined;
          if (!signing) return next(message);
          void signing(message).then((ok) => {
            if (ok) next(message);
          });
        },
      });
    };
  }
}

/** The status a server answers with when a call's authentication is missing or wrong. */
export function unauthenticatedStatus(problem: string): grpc.ServiceError {
  const err = new Error(`cluster key refused: ${problem}`) as grpc.ServiceError;
  err.code = grpc.status.UNAUTHENTICATED;
  err.details = `cluster key refused: ${problem}`;
  err.metadata = new grpc.Metadata();
  return err;
}
