// The name of a prefix-cache block (proto/cluster.proto KvBlock): a chain hash over the block's tokens and its
// parent's name, so a block's name stands for every token from position 0 to its end, and two prompts that share
// a prefix share the names of its blocks. The coordinator names blocks (coordinator/block-chain.ts); a node checks
// the names of the blocks it reads back from disk (node-agent/block-files.ts).
import { createHash } from "node:crypto";
import { encodeTokens } from "./wire/frames.js";

/** The seed of a chain: stands in for the parent of a block at position 0 (changing it disowns every block). */
const CHAIN_SEED = "studio-cluster kv v1";

/** Hex characters of a name: the first 16 bytes of the SHA-256. */
export const BLOCK_HASH_HEX = 32;

const HASH_PATTERN = /^[0-9a-f]{32}$/;

export function isBlockHash(value: string): boolean {
  return HASH_PATTERN.test(value);
}

/** The name of the block holding `tokens` after the block named `parent` ("" at position 0). */
export function blockHash(parent: string, tokens: ArrayLike<number>): string {
  const hash = createHash("sha256");
  hash.update(parent === "" ? CHAIN_SEED : Buffer.from(parent, "hex"));
  hash.update(encodeTokens(tokens));
  return hash.digest("hex").slice(0, BLOCK_HASH_HEX);
}
