// The sending side of FetchTensors (docs/weights.md): streams tensors from this node's checkpoint folder (a full
// one, or the partial checkpoint it holds) to a node that lacks them. Reads follow the stream's backpressure
// (a slow receiver slows the reads, nothing piles up in memory), every chunk carries its crc32, and an optional
// rate cap keeps a shared link usable for the pipeline's activations.

import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import { readIndex, readSafetensorsHeader, type TensorInfo } from "../common/safetensors.js";
import { ChunkSlot, type EncodedTensorChunk, slotBytes } from "../common/wire/tensor-chunk.js";
import type { FetchTensorsRequest, ModelInfo, TensorChunk } from "../common/wire/types.js";
import { grpcStatus } from "./grpc-surface.js";

type FetchCall = grpc.ServerWritableStream<FetchTensorsRequest, TensorChunk | EncodedTensorChunk>;

/**
 * Small chunks: each message is allocated (and copied) by grpc-js on both ends, and buffers under the C
 * allocator's mmap threshold (128 KiB) reuse freed memory where 1 MiB ones fault in fresh pages every time.
 */
const defaultChunkBytes = 64 * 1024;
const maxChunkBytes = 4 * 1024 * 1024;
/** Bytes per read from the checkpoint, split into chunks. */
const readBytes = 1024 * 1024;
/** Reads whose chunks may be in grpc-js's hands at once (the slot buffers a stream keeps). */
const readsInFlight = 4;
/** Tensor names up to this many bytes fit a pooled slot (longer ones get a buffer of their own). */
const pooledNameBytes = 1024;

export interface TensorSourceOptions {
  modelDir: string;
  /** The model this node holds now (id and fingerprint checks). */
  model: () => ModelInfo | null;
  /** Cap on the bytes per second this node sends (0/absent: none). */
  maxBytesPerSecond?: number;
  log: (line: string) => void;
}

interface Located {
  file: string;
  info: TensorInfo;
}

export class TensorSource {
  constructor(private readonly opts: TensorSourceOptions) {}

  serve(call: FetchCall): void {
    const req = call.request;
    let located: Array<{ want: { name: string; offset: number }; at: Located }>;
    try {
      located = this.locate(req);
    } catch (err) {
      call.emit("error", err);
      return;
    }
    let stopped = false;
    call.on("cancelled", () => {
      stopped = true;
    });
    const chunkBytes = Math.min(maxChunkBytes, req.chunk_bytes || defaultChunkBytes);
    this.stream(call, located, chunkBytes, () => stopped).then(
      () => {
        if (!stopped) call.end();
      },
      (err) => {
        this.opts.log(`FetchTensors to ${call.getPeer()} failed: ${errorMessage(err)}`);
        if (!stopped) call.emit("error", grpcStatus(grpc.status.INTERNAL, errorMessage(err)));
      },
    );
  }

  /** Every wanted tensor's file and range here; refuses the whole call naming what is missing. */
  private locate(req: FetchTensorsRequest): Array<{ want: { name: string; offset: number }; at: Located }> {
    const model = this.opts.model();
    if (!model) throw grpcStatus(grpc.status.FAILED_PRECONDITION, "this node has no usable model");
    if (req.model_id && req.model_id !== model.id)
      throw grpcStatus(
        grpc.status.FAILED_PRECONDITION,
        `asked for model ${req.model_id}, this node holds ${model.id}`,
      );
    if (req.fingerprint && model.fingerprint && req.fingerprint !== model.fingerprint)
      throw grpcStatus(
        grpc.status.FAILED_PRECONDITION,
        `model ${model.id} here has other tensors (fingerprint ${model.fingerprint}, asked for ${req.fingerprint})`,
      );
    const weightMap = readIndex(this.opts.modelDir).weightMap;
    const headers = new Map<string, ReturnType<typeof readSafetensorsHeader>>();
    const out: Array<{ want: { name: string; offset: number }; at: Located }> = [];
    const absent: string[] = [];
    for (const want of req.tensors) {
      const file = weightMap[want.name];
      if (!file) {
        absent.push(want.name);
        continue;
      }
      const path = join(this.opts.modelDir, file);
      let header = headers.get(path);
      if (!header) {
        header = readSafetensorsHeader(path);
        headers.set(path, header);
      }
      const info = header.tensors.get(want.name);
      if (!info) {
        absent.push(want.name);
        continue;
      }
      if (want.offset > info.byteLength)
        throw grpcStatus(
          grpc.status.OUT_OF_RANGE,
          `tensor "${want.name}" has ${info.byteLength} bytes, asked from ${want.offset}`,
        );
      out.push({ want, at: { file: path, info } });
    }
    if (absent.length > 0)
      throw grpcStatus(
        grpc.status.NOT_FOUND,
        `this node does not hold ${absent.length} of the ${req.tensors.length} tensors asked for (first: ${absent[0]})`,
      );
    return out;
  }

