// The node's one engine shard and its lifecycle: LoadShard opens the shard a plan asks for (from the node's own
// model directory; one load at a time, each replacing the last), wires the stage to its downstream neighbour or,
// on the last stage, to the coordinators subscribed to Results; Release, Cancel and Fork act on it. Each shard has
// its prefix-cache host (block-host.ts); the disk tier (block-store.ts) lives as long as the node.

import type * as grpc from "@grpc/grpc-js";
import type { BackendChoice, Engine, KvDtype, MatmulInputs } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import { readModelTable, stageTensors } from "../common/model-table.js";
import { findNonFiniteTensor } from "../common/weight-check.js";
import { dtypeOfActivation } from "../common/wire/frames.js";
import type { DataFrameOut, LoadProgress, LoadShardRequest, ResultsRequest } from "../common/wire/types.js";
import { openEngine } from "../native/index.js";
import { BlockHost } from "./block-host.js";
import { BlockStore } from "./block-store.js";
import { checkpointBytesHash } from "./checkpoint-bytes-hash.js";
import { DownstreamLink } from "./downstream.js";
import { type FrameSink, Stage } from "./stage.js";
import type { WeightFetcher } from "./weight-fetch.js";

export interface ShardHostOptions {
  modelDir: string;
  clusterKey: string;
  /** Backend and threads when LoadShard names none. */
  backend?: BackendChoice;
  threads?: number;
  /** The cpu backend's precision mode (native/README.md, "Precision modes"). */
  matmulInputs?: MatmulInputs;
  kvDtype?: KvDtype;
  /** Fetches the tensors a partial checkpoint lacks for the stage before the engine opens it. */
  fetcher?: WeightFetcher;
  /** The checkpoint holds more tensors than before (capabilities read it again). */
  onWeightsChanged?: () => void;
  /** The prefix cache's disk tier: the node's own cache folder (absent: RAM only). */
  cacheDir?: string;
  /** Disk bytes its blocks may take (absent: half of the free space). */
  cacheDiskBytes?: number;
  log: (line: string) => void;
}

/** Time a closing shard gives its queued block writes (the rest is recomputed when needed). */
const blockFlushMs = 10_000;

export interface LoadedShard {
  request: LoadShardRequest;
  engine: Engine;
  stage: Stage;
  downstream?: DownstreamLink;
  weightBytes: number;
  backend: string;
  blocks: BlockHost;
}

type ResultsCall = grpc.ServerWritableStream<ResultsRequest, DataFrameOut>;

/** Progress messages are throttled: a bar needs a few updates a second, not one per tensor. */
const progressIntervalMs = 100;

export class ShardHost {
  private current: LoadedShard | undefined;
  private loading: Promise<unknown> = Promise.resolve();
  /** Results subscribers of the current plan (normally one: the coordinator). */
  private readonly results = new Set<ResultsCall>();
  private store: BlockStore | undefined;
  private fingerprint: Promise<string> | undefined;

  constructor(private readonly opts: ShardHostOptions) {}

  get shard(): LoadedShard | undefined {
    return this.current;
  }

  /** Why a call for planId cannot be served here, or undefined. */
  planProblem(planId: string): string | undefined {
    const current = this.current?.request.plan_id;
    if (!current) return "this node holds no shard";
    if (planId && planId !== current) return `plan ${planId} is not this node's plan (${current})`;
    return undefined;
  }

  /**
   * Opens the shard req asks for once the loads before it are done, replacing the current one; resolves with
   * the final progress message. A caller that went away does not stop it: the shard is what the plan asked for.
   */
  load(req: LoadShardRequest, onProgress: (p: LoadProgress) => void): Promise<LoadProgress> {
    const next = this.loading.then(() => this.open(req, onProgress));
    this.loading = next.catch(() => undefined);
    return next;
  }

  /** A NaN or infinity in the stage's float tensors would poison every token: refuse the load, naming it. */
  private async refuseNonFinite(req: LoadShardRequest): Promise<void> {
    const table = readModelTable(this.opts.modelDir);
    const names = stageTensors(table, {
      layerStart: req.layer_start,
      layerEnd: req.layer_end,
      embed: req.embed,
      head: req.head,
    }).map((t) => t.name);
    const problem = await findNonFiniteTensor(this.opts.modelDir, names);
    if (problem)
      throw new Error(`${problem}: refusing to load (the checkpoint is damaged or was converted wrongly)`);
  }

