// The cluster key on the wire: callers put it in the "x-cluster-key" metadata entry of every call; servers
// refuse a call without the right key with UNAUTHENTICATED. Both sides use these helpers so they cannot drift.
import { createHash, timingSafeEqual } from "node:crypto";
import * as grpc from "@grpc/grpc-js";

export const clusterKeyHeader = "x-cluster-key";

/** A client interceptor that adds the key to every call made through the client. */
export function clusterKeyInterceptor(key: string): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set(clusterKeyHeader, key);
        next(metadata, listener);
      },
    });
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value, "utf8").digest();
}

/** Why the call's key is not acceptable, or undefined when it is. Compares in constant time. */
export function clusterKeyProblem(metadata: grpc.Metadata, expected: string): string | undefined {
  const values = metadata.get(clusterKeyHeader);
  if (values.length === 0) return `missing ${clusterKeyHeader} metadata`;
  const presented = values[0];
  if (typeof presented !== "string") return `${clusterKeyHeader} must be a text value`;
  if (!timingSafeEqual(digest(presented), digest(expected))) return `wrong ${clusterKeyHeader}`;
  return undefined;
}

/** The status a server answers with when the key is missing or wrong. */
export function unauthenticatedStatus(problem: string): grpc.ServiceError {
  const err = new Error(`cluster key refused: ${problem}`) as grpc.ServiceError;
  err.code = grpc.status.UNAUTHENTICATED;
  err.details = `cluster key refused: ${problem}`;
  err.metadata = new grpc.Metadata();
  return err;
}