  private async stream(
    call: FetchCall,
    located: Array<{ want: { name: string; offset: number }; at: Located }>,
    chunkBytes: number,
    stopped: () => boolean,
  ): Promise<void> {
    const files = new Map<string, FileHandle>();
    const pace = new Pacer(this.opts.maxBytesPerSecond ?? 0);
    // Chunks read with one readv: fewer trips to the thread pool than one read per (small) chunk.
    const perRead = Math.max(1, Math.floor(readBytes / chunkBytes));
    const buffers = new SlotBuffers(slotBytes(pooledNameBytes, chunkBytes), perRead * readsInFlight);
    try {
      for (const { want, at } of located) {
        let fh = files.get(at.file);
        if (!fh) {
          fh = await open(at.file, "r");
          files.set(at.file, fh);
        }
        const name = Buffer.from(want.name, "utf8");
        const total = at.info.byteLength;
        let pos = want.offset;
        // A tensor asked from its end has nothing left; an empty tensor still gets its one (empty) chunk.
        if (pos >= total && total > 0) continue;
        do {
          if (stopped()) return;
          if (name.length <= pooledNameBytes) await buffers.available(perRead, call, stopped);
          if (stopped()) return;
          const slots = chunkSlots(name, pos, total, chunkBytes, perRead, buffers);
          const n = await readvFully(
            fh,
            slots.map((s) => s.payload),
            at.info.byteOffset + pos,
            at.file,
          );
          let ok = true;
          for (const slot of slots) {
            const encoded = slot.seal(crc32(slot.payload));
            // grpc-js has copied the message into its own frame by the time the write completes.
            ok = call.write(encoded, () => buffers.release(slot.buffer)) && ok;
          }
          if (!ok) await drained(call, stopped);
          await pace.sent(n);
          pos += n;
        } while (pos < total);
      }
    } finally {
      for (const fh of files.values()) await fh.close();
    }
  }
}

/** The chunks of one read: up to `count` of `size` bytes from pos (an empty tensor: its one empty chunk). */
function chunkSlots(
  name: Buffer,
  pos: number,
  total: number,
  size: number,
  count: number,
  buffers: SlotBuffers,
): ChunkSlot[] {
  // A name too long for a pooled slot gets buffers of its own (a pooled one taken would never come back).
  const take = () => (name.length <= pooledNameBytes ? buffers.take() : undefined);
  if (total === 0) return [new ChunkSlot(name, 0, 0, 0, take())];
  const slots: ChunkSlot[] = [];
  for (let p = pos; p < total && slots.length < count; p += size)
    slots.push(new ChunkSlot(name, p, total, Math.min(size, total - p), take()));
  return slots;
}

/**
 * The buffers a stream's chunks are encoded in, each back in the pool once grpc-js is done with it (its write
 * callback). A transfer allocates a few MiB once instead of a buffer per 64 KiB chunk: the allocations (and the
 * garbage collections they caused) took more of the sender's time than reading the files.
 */
class SlotBuffers {
  private readonly free: Buffer[] = [];
  private wake: (() => void) | undefined;

  constructor(
    private readonly size: number,
    count: number,
  ) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.allocUnsafe(size));
  }

  /** A pooled buffer, or undefined when none is free (the slot then allocates its own). */
  take(): Buffer | undefined {
    return this.free.pop();
  }

  release(buffer: Buffer): void {
    if (buffer.length !== this.size) return;
    this.free.push(buffer);
    this.wake?.();
  }

  /** Resolves once `count` buffers are free, or when the caller went away. */
  async available(count: number, call: FetchCall, stopped: () => boolean): Promise<void> {
    while (this.free.length < count && !stopped()) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.wake = undefined;
          call.off("cancelled", done);
          call.off("close", done);
          resolve();
        };
        this.wake = done;
        call.on("cancelled", done);
        call.on("close", done);
      });
    }
  }
}

/** Fills the buffers in order from the file at position; the bytes read. */
async function readvFully(fh: FileHandle, into: Buffer[], position: number, file: string): Promise<number> {
  const want = into.reduce((n, b) => n + b.length, 0);
  let got = 0;
  let views = into.filter((b) => b.length > 0);
  while (got < want) {
    const { bytesRead } = await fh.readv(views, position + got);
    if (bytesRead === 0) throw new Error(`${file}: ends before byte ${position + want}`);
    got += bytesRead;
    views = remainder(views, bytesRead);
  }
  return want;
}

/** The views left to fill after the first `skip` bytes went into them. */
function remainder(views: Buffer[], skip: number): Buffer[] {
  let left = skip;
  const out: Buffer[] = [];
  for (const v of views) {
    if (left >= v.length) left -= v.length;
    else {
      out.push(left > 0 ? v.subarray(left) : v);
      left = 0;
    }
  }
  return out;
}

/** Resolves when the stream can take more, or at once when the caller went away. */
function drained(call: FetchCall, stopped: () => boolean): Promise<void> {
  if (stopped()) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      call.off("drain", done);
      call.off("cancelled", done);
      call.off("close", done);
      resolve();
    };
    call.on("drain", done);
    call.on("cancelled", done);
    call.on("close", done);
  });
}

/** Sleeps as needed to keep the bytes sent at or under a rate. */
class Pacer {
  private readonly started = Date.now();
  private sentBytes = 0;

  constructor(private readonly bytesPerSecond: number) {}

  async sent(n: number): Promise<void> {
    if (this.bytesPerSecond <= 0) return;
    this.sentBytes += n;
    const due = this.started + (this.sentBytes / this.bytesPerSecond) * 1000;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}
