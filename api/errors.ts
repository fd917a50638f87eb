// Every error leaves the server in OpenAI's shape {"error":{message,type,code,param}}, with the status that
// tells the client what to do (4xx: fix the request; 429: retry later; 503: cluster not ready).

import type { FastifyReply } from "fastify";
import { RequestError } from "../chat/request-error.js";
import { ClusterError, errorMessage } from "../common/errors.js";

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: string | null; param: string | null };
}

export interface ApiError {
  status: number;
  body: OpenAIErrorBody;
  /** Seconds, for 429 and 503. */
  retryAfter?: number;
}

function typeFor(status: number): string {
  if (status === 401 || status === 403) return "authentication_error";
  if (status === 429) return "rate_limit_error";
  if (status === 503) return "service_unavailable_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

export function apiError(
  status: number,
  message: string,
  code: string | null,
  param: string | null = null,
): ApiError {
  const error: ApiError = { status, body: { error: { message, type: typeFor(status), code, param } } };
  if (status === 429 || status === 503) error.retryAfter = status === 429 ? 2 : 5;
  return error;
}

export class ModelNotFoundError extends ClusterError {
  constructor(model: string, served: string) {
    super("bad_request", `The model '${model}' does not exist; this server serves '${served}'.`);
    this.name = "ModelNotFoundError";
  }
}

/** Any thrown value → the response the client gets. Unknown errors are 500s with their message. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ModelNotFoundError) return apiError(404, err.message, "model_not_found", "model");
  if (err instanceof RequestError) return apiError(400, err.message, "invalid_request", err.param);
  if (err instanceof ClusterError) {
    const status = err.code === "cancelled" ? 400 : err.httpStatus;
    return apiError(
      status,
      err.message,
      err.code,
      err.code === "context_length_exceeded" ? "messages" : null,
    );
  }
  return apiError(500, `internal error: ${errorMessage(err)}`, "internal");
}

/** The exact text OpenClaw (and other OpenAI clients) recognise to compact a conversation. */
export function contextLengthError(contextWindow: number, promptTokens: number): ClusterError {
  return new ClusterError(
    "context_length_exceeded",
    `This model's maximum context length is ${contextWindow} tokens. However, your messages resulted in ${promptTokens} tokens.`,
  );
}

/** Writes an ApiError as the reply (with retry-after where it has one). */
export function sendApiError(reply: FastifyReply, error: ApiError): FastifyReply {
  if (error.retryAfter !== undefined) reply.header("retry-after", String(error.retryAfter));
  return reply.code(error.status).send(error.body);
}
