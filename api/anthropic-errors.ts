// Errors in the Anthropic Messages API's shape, {"type": "error", "error": {"type", "message"}}, with the status
// codes Anthropic's clients act on: 400 invalid_request_error, 401 authentication_error, 403 permission_error,
// 404 not_found_error, 413 request_too_large, 429 rate_limit_error, 500 api_error, 504 timeout_error and
// 529 overloaded_error (this server's queue is full, or the cluster is not ready: retry later).
import { ClusterError } from "../common/errors.js";
import { type ApiError, toApiError } from "./errors.js";

export type AnthropicErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "request_too_large"
  | "rate_limit_error"
  | "api_error"
  | "timeout_error"
  | "overloaded_error";

export interface AnthropicErrorBody {
  type: "error";
  error: { type: AnthropicErrorType; message: string };
}

export interface AnthropicError {
  status: number;
  body: AnthropicErrorBody;
  retryAfter?: number;
}

function typeOf(status: number): AnthropicErrorType {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 413) return "request_too_large";
  if (status === 429) return "rate_limit_error";
  if (status === 504) return "timeout_error";
  if (status === 529) return "overloaded_error";
  if (status >= 500) return "api_error";
  return "invalid_request_error";
}

export function anthropicError(status: number, message: string, retryAfter?: number): AnthropicError {
  const error: AnthropicError = { status, body: { type: "error", error: { type: typeOf(status), message } } };
  if (retryAfter !== undefined) error.retryAfter = retryAfter;
  return error;
}

/**
 * The server's OpenAI-shaped error → Anthropic's. A full queue (429 here) and a cluster that is not ready
 * (503) are both "overloaded" to an Anthropic client: 529, which its SDKs retry.
 */
export function fromApiError(error: ApiError): AnthropicError {
  const overloaded = error.status === 503 || (error.status === 429 && error.body.error.code === "overloaded");
  const status = overloaded ? 529 : error.status;
  return anthropicError(status, error.body.error.message, error.retryAfter);
}

const CONTEXT_TEXT =
  /maximum context length is (\d+) tokens\. However, your messages resulted in (\d+) tokens/;

/** Any thrown value → the Anthropic error to send. */
export function toAnthropicError(err: unknown): AnthropicError {
  if (err instanceof ClusterError && err.code === "context_length_exceeded") {
    // Claude Code compacts its conversation when it reads "prompt is too long".
    const m = CONTEXT_TEXT.exec(err.message);
    if (m) return anthropicError(400, `prompt is too long: ${m[2]} tokens > ${m[1]} maximum`);
  }
  return fromApiError(toApiError(err));
}
