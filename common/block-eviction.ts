// Which prefix-cache block goes first when a tier is over its budget: the coordinator's RAM tier
// (coordinator/prefix-cache.ts) and a node's disk tier (node-agent/block-store.ts) both ask this.
//
// Only leaves are candidates (blocks no other block of the tier continues), so what stays is always a usable
// prefix. Among them, the one with the largest (age + 1) x (its end position, i.e. the length of the
// conversation it ends) goes first: idle conversations go before recent ones, and a long conversation gives up
// its tail before a short one is flushed whole, so one long session cannot push every other out
// (docs/architecture.md, "Prefix cache").

export interface EvictionCandidate {
  /** Value of the tier's use clock when the block was last used (stored, restored, matched). */
  lastUsed: number;
  /** Position one past the block's last token: the tokens of the whole prefix it completes. */
  end: number;
  /** Tie-break, so that the choice never depends on iteration order. */
  id: string;
}

/** The candidate to evict now (clock: the tier's current use clock), or undefined when there is none. */
export function pickVictim<T extends EvictionCandidate>(
  candidates: Iterable<T>,
  clock: number,
): T | undefined {
  let victim: T | undefined;
  let victimScore = -1;
  for (const c of candidates) {
    const score = (Math.max(0, clock - c.lastUsed) + 1) * c.end;
    if (
      !victim ||
      score > victimScore ||
      (score === victimScore && (c.end > victim.end || (c.end === victim.end && c.id < victim.id)))
    ) {
      victim = c;
      victimScore = score;
    }
  }
  return victim;
}
