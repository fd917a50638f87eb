// A node that is not the coordinator passes every /v1 request on to the one that is, over the cluster's gRPC
// plane (RelayHttp: TLS and the cluster key's signed calls; docs/architecture.md "Relayed requests"), streaming
// the answer back untouched (SSE included). The coordinator's API may listen on its loopback only. Closing the
// client cancels the call, which aborts the coordinator's loopback request and so the generation. A stream the
// coordinator breaks off (it died) still ends as the README promises: whole events only are relayed, then the
// API's terminal error event (and `[DONE]` on the chat APIs).
import type { ServerResponse } from "node:http";
import { Readable } from "node:stream";
import type { FastifyReply, FastifyRequest } from "fastify";
import {
  type CoordinatorRelay,
  FORWARDED_HEADER,
  FRAMING_RESPONSE_HEADERS,
  RELAY_BODY_LIMIT,
  RELAYED_REQUEST_HEADERS,
} from "../common/wire/http-relay.js";
import type { HttpHeader, RelayHttpChunk } from "../common/wire/types.js";
import { apiError, sendApiError } from "./errors.js";
import { headersSetOn } from "./sse.js";

export { FORWARDED_HEADER };
/** On a relayed response: the coordinator that answered it ("name (id) at host:port"), so a client can tell. */
export const RELAYED_FROM_HEADER = "x-studio-cluster-relayed-from";

/** How often a relay checks that its coordinator is still this node's coordinator. */
const COORDINATOR_CHECK_MS = 250;

/** A header value as HTTP allows it (a node's name is the user's text). */
function headerSafe(value: string): string {
  return value.replace(/[^\x20-\x7e]/g, "?");
}

/** The first message of a relay: status and headers, or why there is none. */
function firstChunk(call: Readable): Promise<RelayHttpChunk> {
  return new Promise((resolve, reject) => {
    const onData = (chunk: RelayHttpChunk) => {
      done();
      call.pause();
      resolve(chunk);
    };
    const onError = (err: Error) => {
      done();
      reject(err);
    };
    const onEnd = () => {
      done();
      reject(new Error("the relay ended before the coordinator's API answered"));
    };
    const done = () => {
      call.off("data", onData);
      call.off("error", onError);
      call.off("end", onEnd);
    };
    call.on("data", onData);
    call.once("error", onError);
    call.once("end", onEnd);
  });
}

/** gRPC's message for a failed call, without its "14 UNAVAILABLE: " prefix. */
export function callMessage(err: Error): string {
  return (err as { details?: string }).details || err.message;
}

/**
 * `stillCoordinator` says whether the relay's coordinator is still this node's coordinator: once it is not (lost
 * after a heartbeat timeout, or replaced), the relay is broken off and a stream ends with its terminal error
 * event. A coordinator that hangs or is cut off never fails the connection, so without this a relayed stream
 * would wait forever.
 */
export async function forwardRequest(
  request: FastifyRequest,
  reply: FastifyReply,
  relay: CoordinatorRelay,
  stillCoordinator: () => boolean = () => true,
): Promise<void> {
  const hasBody = request.method !== "GET" && request.method !== "HEAD";
  const body = hasBody ? Buffer.from(JSON.stringify(request.body ?? {})) : Buffer.alloc(0);
  if (body.length > RELAY_BODY_LIMIT) {
    const failure = apiError(
      413,
      `the request body is ${body.length} bytes; a node that relays to the coordinator takes at most ` +
        `${RELAY_BODY_LIMIT} (send larger requests to the coordinator's API)`,
      "request_too_large",
    );
    sendApiError(reply, failure);
    return;
  }
  const headers: HttpHeader[] = [];
  for (const name of RELAYED_REQUEST_HEADERS) {
    const value = request.headers[name];
    if (typeof value === "string") headers.push({ name, value });
  }
  const call = relay.open({ method: request.method, path: request.url, headers, body });
  // Set when the relay is broken off on purpose: the reason the client reads.
  let brokenOff: string | undefined;
  const watch = setInterval(() => {
    if (stillCoordinator()) return;
    brokenOff = "this node lost the coordinator";
    call.cancel();
  }, COORDINATOR_CHECK_MS);
  watch.unref();
  reply.raw.on("close", () => {
    clearInterval(watch);
    if (!reply.raw.writableFinished) call.cancel();
  });
  let head: RelayHttpChunk;
  try {
    head = await firstChunk(call);
  } catch (err) {
    clearInterval(watch);
    const why = brokenOff ?? callMessage(err as Error);
    const failure = apiError(
      503,
      `the coordinator ${relay.label} cannot be reached over the cluster's gRPC plane: ${why}. Retry shortly; ` +
        "if it persists, check that this node and the coordinator reach each other's gRPC ports.",
      "cluster_not_ready",
    );
    if (!reply.raw.headersSent) sendApiError(reply, failure);
    return;
  }
  reply.hijack();
  // This node's own headers (CORS: the Origin header is not passed on, so the coordinator adds none).
  const responseHeaders = headersSetOn(reply);
  for (const { name, value } of head.headers)
    if (!FRAMING_RESPONSE_HEADERS.has(name)) responseHeaders[name] = value;
  responseHeaders[RELAYED_FROM_HEADER] = headerSafe(relay.label);
  reply.raw.writeHead(head.status, responseHeaders);
  reply.raw.flushHeaders();
  const bytes = bodyOf(call, () => brokenOff);
  const contentType = head.headers.find((h) => h.name === "content-type")?.value ?? "";
  if (!contentType.startsWith("text/event-stream")) {
    bytes.on("error", () => reply.raw.destroy());
    bytes.pipe(reply.raw);
    return;
  }
  relayEvents(bytes, reply.raw, request.url, relay.label);
}

