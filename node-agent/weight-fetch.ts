// Before a shard opens: make sure this node holds every tensor of its stage (docs/weights.md). A node with a full
// checkpoint has nothing to do. A node with a partial checkpoint (weights/store.ts) works out what it lacks for
// the stage, checks the disk has room, and fetches it: from the nodes the coordinator named as holding it
// (FetchTensors, each chunk checked against its crc32, a bad or cut chunk asked for again from the last
// verified byte), then from the hub's byte ranges when no node could give it. What arrives is written as the
// store's own shard files, so the next start (or a later plan needing the same layers) fetches nothing.
import { crc32 } from "node:zlib";
import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import { readManifest, stageTensors } from "../common/model-table.js";
import { TensorClient } from "../common/wire/tensor-client.js";
import type { LoadShardRequest, TensorChunk } from "../common/wire/types.js";
import { HubClient } from "../weights/hub-client.js";
import type { HubEnv } from "../weights/hub-env.js";
import { fetchTensorsFromHub } from "../weights/hub-tensors.js";
import { checkDiskSpace, PartialStore } from "../weights/store.js";
import { TensorSink } from "../weights/tensor-sink.js";

export interface FetchProgress {
  done: number;
  total: number;
  /** A node's address, or "hub". */
  source: string;
}

export interface FetchReport {
  /** Tensor bytes received by this load. */
  bytes: number;
  /** Bytes of the stage's tensors that were missing when it started. */
  missingBytes: number;
  sources: string[];
}

export interface WeightFetcherOptions {
  modelDir: string;
  modelId: () => string;
  fingerprint: () => string;
  clusterKey: string;
  hubEnv?: HubEnv;
  log: (line: string) => void;
  /** Tries per source before the next (default 4). */
  attemptsPerSource?: number;
  /** Chunk size asked of the source (0 or absent: the source's default, 1 MiB). */
  chunkBytes?: number;
}

/** A chunk failed its check: fetched again from its first byte. */
class BadChunk extends Error {}

export class WeightFetcher {
  constructor(private readonly opts: WeightFetcherOptions) {}

  /** Fetches what the stage lacks; resolves when the node holds all of it, rejects naming what is still missing. */
  async ensure(req: LoadShardRequest, onProgress: (p: FetchProgress) => void): Promise<FetchReport> {
    const none: FetchReport = { bytes: 0, missingBytes: 0, sources: [] };
    if (!readManifest(this.opts.modelDir)) return none;
    const store = new PartialStore(this.opts.modelDir);
    const stage = { layerStart: req.layer_start, layerEnd: req.layer_end, embed: req.embed, head: req.head };
    const missing = store.missing(stageTensors(store.table, stage));
    if (missing.length === 0) return none;
    const what = `layers ${req.layer_start}..${req.layer_end}${req.embed ? " +embed" : ""}${req.head ? " +head" : ""}`;
    const sink = await TensorSink.open(store, missing);
    const report: FetchReport = { bytes: 0, missingBytes: sink.totalBytes(), sources: [] };
    const problems: string[] = [];
    try {
      checkDiskSpace(this.opts.modelDir, sink.remainingBytes(), what);
      const total = sink.totalBytes();
      const resumed = total - sink.remainingBytes();
      if (resumed > 0) this.opts.log(`${what}: resuming a transfer at ${resumed} of ${total} bytes`);
      let done = resumed;
      const progress = (source: string) => (n: number) => {
        done += n;
        report.bytes += n;
        onProgress({ done, total, source });
      };
      for (const source of req.sources ?? []) {
        if (sink.wants().length === 0) break;
        onProgress({ done, total, source });
        const problem = await this.fromPeer(source, sink, progress(source));
        await sink.finish();
        if (problem) problems.push(`${source}: ${problem}`);
        else report.sources.push(source);
      }
      if (sink.wants().length > 0) {
        const problem = await this.fromHub(store, sink, progress("hub"));
        await sink.finish();
        if (problem) problems.push(`hub: ${problem}`);
        else report.sources.push("hub");
      }
    } finally {
      await sink.close();
    }
    const left = sink.wants();
    if (left.length > 0)
      throw new Error(
        `${what}: ${left.length} tensor(s), ${sink.remainingBytes()} bytes, are missing here and no source gave them (${problems.join("; ") || "no source named"})`,
      );
    this.opts.log(`${what}: received ${report.bytes} bytes of weights from ${report.sources.join(", ")}`);
    return report;
  }

  /** Streams from one node until the sink is full or the node cannot help; the reason it stopped, or undefined. */
  private async fromPeer(
    address: string,
    sink: TensorSink,
    onBytes: (n: number) => void,
  ): Promise<string | undefined> {
    const client = new TensorClient(address, this.opts.clusterKey);
    const attempts = this.opts.attemptsPerSource ?? 4;
    let failures = 0;
    try {
      while (sink.wants().length > 0) {
        try {
          await this.streamOnce(client, sink, onBytes);
          failures = 0;
        } catch (err) {
          const code = (err as { code?: number }).code;
          const message = err instanceof BadChunk ? err.message : grpcMessage(err);
          if (
            code === grpc.status.NOT_FOUND ||
            code === grpc.status.FAILED_PRECONDITION ||
            code === grpc.status.UNAUTHENTICATED
          )
            return message;
          if (++failures >= attempts) return message;
          this.opts.log(`fetch from ${address}: ${message}; resuming from the last verified byte`);
          await sink.checkpoint();
          if (!(err instanceof BadChunk)) await new Promise((r) => setTimeout(r, 250 * 2 ** failures));
        }
      }
      return undefined;
    } finally {
      client.close();
    }
  }

