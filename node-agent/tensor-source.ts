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
import type { FetchTensorsRequest, ModelInfo, TensorChunk } from "../common/wire/types.js";
import { grpcStatus } from "./grpc-surface.js";

type FetchCall = grpc.ServerWritableStream<FetchTensorsRequest, TensorChunk>;

const defaultChunkBytes = 1024 * 1024;
const maxChunkBytes = 4 * 1024 * 1024;

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
    try {
      for (const { want, at } of located) {
        let fh = files.get(at.file);
        if (!fh) {
          fh = await open(at.file, "r");
          files.set(at.file, fh);
        }
        const total = at.info.byteLength;
        for (let pos = want.offset; pos < total || total === 0; pos += chunkBytes) {
          if (stopped()) return;
          const n = Math.min(chunkBytes, total - pos);
          const payload = Buffer.allocUnsafe(n);
          await readFully(fh, payload, at.info.byteOffset + pos, at.file);
          const ok = call.write({ name: want.name, offset: pos, total, payload, crc32: crc32(payload) });
          if (!ok) await drained(call, stopped);
          await pace.sent(n);
          if (total === 0) break;
        }
      }
    } finally {
      for (const fh of files.values()) await fh.close();
    }
  }
}

async function readFully(fh: FileHandle, into: Buffer, position: number, file: string): Promise<void> {
  let got = 0;
  while (got < into.length) {
    const { bytesRead } = await fh.read(into, got, into.length - got, position + got);
    if (bytesRead === 0) throw new Error(`${file}: ends before byte ${position + into.length}`);
    got += bytesRead;
  }
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