  private async open(req: LoadShardRequest, onProgress: (p: LoadProgress) => void): Promise<LoadProgress> {
    let lastFetch = 0;
    const fetched = await this.opts.fetcher?.ensure(req, (p) => {
      const now = Date.now();
      if (now - lastFetch < progressIntervalMs && p.done < p.total) return;
      lastFetch = now;
      onProgress(
        progressMessage({
          phase: "fetch",
          fetch_bytes: p.done,
          fetch_total: p.total,
          fetch_source: p.source,
        }),
      );
    });
    if (fetched?.bytes) this.opts.onWeightsChanged?.();
    // Before the current shard closes: a damaged checkpoint must not cost the node the shard it serves.
    await this.refuseNonFinite(req);
    await this.close();
    let lastProgress = 0;
    const engine = await openEngine({
      modelDir: this.opts.modelDir,
      layerStart: req.layer_start,
      layerEnd: req.layer_end,
      embed: req.embed,
      head: req.head,
      backend: (req.backend || this.opts.backend || "auto") as BackendChoice,
      threads: req.threads || this.opts.threads,
      matmulInputs: this.opts.matmulInputs,
      kvDtype: this.opts.kvDtype,
      onProgress: (bytesRead, bytesTotal) => {
        const now = Date.now();
        if (now - lastProgress < progressIntervalMs && bytesRead < bytesTotal) return;
        lastProgress = now;
        onProgress(progressMessage({ phase: "load", bytes_read: bytesRead, bytes_total: bytesTotal }));
      },
    });
    const stats = engine.stats();
    const downstream = req.head
      ? undefined
      : new DownstreamLink(req.downstream ?? "", this.opts.clusterKey, this.opts.log);
    const sink: () => FrameSink | undefined = downstream ? () => downstream : () => this.resultsSink();
    const stage = new Stage(
      engine,
      {
        planId: req.plan_id,
        stageIndex: req.stage_index ?? 0,
        stageCount: req.stage_count ?? 1,
        embed: req.embed,
        head: req.head,
        hiddenSize: stats.hiddenSize,
        activationDtype: dtypeOfActivation(stats.activationDtype),
        modelDir: this.opts.modelDir,
      },
      sink,
      this.opts.log,
    );
    downstream?.open();
    const store = await this.blockStore(
      req,
      stats.backend,
      stats.matmulInputs,
      stats.kvBytesPerPositionPerLayer,
    );
    const blocks = new BlockHost({
      engine,
      stage,
      layerStart: req.layer_start,
      store,
      log: this.opts.log,
    });
    this.current = {
      request: req,
      engine,
      stage,
      downstream,
      weightBytes: stats.weightBytes,
      backend: stats.backend,
      blocks,
    };
    this.opts.log(
      `plan ${req.plan_id}: layers ${req.layer_start}..${req.layer_end}${req.embed ? " +embed" : ""}${req.head ? " +head" : ""} on ${stats.backend}${stats.matmulInputs === "int8" ? " (int8 matmul inputs)" : ""}${stats.kvDtype === "f16" ? " (f16 KV)" : ""}, ${stats.weightBytes} weight bytes${downstream ? `, downstream ${downstream.address}` : ""}`,
    );
    return progressMessage({
      bytes_read: stats.weightBytes,
      bytes_total: stats.weightBytes,
      done: true,
      weight_bytes: stats.weightBytes,
      activation_dtype: stats.activationDtype,
      hidden_size: stats.hiddenSize,
      backend: stats.backend,
      kv_bytes_per_token: stats.kvBytesPerToken,
      fetch_bytes: fetched?.bytes ?? 0,
      fetch_total: fetched?.missingBytes ?? 0,
      fetch_source: fetched?.sources.join(",") ?? "",
    });
  }

  /**
   * The disk tier for this shard's KV format (model bytes, backend and its precision mode, bytes per position;
   * opened on first use; a new format replaces the old folder), set to
   * the shard's layers. A node without a cache folder, or whose folder cannot be used, runs RAM only.
   */
  private async blockStore(
    req: LoadShardRequest,
    backend: string,
    matmulInputs: MatmulInputs,
    bytesPerPosition: number,
  ): Promise<BlockStore | undefined> {
    const dir = this.opts.cacheDir;
    if (!dir) return undefined;
    try {
      this.fingerprint ??= checkpointBytesHash(this.opts.modelDir);
      // KV computed in the int8 precision mode differs from the default mode's: it gets its own folder. An f16
      // cache's blocks have half the bytes per position, so they land in a folder of their own too.
      const mode = matmulInputs === "int8" ? "-int8" : "";
      const format = `${await this.fingerprint}-${backend}${mode}-${bytesPerPosition}`;
      if (this.store?.folder.endsWith(format) !== true)
        this.store = await BlockStore.open({
          dir,
          format,
          bytesPerPosition,
          budgetBytes: this.opts.cacheDiskBytes,
          log: this.opts.log,
        });
      await this.store.setLayers(req.layer_start, req.layer_end);
      return this.store;
    } catch (err) {
      this.opts.log(`prefix cache: the disk tier in ${dir} cannot be used (${errorMessage(err)}); RAM only`);
      this.store = undefined;
      return undefined;
    }
  }

  /** Registers a coordinator's Results stream (the caller checked planProblem and that this is the last stage). */
  subscribe(call: ResultsCall): () => void {
    this.results.add(call);
    return () => this.results.delete(call);
  }

  private resultsSink(): FrameSink | undefined {
    if (this.results.size === 0) return undefined;
    return {
      write: (frames) => {
        for (const call of this.results) for (const frame of frames) call.write(frame);
      },
    };
  }

  async release(planId: string, seqs: number[]): Promise<number> {
    if (this.planProblem(planId)) return 0;
    return this.current!.stage.release(seqs);
  }

  cancel(planId: string, seqs: number[]): number {
    if (this.planProblem(planId)) return 0;
    return this.current!.stage.cancel(seqs);
  }

  async fork(seq: number, newSeq: number, prefixLength: number): Promise<void> {
    await this.current!.stage.fork(seq, newSeq, prefixLength);
  }

  /** Closes the shard: its stage, its downstream link, its Results streams and its engine. */
  async close(): Promise<void> {
    const shard = this.current;
    if (!shard) return;
    this.current = undefined;
    // Blocks still queued for the disk are written while the engine that holds them is open.
    await shard.blocks.close(blockFlushMs);
    shard.stage.close();
    shard.downstream?.close();
    for (const call of this.results) call.end();
    this.results.clear();
    await shard.engine.close();
  }
}

export function progressMessage(p: Partial<LoadProgress>): LoadProgress {
  return {
    bytes_read: 0,
    bytes_total: 0,
    done: false,
    weight_bytes: 0,
    activation_dtype: "",
    hidden_size: 0,
    backend: "",
    error: "",
    kv_bytes_per_token: 0,
    phase: "",
    fetch_bytes: 0,
    fetch_total: 0,
    fetch_source: "",
    ...p,
  };
}
