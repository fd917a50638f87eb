// The prefix cache's calls on a running pipeline (proto/cluster.proto StashBlocks, AssembleBlocks, DropBlocks,
// WatchBlocks) over every stage at once, and the mirror of what each stage holds on disk, kept from its
// WatchBlocks stream. Nodes from before the cache answer WatchBlocks with UNIMPLEMENTED: the pipeline then has no
// block calls and the scheduler runs without a prefix cache.
import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import type { NodeClient } from "../common/wire/client.js";
import type { AssembleBlocksReply, BlockEvents, BlockUse, KvBlock } from "../common/wire/types.js";

/** A stage's report that it holds a block on disk (all of its layers), or no longer does. */
export type DiskListener = (stage: number, block: KvBlock, held: boolean) => void;

/** One stage's answer to an assembly: its reply, or the error that stands for "nothing made". */
export type StageAssembly = AssembleBlocksReply | { error: string };

/** The block calls the scheduler's prefix cache makes on a pipeline (PipelineBlocks; in-process ones in tests). */
export interface BlockPort {
  /** Copies a finished sequence's chain into every stage's RAM (and frees it); rejects naming a stage that failed. */
  stash(seq: number, chain: KvBlock[], drop: string[]): Promise<void>;
  /** Makes newSeq from the blocks on every stage; one answer per stage, in stage order. */
  assemble(newSeq: number, uses: BlockUse[]): Promise<StageAssembly[]>;
  /** Frees RAM blocks on every stage (best effort). */
  drop(hashes: string[]): Promise<void>;
  /** Calls listener with every block a stage holds on disk now, then with each change; returns the unsubscribe. */
  onDisk(listener: DiskListener): () => void;
}

/** How long a new pipeline waits for the stages' lists of disk blocks before serving. */
const snapshotTimeoutMs = 30_000;

export class PipelineBlocks implements BlockPort {
  private readonly disk: Array<Map<string, KvBlock>>;
  private readonly listeners = new Set<DiskListener>();
  private readonly watches: Array<grpc.ClientReadableStream<BlockEvents>> = [];
  private closed = false;

  private constructor(
    private readonly clients: NodeClient[],
    private readonly planId: string,
    private readonly names: string[],
    private readonly log: (line: string) => void,
    lost: Promise<never> = new Promise<never>(() => {}),
  ) {
    this.disk = clients.map(() => new Map());
    // Once a node is lost, calls still waiting on a hung stage answer at once, as failed on every stage: a
    // request that hit the cache must not wait out a call's deadline (a minute) when streams end within seconds.
    this.whenLost = lost.then(
      () => [],
      (reason: unknown) => clients.map(() => ({ status: "rejected", reason }) as PromiseRejectedResult),
    );
  }

  private readonly whenLost: Promise<PromiseSettledResult<never>[]>;

  /** Every stage's outcome of one call, or a failure on every stage as soon as a node of the pipeline is lost. */
  private everyStage<T>(call: (client: NodeClient) => Promise<T>): Promise<PromiseSettledResult<T>[]> {
    return Promise.race([Promise.allSettled(this.clients.map(call)), this.whenLost]);
  }

  /**
   * Subscribes to every stage's disk blocks and resolves once each has sent its list; resolves undefined (and
   * logs why) when a stage does not know the calls (an older node) or cannot list its blocks: the cache is an
   * optimisation, the pipeline serves without it.
   */
  static async open(
    clients: NodeClient[],
    planId: string,
    names: string[],
    log: (line: string) => void,
    lost?: Promise<never>,
  ): Promise<PipelineBlocks | undefined> {
    const blocks = new PipelineBlocks(clients, planId, names, log, lost);
    const outcomes = await Promise.allSettled(clients.map((_, i) => blocks.watch(i)));
    const unsupported = outcomes.findIndex(
      (o) => o.status === "rejected" && (o.reason as grpc.ServiceError)?.code === grpc.status.UNIMPLEMENTED,
    );
    const failed = outcomes.findIndex((o) => o.status === "rejected");
    if (failed < 0) return blocks;
    blocks.close();
    if (unsupported >= 0) {
      log(
        `${names[unsupported]} has no prefix cache calls (an older version): serving without a prefix cache`,
      );
      return undefined;
    }
    const reason = (outcomes[failed] as PromiseRejectedResult).reason;
    log(
      `listing the cached blocks of ${names[failed]} failed (${grpcMessage(reason)}): serving without a prefix cache`,
    );
    return undefined;
  }

