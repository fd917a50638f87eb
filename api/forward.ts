// A node that is not the coordinator passes every /v1 request on to the one that is, streaming the answer
// back untouched (SSE included). Closing the client closes the upstream request, which cancels generation.
// A stream the coordinator breaks off (it died) still ends as the README promises: whole events only are
// relayed, then the API's terminal error event (and `[DONE]` on the chat APIs).
import type { ServerResponse } from "node:http";
import { Readable } from "node:stream";
import type { FastifyReply, FastifyRequest } from "fastify";
import { apiError } from "./errors.js";
import { headersSetOn } from "./sse.js";

/** Marks a forwarded request so that it is never forwarded twice. */
export const FORWARDED_HEADER = "x-studio-cluster-forwarded";
/** On a relayed response: the coordinator API that answered it, so a client (or a test) can tell. */
export const RELAYED_FROM_HEADER = "x-studio-cluster-relayed-from";
const PASSED_HEADERS = [
  "authorization",
  "x-api-key",
  "content-type",
  "accept",
  "openai-organization",
  "openai-project",
  "anthropic-version",
  "anthropic-beta",
];
const DROPPED_RESPONSE_HEADERS = new Set([
  "content-length",
  "transfer-encoding",
  "connection",
  "content-encoding",
]);

/** How often a relay checks that its coordinator is still this node's coordinator. */
const COORDINATOR_CHECK_MS = 250;

/**
 * `stillCoordinator` says whether `coordinatorUrl` is still this node's coordinator: once it is not (lost after
 * a heartbeat timeout, or replaced), the relay is broken off and a stream ends with its terminal error event. A
 * coordinator that hangs or is cut off never fails the TCP connection, so without this a relayed stream would
 * wait forever.
 */
export async function forwardRequest(
  request: FastifyRequest,
  reply: FastifyReply,
  coordinatorUrl: string,
  stillCoordinator: () => boolean = () => true,
): Promise<void> {
  const target = new URL(request.url, coordinatorUrl.endsWith("/") ? coordinatorUrl : `${coordinatorUrl}/`);
  const headers: Record<string, string> = { [FORWARDED_HEADER]: "1" };
  for (const name of PASSED_HEADERS) {
    const value = request.headers[name];
    if (typeof value === "string") headers[name] = value;
  }
  const controller = new AbortController();
  const watch = setInterval(() => {
    if (!stillCoordinator()) controller.abort(new Error("the coordinator was lost"));
  }, COORDINATOR_CHECK_MS);
  watch.unref();
  reply.raw.on("close", () => {
    clearInterval(watch);
    if (!reply.raw.writableFinished) controller.abort();
  });
  let upstream: Response;
  try {
    upstream = await fetch(target, {
      method: request.method,
      headers,
      body:
        request.method === "GET" || request.method === "HEAD"
          ? undefined
          : JSON.stringify(request.body ?? {}),
      signal: controller.signal,
    });
  } catch (err) {
    const failure = apiError(
      503,
      `the coordinator at ${coordinatorUrl} cannot be reached: ${(err as Error).message}. ` +
        "Its API must listen where this node can reach it: start every node with --api-host 0.0.0.0 (or its LAN " +
        "address) and the same --api-key.",
      "cluster_not_ready",
    );
    reply.code(failure.status).header("retry-after", String(failure.retryAfter)).send(failure.body);
    return;
  }
  reply.hijack();
  // This node's own headers (CORS: the Origin header is not passed on, so the coordinator adds none).
  const responseHeaders = headersSetOn(reply);
  upstream.headers.forEach((value, name) => {
    if (!DROPPED_RESPONSE_HEADERS.has(name)) responseHeaders[name] = value;
  });
  responseHeaders[RELAYED_FROM_HEADER] = coordinatorUrl;
  reply.raw.writeHead(upstream.status, responseHeaders);
  reply.raw.flushHeaders();
  if (!upstream.body) {
    reply.raw.end();
    return;
  }
  const body = Readable.fromWeb(upstream.body as import("node:stream/web").ReadableStream<Uint8Array>);
  if (!(upstream.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    body.on("error", () => reply.raw.destroy());
    body.pipe(reply.raw);
    return;
  }
  relayEvents(body, reply.raw, request.url, coordinatorUrl);
}

/**
 * Relays an SSE stream event by event (a broken-off event never reaches the client); if the upstream fails
 * before it ended, writes the terminal error event the API would have written, then ends the response.
 */
function relayEvents(body: Readable, out: ServerResponse, url: string, coordinatorUrl: string): void {
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
    const message = `the coordinator at ${coordinatorUrl} stopped mid-stream (${err.message}); retry the request`;
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