  /** One FetchTensors call for everything still wanted; every chunk is checked before it is written. */
  private streamOnce(client: TensorClient, sink: TensorSink, onBytes: (n: number) => void): Promise<void> {
    const call = client.fetchTensors({
      model_id: this.opts.modelId(),
      fingerprint: this.opts.fingerprint(),
      tensors: sink.wants(),
      chunk_bytes: this.opts.chunkBytes ?? 0,
    });
    return new Promise<void>((resolve, reject) => {
      let failed = false;
      // Checked chunks waiting for the disk, and their bytes.
      let pending: TensorChunk[] = [];
      let pendingBytes = 0;
      // Where each tensor continues, counting the chunks still waiting for the disk.
      const next = new Map<string, number>();
      let writing: Promise<void> | undefined;
      const fail = (err: unknown): void => {
        if (failed) return;
        failed = true;
        call.cancel();
        (writing ?? Promise.resolve()).then(
          () => reject(err),
          () => reject(err),
        );
      };
      // One batch at a time: whatever arrived while the last one was written goes down next, in one writev
      // per run of contiguous bytes, so the disk and the network keep working at the same time.
      const drain = async (): Promise<void> => {
        while (pending.length > 0 && !failed) {
          const batch = pending;
          pending = [];
          await sink.writeMany(batch);
          let bytes = 0;
          for (const c of batch) bytes += c.payload.length;
          pendingBytes -= bytes;
          onBytes(bytes);
          if (pendingBytes < RESUME_BELOW_BYTES && call.isPaused()) call.resume();
        }
      };
      const startWriting = (): void => {
        writing ??= drain()
          .catch(fail)
          .finally(() => {
            writing = undefined;
            if (pending.length > 0 && !failed) startWriting();
          });
      };
      call.on("data", (chunk: TensorChunk) => {
        if (failed) return;
        const problem = chunkProblem(sink, chunk, next.get(chunk.name) ?? sink.nextOffset(chunk.name) ?? -1);
        if (problem) {
          fail(new BadChunk(problem));
          return;
        }
        next.set(chunk.name, chunk.offset + chunk.payload.length);
        pending.push(chunk);
        pendingBytes += chunk.payload.length;
        // Memory stays bounded: the stream pauses while a few MiB wait for the disk.
        if (pendingBytes >= MAX_QUEUED_BYTES) call.pause();
        startWriting();
      });
      call.on("error", fail);
      call.on("end", async () => {
        try {
          while (writing) await writing;
        } catch {
          // fail() already has the reason.
        }
        if (failed) return;
        if (sink.wants().length > 0)
          reject(new BadChunk(`the stream ended with ${sink.remainingBytes()} bytes still to come`));
        else resolve();
      });
    });
  }

  private async fromHub(
    store: PartialStore,
    sink: TensorSink,
    onBytes: (n: number) => void,
  ): Promise<string | undefined> {
    const { repo, commit } = store.manifest;
    const env = this.opts.hubEnv;
    if (!repo || !commit) return "the model did not come from the hub";
    if (!env) return "no hub settings";
    if (env.offline) return "HF_HUB_OFFLINE is set";
    try {
      await fetchTensorsFromHub(new HubClient(env), sink, { repo, commit, onBytes, log: this.opts.log });
      return undefined;
    } catch (err) {
      return errorMessage(err);
    }
  }
}

/** Bytes of checked chunks waiting for the disk before the stream pauses, and below which it resumes. */
const MAX_QUEUED_BYTES = 8 * 1024 * 1024;
const RESUME_BELOW_BYTES = 4 * 1024 * 1024;

/** Why a chunk cannot be written: not the tensor it claims, not where it continues, or corrupted. */
function chunkProblem(sink: TensorSink, chunk: TensorChunk, expected: number): string | undefined {
  const tensor = sink.tensor(chunk.name);
  if (!tensor) return `a chunk of "${chunk.name}", which was not asked for`;
  if (chunk.total !== tensor.byteLength)
    return `"${chunk.name}" is ${chunk.total} bytes at the source, ${tensor.byteLength} in the model's table`;
  if (crc32(chunk.payload) !== chunk.crc32)
    return `chunk of "${chunk.name}" at byte ${chunk.offset} (${chunk.payload.length} bytes) failed its crc32 check`;
  if (expected !== chunk.offset)
    return `chunk of "${chunk.name}" starts at byte ${chunk.offset}, expected ${expected}`;
  return undefined;
}

function grpcMessage(err: unknown): string {
  const details = (err as { details?: unknown })?.details;
  return typeof details === "string" && details.length > 0 ? details : errorMessage(err);
}
