// A follower's HTTP API relayed to the coordinator over the gRPC plane (RelayHttp in proto/cluster.proto;
// docs/architecture.md "Relayed requests"): what both ends agree on. The follower side is api/forward.ts, the
// coordinator side node-agent/http-relay.ts.
import type * as grpc from "@grpc/grpc-js";
import type { NodeClient } from "./client.js";
import { maxMessageBytes } from "./proto.js";
import type { RelayHttpChunk, RelayHttpRequest } from "./types.js";

/** Marks a relayed request so that it is never relayed twice (two nodes that each take the other for coordinator). */
export const FORWARDED_HEADER = "x-studio-cluster-forwarded";
/**
 * On the loopback request a node agent makes for RelayHttp: this process's relay secret (drawn at start, known
 * to nobody else). The API lets such a request through without an API key, and refuses any other use of it.
 */
export const RELAY_TOKEN_HEADER = "x-studio-cluster-relay";
/** The request headers a relay carries: what the API reads besides the key (which a relay never carries). */
export const RELAYED_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  "content-type",
  "accept",
  "openai-organization",
  "openai-project",
  "anthropic-version",
  "anthropic-beta",
]);
/**
 * Response headers that describe one HTTP connection's framing, not the answer: the coordinator's agent drops
 * them from what it relays, and the follower again from what it receives (it frames the body itself and does
 * not take its framing from a peer).
 */
export const FRAMING_RESPONSE_HEADERS: ReadonlySet<string> = new Set([
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "content-encoding",
]);
/** Methods the API serves; a relay of anything else is refused. */
export const RELAYED_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "POST", "DELETE"]);
/** Largest relayed body: the request travels as one gRPC message (its MAC covers it whole). */
export const RELAY_BODY_LIMIT = maxMessageBytes - 64 * 1024;

/** The coordinator, as a follower's API reaches it. */
export interface CoordinatorRelay {
  /** Same key = same coordinator (a relay in flight is broken off once the follower's coordinator changes). */
  readonly key: string;
  /** Who answers, for the x-studio-cluster-relayed-from header and error messages: "name (id) at host:port". */
  readonly label: string;
  open(request: RelayHttpRequest): grpc.ClientReadableStream<RelayHttpChunk>;
}

/** The key of the relay to this coordinator (CoordinatorRelay.key). */
export function relayKey(coordinator: { nodeId: string; address: string }): string {
  return `${coordinator.nodeId}@${coordinator.address}`;
}

/** The relay to a coordinator through a NodeClient of its gRPC address. */
export function nodeRelay(
  client: NodeClient,
  coordinator: { nodeId: string; name: string; address: string },
): CoordinatorRelay {
  return {
    key: relayKey(coordinator),
    label: `${coordinator.name} (${coordinator.nodeId}) at ${coordinator.address}`,
    open: (request) => client.relayHttp(request),
  };
}
