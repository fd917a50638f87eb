// Errors that cross module boundaries carry a stable code; the API maps them to OpenAI-shaped responses.

export type ClusterErrorCode =
  | "bad_request"
  | "context_length_exceeded"
  | "cluster_not_ready"
  | "node_lost"
  | "overloaded"
  | "cancelled"
  | "timeout"
  | "unauthorized"
  | "model_error"
  | "internal";

const httpStatusOf: Record<ClusterErrorCode, number> = {
  bad_request: 400,
  context_length_exceeded: 400,
  cluster_not_ready: 503,
  node_lost: 503,
  overloaded: 429,
  cancelled: 499,
  timeout: 504,
  unauthorized: 401,
  model_error: 500,
  internal: 500,
};

/** Whether a code that came over the wire (an ERROR frame) is one of ours. */
export function isClusterErrorCode(code: string): code is ClusterErrorCode {
  return Object.hasOwn(httpStatusOf, code);
}

export class ClusterError extends Error {
  readonly code: ClusterErrorCode;
  readonly httpStatus: number;

  constructor(code: ClusterErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ClusterError";
    this.code = code;
    this.httpStatus = httpStatusOf[code];
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
