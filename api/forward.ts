// A node that is not the coordinator passes every /v1 request on to the one that is, streaming the answer
// back untouched (SSE included). Closing the client closes the upstream request, which cancels generation.
import { Readable } from "node:stream";
import type { FastifyReply, FastifyRequest } from "fastify";
import { apiError } from "./errors.js";
import { headersSetOn } from "./sse.js";

/** Marks a forwarded request so that it is never forwarded twice. */
export const FORWARDED_HEADER = "x-studio-cluster-forwarded";
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

export async function forwardRequest(
  request: FastifyRequest,
  reply: FastifyReply,
  coordinatorUrl: string,
): Promise<void> {
  const target = new URL(request.url, coordinatorUrl.endsWith("/") ? coordinatorUrl : `${coordinatorUrl}/`);
  const headers: Record<string, string> = { [FORWARDED_HEADER]: "1" };
  for (const name of PASSED_HEADERS) {
    const value = request.headers[name];
    if (typeof value === "string") headers[name] = value;
  }
  const controller = new AbortController();
  reply.raw.on("close", () => {
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
      `the coordinator at ${coordinatorUrl} cannot be reached: ${(err as Error).message}`,
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
  reply.raw.writeHead(upstream.status, responseHeaders);
  reply.raw.flushHeaders();
  if (!upstream.body) {
    reply.raw.end();
    return;
  }
  const body = Readable.fromWeb(upstream.body as import("node:stream/web").ReadableStream<Uint8Array>);
  body.on("error", () => reply.raw.destroy());
  body.pipe(reply.raw);
}
