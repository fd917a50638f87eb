// The prefix cache's gRPC methods (StashBlocks, AssembleBlocks, DropBlocks, WatchBlocks: proto/cluster.proto)
// on a node: the request is checked (names, chain order, positions) before the shard's block host acts on it, and
// every refusal names what is wrong.
import * as grpc from "@grpc/grpc-js";
import { blockHash, isBlockHash } from "../common/block-hash.js";
import { errorMessage } from "../common/errors.js";
import type {
  AssembleBlocksReply,
  AssembleBlocksRequest,
  BlockEvents,
  BlockState,
  DropBlocksReply,
  DropBlocksRequest,
  KvBlock,
  StashBlocksReply,
  StashBlocksRequest,
  WatchBlocksRequest,
} from "../common/wire/types.js";
import { grpcStatus } from "./grpc-surface.js";
import type { LoadedShard, ShardHost } from "./shard.js";

/** Blocks per WatchBlocks message of the first snapshot (each carries its tokens). */
const snapshotPage = 256;
const maxBlocksPerCall = 100_000;

/** The shard a block call of planId acts on, or a FAILED_PRECONDITION naming why there is none. */
function shardFor(shards: ShardHost, planId: string): LoadedShard {
  const problem = shards.planProblem(planId);
  if (problem) throw grpcStatus(grpc.status.FAILED_PRECONDITION, problem);
  return shards.shard!;
}

function invalid(message: string): grpc.ServiceError {
  return grpcStatus(grpc.status.INVALID_ARGUMENT, message);
}

/** A stash's chain: valid names, each block starting where the one before ends and naming it as its parent. */
function chainProblem(blocks: KvBlock[]): string | undefined {
  if (blocks.length > maxBlocksPerCall)
    return `${blocks.length} blocks in one call (at most ${maxBlocksPerCall})`;
  let parent = "";
  let position = 0;
  for (const [i, b] of blocks.entries()) {
    if (!isBlockHash(b.hash)) return `block ${i}: "${b.hash}" is not a block name (32 hex characters)`;
    if (i > 0 && b.parent !== parent) return `block ${i} (${b.hash}) does not follow block ${i - 1}`;
    if (i === 0 && b.parent !== "" && !isBlockHash(b.parent)) return `block 0: bad parent "${b.parent}"`;
    if (i > 0 && b.start !== position) return `block ${i} (${b.hash}) starts at ${b.start}, not ${position}`;
    if (b.tokens.length > 0 && blockHash(b.parent, b.tokens) !== b.hash)
      return `block ${i}: ${b.hash} is not the hash of its parent and tokens`;
    parent = b.hash;
    position = b.start + b.tokens.length;
  }
  return undefined;
}

export async function stashBlocks(shards: ShardHost, req: StashBlocksRequest): Promise<StashBlocksReply> {
  const shard = shardFor(shards, req.plan_id);
  const problem = chainProblem(req.blocks);
  if (problem) throw invalid(`StashBlocks: ${problem}`);
  const badDrop = req.drop.find((h) => !isBlockHash(h));
  if (badDrop !== undefined) throw invalid(`StashBlocks: drop "${badDrop}" is not a block name`);
  try {
    return { stashed: await shard.blocks.stash(req.seq, req.blocks, req.drop) };
  } catch (err) {
    throw invalid(`StashBlocks: ${errorMessage(err)}`);
  }
}

export async function assembleBlocks(
  shards: ShardHost,
  req: AssembleBlocksRequest,
): Promise<AssembleBlocksReply> {
  const shard = shardFor(shards, req.plan_id);
  if (req.blocks.length === 0 || req.blocks.length > maxBlocksPerCall)
    throw invalid(`AssembleBlocks: ${req.blocks.length} blocks (1 to ${maxBlocksPerCall})`);
  const bad = req.blocks.findIndex((u) => !isBlockHash(u.hash) || !(u.take >= 1));
  if (bad >= 0) throw invalid(`AssembleBlocks: block ${bad} needs a block name and a take of at least 1`);
  try {
    return await shard.blocks.assemble(req.new_seq, req.blocks);
  } catch (err) {
    throw invalid(`AssembleBlocks: ${errorMessage(err)}`);
  }
}

export async function dropBlocks(shards: ShardHost, req: DropBlocksRequest): Promise<DropBlocksReply> {
  const shard = shardFor(shards, req.plan_id);
  if (req.hashes.some((h) => !isBlockHash(h))) throw invalid("DropBlocks: every hash must be a block name");
  return { dropped: await shard.blocks.drop(req.hashes) };
}

/** WatchBlocks: the disk's usable blocks in pages, then each change, until the caller or the shard goes. */
export function watchBlocks(
  shards: ShardHost,
  call: grpc.ServerWritableStream<WatchBlocksRequest, BlockEvents>,
  openCalls: Set<{ end(): void }>,
): void {
  const shard = shardFor(shards, call.request.plan_id);
  const send = (events: BlockEvents): void => {
    if (!call.cancelled && !call.writableEnded) call.write(events);
  };
  const state = (block: KvBlock, disk: boolean): BlockState => ({ block, disk });
  const unwatch = shard.blocks.watch({
    snapshot: (blocks) => {
      for (let i = 0; i < blocks.length; i += snapshotPage)
        send({ blocks: blocks.slice(i, i + snapshotPage).map((b) => state(b, true)), snapshot_done: false });
      send({ blocks: [], snapshot_done: true });
    },
    change: (block, disk) => send({ blocks: [state(block, disk)], snapshot_done: false }),
    // A new shard ends the watch: the caller's pipeline is gone with the old plan.
    end: () => {
      if (!call.writableEnded) call.end();
    },
  });
  openCalls.add(call);
  const stop = (): void => {
    unwatch();
    openCalls.delete(call);
  };
  call.on("cancelled", stop);
  call.on("close", stop);
  call.on("error", stop);
}
