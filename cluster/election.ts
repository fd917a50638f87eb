// Who coordinates. The rule, which every node applies to its own view of the live members:
//   the live member with the smallest node id (plain string order of the 16-hex-digit ids).
// It needs no messages: nodes that see the same members agree, and when the coordinator stops answering its
// Status heartbeat every other node drops it and the next smallest id takes the role. Node ids are random at
// first start and then stable (common/cluster-key.ts), so the same machines elect the same coordinator again.

export interface Candidate {
  nodeId: string;
}

export function electCoordinator<T extends Candidate>(liveMembers: readonly T[]): T | undefined {
  let best: T | undefined;
  for (const member of liveMembers) {
    if (best === undefined || member.nodeId < best.nodeId) best = member;
  }
  return best;
}
