// On a node that is not the coordinator, the cluster's live picture is the coordinator's: it alone holds the plan
// and counts the requests. The follower reads the coordinator's snapshot over the cluster's gRPC plane (RelayHttp
// of GET /dashboard/snapshot.json, which the coordinator's API lets a relay read: api/auth.ts), so its dashboard,
// `cluster status` and `cluster bench` work while the coordinator's API listens on its own loopback
// (docs/architecture.md "Relayed requests").
import type { ClusterSnapshot } from "../cluster/snapshot.js";
import { isClusterSnapshot } from "../cluster/status-text.js";
import { ClusterError } from "../common/errors.js";
import type { CoordinatorRelay } from "../common/wire/http-relay.js";
import type { RelayHttpChunk } from "../common/wire/types.js";
import { RELAYED_SNAPSHOT_PATH } from "./auth.js";
import { callMessage } from "./forward.js";

/** How long a follower waits for the coordinator's snapshot before it says the coordinator is unreachable. */
export const COORDINATOR_SNAPSHOT_TIMEOUT_MS = 3000;

/** The coordinator's snapshot over RelayHttp; rejects with a cluster_not_ready ClusterError saying why not. */
export function readCoordinatorSnapshot(
  relay: CoordinatorRelay,
  timeoutMs = COORDINATOR_SNAPSHOT_TIMEOUT_MS,
): Promise<ClusterSnapshot> {
  return new Promise((resolve, reject) => {
    const unreachable = (why: string) =>
      new ClusterError(
        "cluster_not_ready",
        `the coordinator ${relay.label} cannot be reached over the cluster's gRPC plane: ${why}`,
      );
    let call: ReturnType<CoordinatorRelay["open"]>;
    try {
      call = relay.open({
        method: "GET",
        path: RELAYED_SNAPSHOT_PATH,
        headers: [{ name: "accept", value: "application/json" }],
        body: Buffer.alloc(0),
      });
    } catch (err) {
      // A channel closed under us (the coordinator just changed).
      return reject(unreachable(callMessage(err as Error)));
    }
    let status = 0;
    const parts: Buffer[] = [];
    let settled = false;
    const fail = (error: ClusterError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(error);
    };
    const refused = (why: string) =>
      new ClusterError("cluster_not_ready", `the coordinator ${relay.label} ${why}`);
    // A coordinator that hangs (or a cut link, until membership notices) never fails the call by itself.
    const timer = setTimeout(() => {
      fail(unreachable(`no snapshot within ${timeoutMs} ms`));
      call.cancel();
    }, timeoutMs);
    call.on("data", (chunk: RelayHttpChunk) => {
      if (status === 0) status = chunk.status;
      if (chunk.data.length > 0) parts.push(chunk.data);
    });
    call.on("error", (err: Error) => {
      fail(unreachable(callMessage(err)));
    });
    call.on("end", () => {
      const text = Buffer.concat(parts).toString("utf8");
      if (status !== 200) return fail(refused(`answered ${status} for its snapshot: ${text.slice(0, 300)}`));
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        return fail(refused("sent a snapshot that is not JSON"));
      }
      if (!isClusterSnapshot(body)) return fail(refused("sent something that is not a cluster snapshot"));
      settled = true;
      clearTimeout(timer);
      resolve(body);
    });
  });
}

/**
 * The coordinator's snapshot for this node's dashboard: one read at a time, shared by whoever asks meanwhile
 * (the dashboards' feed polls four times a second, and the snapshot route may be asked at the same moment).
 */
export class CoordinatorSnapshots {
  private inFlight: { key: string; promise: Promise<ClusterSnapshot> } | undefined;

  constructor(private readonly relay: () => CoordinatorRelay | undefined) {}

  /** undefined when this node follows no other node (it coordinates, or no coordinator is known). */
  read(): Promise<ClusterSnapshot> | undefined {
    const relay = this.relay();
    if (!relay) return undefined;
    if (this.inFlight?.key === relay.key) return this.inFlight.promise;
    const promise = readCoordinatorSnapshot(relay).finally(() => {
      if (this.inFlight?.promise === promise) this.inFlight = undefined;
    });
    this.inFlight = { key: relay.key, promise };
    return promise;
  }
}