  /** Opens stage i's WatchBlocks; resolves after its first list. */
  private watch(i: number): Promise<void> {
    const call = this.clients[i].watchBlocks(this.planId);
    this.watches.push(call);
    return new Promise((resolve, reject) => {
      let listed = false;
      const timer = setTimeout(() => {
        reject(new Error(`no list of cached blocks within ${snapshotTimeoutMs / 1000} s`));
        call.cancel();
      }, snapshotTimeoutMs);
      call.on("data", (events: BlockEvents) => {
        for (const state of events.blocks) if (state.block) this.apply(i, state.block, state.disk);
        if (events.snapshot_done && !listed) {
          listed = true;
          clearTimeout(timer);
          resolve();
        }
      });
      call.on("error", (err: grpc.ServiceError) => {
        clearTimeout(timer);
        if (!listed) reject(err);
        else if (!this.closed && err.code !== grpc.status.CANCELLED)
          this.log(`blocks watch of ${this.names[i]} failed: ${errorMessage(err)}`);
      });
      call.on("end", () => {
        clearTimeout(timer);
        if (!listed) reject(new Error("the blocks watch ended before its list"));
      });
    });
  }

  private apply(stage: number, block: KvBlock, held: boolean): void {
    if (held) this.disk[stage].set(block.hash, block);
    else if (!this.disk[stage].delete(block.hash)) return;
    for (const listener of this.listeners) listener(stage, block, held);
  }

  onDisk(listener: DiskListener): () => void {
    this.disk.forEach((blocks, stage) => {
      for (const block of blocks.values()) listener(stage, block, true);
    });
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async stash(seq: number, chain: KvBlock[], drop: string[]): Promise<void> {
    const request = { plan_id: this.planId, seq, blocks: chain, drop };
    const outcomes = await this.everyStage((c) => c.stashBlocks(request));
    const failed = outcomes.findIndex((o) => o.status === "rejected");
    if (failed >= 0)
      throw new Error(
        `stash on stage ${failed} (${this.names[failed]}): ${grpcMessage((outcomes[failed] as PromiseRejectedResult).reason)}`,
      );
  }

  async assemble(newSeq: number, uses: BlockUse[]): Promise<StageAssembly[]> {
    const request = { plan_id: this.planId, new_seq: newSeq, blocks: uses };
    const outcomes = await this.everyStage((c) => c.assembleBlocks(request));
    return outcomes.map((o) => (o.status === "fulfilled" ? o.value : { error: grpcMessage(o.reason) }));
  }

  async drop(hashes: string[]): Promise<void> {
    if (hashes.length === 0 || this.closed) return;
    const request = { plan_id: this.planId, hashes };
    const outcomes = await Promise.allSettled(this.clients.map((c) => c.dropBlocks(request)));
    outcomes.forEach((o, i) => {
      if (o.status === "rejected" && !this.closed)
        this.log(`dropping cached blocks on ${this.names[i]} failed: ${grpcMessage(o.reason)}`);
    });
  }

  close(): void {
    this.closed = true;
    this.listeners.clear();
    for (const call of this.watches) call.cancel();
  }
}

/** grpc errors carry the server's message in `details`. */
export function grpcMessage(err: unknown): string {
  const details = (err as { details?: unknown })?.details;
  return typeof details === "string" && details.length > 0 ? details : errorMessage(err);
}