/** The body messages of a relay as a byte stream (backpressure included); fails when the call does. */
function bodyOf(call: Readable, brokenOff: () => string | undefined): Readable {
  const bytes = new Readable({ read: () => call.resume() });
  call.on("data", (chunk: RelayHttpChunk) => {
    if (chunk.data.length > 0 && !bytes.push(chunk.data)) call.pause();
  });
  call.on("end", () => bytes.push(null));
  call.on("error", (err: Error) => bytes.destroy(new Error(brokenOff() ?? callMessage(err))));
  call.resume();
  return bytes;
}

/**
 * Relays an SSE stream event by event (a broken-off event never reaches the client); if the upstream fails
 * before it ended, writes the terminal error event the API would have written, then ends the response.
 */
function relayEvents(body: Readable, out: ServerResponse, url: string, coordinator: string): void {
  const tracker = new SseTracker();
  let pending = "";
  let finished = false;
  body.setEncoding("utf8");
  body.on("data", (chunk: string) => {
    pending += chunk;
    const cut = pending.lastIndexOf("\n\n");
    if (cut < 0) return;
    const whole = pending.slice(0, cut + 2);
    pending = pending.slice(cut + 2);
    tracker.saw(whole);
    out.write(whole);
  });
  body.on("end", () => {
    finished = true;
    if (pending) out.write(pending);
    out.end();
  });
  body.on("error", (err) => {
    if (finished || out.destroyed) return;
    finished = true;
    const message = `the coordinator ${coordinator} stopped mid-stream (${err.message}); retry the request`;
    out.end(tracker.terminalError(url, message));
  });
}

/** Just enough of a relayed SSE stream to write its terminal error: [DONE] seen, and the Responses envelope. */
class SseTracker {
  done = false;
  responseId = "";
  model = "";
  nextSequence = 0;

  saw(events: string): void {
    for (const line of events.split("\n")) {
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") {
        this.done = true;
        continue;
      }
      // Only the small envelope events carry what we need; deltas are not parsed.
      if (data.length > 65_536 || !data.includes('"sequence_number"')) continue;
      try {
        const event = JSON.parse(data) as {
          sequence_number?: number;
          response?: { id?: string; model?: string };
        };
        if (typeof event.sequence_number === "number") this.nextSequence = event.sequence_number + 1;
        if (event.response?.id) this.responseId = event.response.id;
        if (event.response?.model) this.model = event.response.model;
      } catch {
        // not JSON: relayed as it was, nothing to learn
      }
    }
  }

  terminalError(url: string, message: string): string {
    const error = { message, type: "service_unavailable_error", code: "node_lost", param: null };
    if (url.split("?")[0].endsWith("/responses")) {
      const response = {
        id: this.responseId,
        object: "response",
        model: this.model,
        status: "failed",
        error: { code: "node_lost", message },
      };
      const event = { type: "response.failed", sequence_number: this.nextSequence, response };
      return `event: response.failed\ndata: ${JSON.stringify(event)}\n\n`;
    }
    return `data: ${JSON.stringify({ error })}\n\n${this.done ? "" : "data: [DONE]\n\n"}`;
  }
}
