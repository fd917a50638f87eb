// Who coordinates. The rule, which every node applies to its own view of the live members:
//   among the members mutually reachable with this node, the one with the smallest node id (plain string order
//   of the 16-hex-digit ids).
// "Mutually reachable": this node holds the member's heartbeat, and the member's heartbeat lists this node
// among its own live members (the gossiped member list, NodeStatus.members). A member that cannot reach us
// back (a one-way or partial partition) is not a candidate: it could not send us work nor watch our heartbeat.
// It needs no other messages: nodes that see the same members agree, and when the coordinator stops answering
// its Status heartbeat every other node drops it and the next smallest id takes the role. Node ids are random at
// first start and then stable (common/cluster-key.ts), so the same machines elect the same coordinator again.
// Where views differ (a partial partition), two nodes may each pick a different coordinator; the coordinator
// epoch (common/coordinator-epoch.ts) keeps each third node serving one of them instead of alternating.

export interface Candidate {
  nodeId: string;
  /** The member's latest heartbeat; its member list (gossip) tells whether it sees us. */
  status?: { members?: ReadonlyArray<{ node_id: string }> };
}

/**
 * Whether `member` sees `selfId` too. Before its first heartbeat, or from an older node that gossips no list, we
 * cannot tell: it counts as reachable (the rule of versions before gossip).
 */
export function seesUs(member: Candidate, selfId: string): boolean {
  if (member.nodeId === selfId) return true;
  const listed = member.status?.members;
  if (!listed || listed.length === 0) return true;
  return listed.some((m) => m.node_id === selfId);
}

/** The live members mutually reachable with selfId (all of them when selfId is not given). */
export function reachableMembers<T extends Candidate>(liveMembers: readonly T[], selfId?: string): T[] {
  return selfId === undefined ? [...liveMembers] : liveMembers.filter((m) => seesUs(m, selfId));
}

/** The coordinator in this node's view: the smallest id among the members mutually reachable with selfId. */
export function electCoordinator<T extends Candidate>(
  liveMembers: readonly T[],
  selfId?: string,
): T | undefined {
  let best: T | undefined;
  for (const member of reachableMembers(liveMembers, selfId)) {
    if (best === undefined || member.nodeId < best.nodeId) best = member;
  }
  return best;
}
