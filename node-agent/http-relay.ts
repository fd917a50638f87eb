// RelayHttp, the coordinator's side (docs/architecture.md "Relayed requests"): a follower's API request, which
// arrived on a call signed with the cluster key, performed against this process's own API on loopback and
// streamed back: status and headers first, then the body as it comes (SSE included). The loopback request
// carries this process's relay secret, so the API lets it through without an API key (api/server.ts); it is
// also marked as forwarded, so a node that is not the coordinator answers 503 instead of relaying it again.
import { request as httpRequest, type IncomingMessage } from "node:http";
import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import {
  FORWARDED_HEADER,
  FRAMING_RESPONSE_HEADERS,
  RELAY_TOKEN_HEADER,
  RELAYED_METHODS,
  RELAYED_REQUEST_HEADERS,
} from "../common/wire/http-relay.js";
import type { HttpHeader, RelayHttpChunk, RelayHttpRequest } from "../common/wire/types.js";
import { grpcStatus } from "./grpc-surface.js";

/** This process's API as the node agent reaches it. */
export interface HttpRelayTarget {
  /** The API's base URL on this machine, e.g. http://127.0.0.1:8080. */
  url: string;
  /** The relay secret the API was started with. */
  token: string;
}

type RelayCall = grpc.ServerWritableStream<RelayHttpRequest, RelayHttpChunk>;

function requestProblem(req: RelayHttpRequest, target: HttpRelayTarget): string | undefined {
  if (!RELAYED_METHODS.has(req.method)) return `method ${JSON.stringify(req.method)} is not relayed`;
  // An absolute path only: "//host/..." or "http://..." would leave this machine's API.
  if (!req.path.startsWith("/") || req.path.startsWith("//")) return "the path must start with a single /";
  if (new URL(req.path, target.url).origin !== new URL(target.url).origin) return "the path leaves the API";
  return undefined;
}

function requestHeaders(req: RelayHttpRequest, target: HttpRelayTarget): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const { name, value } of req.headers) {
    const lower = name.toLowerCase();
    if (RELAYED_REQUEST_HEADERS.has(lower)) headers[lower] = value;
  }
  headers[FORWARDED_HEADER] = "1";
  headers[RELAY_TOKEN_HEADER] = target.token;
  if (req.method !== "GET" && req.method !== "HEAD") headers["content-length"] = String(req.body.length);
  return headers;
}

function responseHeaders(res: IncomingMessage): HttpHeader[] {
  const out: HttpHeader[] = [];
  for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
    const name = res.rawHeaders[i].toLowerCase();
    if (!FRAMING_RESPONSE_HEADERS.has(name)) out.push({ name, value: res.rawHeaders[i + 1] });
  }
  return out;
}

/** Serves one RelayHttp call; `target` undefined: this node runs no API (a bare agent). */
export function relayHttp(
  call: RelayCall,
  target: HttpRelayTarget | undefined,
  log: (line: string) => void,
): void {
  const req = call.request;
  if (!target) {
    call.emit("error", grpcStatus(grpc.status.UNIMPLEMENTED, "this node serves no HTTP API to relay to"));
    return;
  }
  const problem = requestProblem(req, target);
  if (problem) {
    call.emit("error", grpcStatus(grpc.status.INVALID_ARGUMENT, `RelayHttp refused: ${problem}`));
    return;
  }
  let settled = false;
  const fail = (code: grpc.status, message: string): void => {
    if (settled) return;
    settled = true;
    call.emit("error", grpcStatus(code, message));
  };
  const out = httpRequest(new URL(req.path, target.url), {
    method: req.method,
    headers: requestHeaders(req, target),
  });
  // The follower's client went away (or the follower broke the relay off): the API sees its client close,
  // which cancels the generation.
  call.on("cancelled", () => {
    settled = true;
    out.destroy();
  });
  out.on("error", (err) => {
    if (!settled)
      log(`RelayHttp ${req.method} ${req.path}: this node's API did not answer: ${errorMessage(err)}`);
    fail(grpc.status.UNAVAILABLE, `the coordinator's API did not answer: ${errorMessage(err)}`);
  });
  out.on("response", (res) => {
    call.write({ status: res.statusCode ?? 502, headers: responseHeaders(res), data: Buffer.alloc(0) });
    res.on("data", (data: Buffer) => {
      // Backpressure: a slow client of the follower slows the API's writes, not this process's memory.
      if (!call.write({ status: 0, headers: [], data })) {
        res.pause();
        call.once("drain", () => res.resume());
      }
    });
    res.on("end", () => {
      if (settled) return;
      settled = true;
      call.end();
    });
    res.on("close", () => {
      if (!res.complete) fail(grpc.status.ABORTED, "the coordinator's API ended the response before its end");
    });
  });
  out.end(req.method === "GET" || req.method === "HEAD" ? undefined : Buffer.from(req.body));
}
