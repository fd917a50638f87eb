// The blocks a token sequence's KV is kept in (docs/architecture.md "Prefix cache"): runs of blockTokens
// tokens from position 0, the last one shorter when the sequence does not end on a boundary, each named by the
// chain hash of common/block-hash.ts. Two sequences that share a prefix share the names of its whole blocks.
import { blockHash } from "../common/block-hash.js";
import type { KvBlock } from "../common/wire/types.js";

export function blockChain(tokens: readonly number[], blockTokens: number): KvBlock[] {
  const chain: KvBlock[] = [];
  let parent = "";
  for (let start = 0; start < tokens.length; start += blockTokens) {
    const run = tokens.slice(start, start + blockTokens);
    const hash = blockHash(parent, run);
    chain.push({ hash, parent, start, tokens: run });
    parent = hash;
  }
  return chain;
}
