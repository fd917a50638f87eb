// The coordinator epoch: (term, coordinator id), carried by every LoadShard. It keeps a node from being pulled
// back and forth between two coordinators (a partial partition where two of them each see it): a node serves
// one coordinator at a time and refuses a LoadShard from another unless
//   - its term is newer than the one the node serves, and
//   - the node's current coordinator is no longer a live member in its own view, or the newcomer is the node's
//     own choice (election.ts), or the newcomer is a live member with a smaller id than the current one (the
//     choice the node is about to make: its view of the newcomer may lag a heartbeat behind the newcomer's).
// Every way of moving goes towards a coordinator that is lost to nobody or has a smaller id, so a node cannot be
// passed back and forth between two coordinators that both reach it.
// A coordinator takes its term when it starts coordinating: one above every term its members report serving
// (NodeStatus.coordinator_term), and keeps it while it coordinates without a break; it moves above a term only
// when a member reports serving another coordinator at that term or later. Terms therefore grow only when the
// role changes hands, and a refused coordinator retrying does not outbid the one that holds the node.

export interface CoordinatorEpoch {
  term: number;
  coordinatorId: string;
}

/** What the node knows when it judges a LoadShard: its own membership view and election. */
export interface CoordinatorView {
  isLive(nodeId: string): boolean;
  /** The coordinator this node elects now (undefined: none yet). */
  choice(): string | undefined;
}

export type LoadShardVerdict = { accept: true } | { accept: false; reason: string };

export function describeEpoch(epoch: CoordinatorEpoch | undefined): string {
  return epoch ? `coordinator ${epoch.coordinatorId} term ${epoch.term}` : "no coordinator";
}

/** The epoch a LoadShard or NodeStatus carries (undefined when it carries none: an older or tool caller). */
export function epochOf(fields: {
  coordinator_term?: number;
  coordinator_id?: string;
}): CoordinatorEpoch | undefined {
  if (!fields.coordinator_id) return undefined;
  return { term: Number(fields.coordinator_term ?? 0), coordinatorId: fields.coordinator_id };
}

/**
 * The node-side rule: may `offered` load a shard on a node that serves `current`? A LoadShard without an epoch
 * (a node older than epochs, or a tool) is refused: it could pull the node away from its coordinator with no
 * term to judge. One with an epoch is accepted when the node serves nobody yet.
 */
export function judgeLoadShard(
  current: CoordinatorEpoch | undefined,
  offered: CoordinatorEpoch | undefined,
  view: CoordinatorView | undefined,
): LoadShardVerdict {
  if (!offered)
    return {
      accept: false,
      reason:
        "it carries no coordinator epoch (coordinator_term, coordinator_id): the caller runs an older version " +
        "(upgrade every node to the same version) or is a tool that does not name its coordinator",
    };
  if (!current) return { accept: true };
  if (offered.coordinatorId === current.coordinatorId) {
    if (offered.term >= current.term) return { accept: true };
    return {
      accept: false,
      reason: `its term ${offered.term} is older than the term ${current.term} this node serves it under (a stale call)`,
    };
  }
  if (offered.term <= current.term)
    return {
      accept: false,
      reason: `this node serves ${describeEpoch(current)}, and term ${offered.term} is not newer`,
    };
  if (!view?.isLive(current.coordinatorId)) return { accept: true };
  const choice = view.choice();
  if (choice === offered.coordinatorId && choice !== current.coordinatorId) return { accept: true };
  if (view.isLive(offered.coordinatorId) && offered.coordinatorId < current.coordinatorId)
    return { accept: true };
  return {
    accept: false,
    reason: `this node serves ${describeEpoch(current)}, which is still live here, and elects ${choice ?? "nobody"} (not ${offered.coordinatorId})`,
  };
}

/**
 * The term a coordinator plans under. `current` is its term while it has coordinated without a break (undefined
 * when it just took the role); `reported` are the epochs its members serve.
 */
export function nextTerm(
  current: number | undefined,
  selfId: string,
  reported: ReadonlyArray<CoordinatorEpoch | undefined>,
): number {
  let others = 0;
  let all = 0;
  for (const epoch of reported) {
    if (!epoch) continue;
    all = Math.max(all, epoch.term);
    if (epoch.coordinatorId !== selfId) others = Math.max(others, epoch.term);
  }
  if (current === undefined) return all + 1;
  return current > others ? current : others + 1;
}
