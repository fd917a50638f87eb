// Where received tensor bytes go: one safetensors file per part of the model (a layer, the embedding, the head)
// holding the tensors this node lacks of it, written in place at each tensor's final offset. The file is
// <name>.incomplete until every tensor is in, with a small sidecar recording how many bytes of each tensor are
// written, synced and verified, so a transfer cut by a crash or a lost peer resumes from there. A finished file
// is synced, renamed and added to the store's index: only then does the engine (or a peer) see it.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { join } from "node:path";
import { partOf, type TableTensor } from "../common/model-table.js";
import { bytesPerElement } from "../common/safetensors.js";
import { type PartialStore, writeAtomicAsync } from "./store.js";

interface TensorState {
  tensor: TableTensor;
  group: GroupFile;
  /** Absolute offset of the tensor's first byte in the group file. */
  fileOffset: number;
  /** Bytes written, synced and verified, from the tensor's start. */
  done: number;
}

interface GroupFile {
  name: string;
  path: string;
  sidecar: string;
  layout: string;
  header: Buffer;
  size: number;
  tensors: TensorState[];
  handle?: FileHandle;
}

/** A verified piece of a tensor, to be written at its offset. */
export interface SinkPiece {
  name: string;
  offset: number;
  payload: Uint8Array;
}

/** Pieces that land back to back in one file: one writev. */
interface WriteRun {
  group: GroupFile;
  position: number;
  bytes: number;
  buffers: Uint8Array[];
  /** Bytes each tensor gains once the run is written. */
  advances: Map<TensorState, number>;
}

/** Buffers per writev (the usual IOV_MAX is 1024). */
const maxBuffersPerWrite = 512;

/** Sync and record progress after this many new bytes or this long (a crash loses at most that much). */
const checkpointBytes = 64 * 1024 * 1024;
const checkpointMs = 1000;

export class TensorSink {
  private readonly states = new Map<string, TensorState>();
  private unsynced = 0;
  private lastCheckpoint = Date.now();
  /** A checkpoint running behind the writes, and what it failed with (thrown by the next write). */
  private background: Promise<void> | undefined;
  private backgroundError: unknown;

  private constructor(
    private readonly store: PartialStore,
    private readonly groups: GroupFile[],
  ) {
    for (const g of groups) for (const s of g.tensors) this.states.set(s.tensor.name, s);
  }

  /** Lays out files for the missing tensors, picking up what an interrupted transfer left. */
  static async open(store: PartialStore, missing: TableTensor[]): Promise<TensorSink> {
    const byPart = new Map<string, TableTensor[]>();
    for (const t of missing) {
      const part = partOf(t.name);
      const key =
        part === undefined
          ? "other"
          : typeof part === "number"
            ? `layer-${String(part).padStart(3, "0")}`
            : part;
      byPart.set(key, [...(byPart.get(key) ?? []), t]);
    }
    const groups: GroupFile[] = [];
    for (const [part, tensors] of [...byPart].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const group = layoutGroup(store, `model-${part}`, tensors);
      await resumeOrCreate(group);
      groups.push(group);
    }
    return new TensorSink(store, groups);
  }

  /** Every unfinished tensor with its first missing byte, in file order. */
  wants(): Array<{ name: string; offset: number }> {
    const out: Array<{ name: string; offset: number }> = [];
    for (const g of this.groups)
      for (const s of g.tensors)
        if (s.done < s.tensor.byteLength) out.push({ name: s.tensor.name, offset: s.done });
    return out;
  }

  totalBytes(): number {
    let n = 0;
    for (const s of this.states.values()) n += s.tensor.byteLength;
    return n;
  }

  remainingBytes(): number {
    let n = 0;
    for (const s of this.states.values()) n += s.tensor.byteLength - s.done;
    return n;
  }

  /** The next byte of the tensor this sink accepts (undefined: not asked for). */
  nextOffset(name: string): number | undefined {
    return this.states.get(name)?.done;
  }

  tensor(name: string): TableTensor | undefined {
    return this.states.get(name)?.tensor;
  }

  /** Writes verified bytes of a tensor, which must continue exactly where it stands. */
  write(name: string, offset: number, payload: Uint8Array): Promise<void> {
    return this.writeMany([{ name, offset, payload }]);
  }

  /**
   * Writes verified pieces in order, each continuing exactly where its tensor stands (after the pieces before
   * it): pieces that follow each other in one file go down in one writev, so a stream of small chunks costs a
   * few syscalls per batch instead of one each.
   */
  async writeMany(pieces: SinkPiece[]): Promise<void> {
    if (this.backgroundError) throw this.backgroundError;
    const runs = this.runsOf(pieces);
    for (const run of runs) {
      await writevFully(run.group.handle!, run.buffers, run.position);
      for (const [state, bytes] of run.advances) state.done += bytes;
      this.unsynced += run.bytes;
    }
    if (this.unsynced >= checkpointBytes || Date.now() - this.lastCheckpoint >= checkpointMs)
      this.checkpointBehind();
  }

  /** Checks every piece's place and groups the pieces into runs of contiguous bytes of one file. */
  private runsOf(pieces: SinkPiece[]): WriteRun[] {
    const next = new Map<TensorState, number>();
    const runs: WriteRun[] = [];
    let run: WriteRun | undefined;
    for (const { name, offset, payload } of pieces) {
      const state = this.states.get(name);
      if (!state) throw new Error(`tensor "${name}" was not asked for`);
      const expected = next.get(state) ?? state.done;
      if (offset !== expected)
        throw new Error(`tensor "${name}": bytes from ${offset} arrived, expected ${expected}`);
      if (offset + payload.byteLength > state.tensor.byteLength)
        throw new Error(
          `tensor "${name}": ${offset + payload.byteLength} bytes arrived, it has ${state.tensor.byteLength}`,
        );
      next.set(state, offset + payload.byteLength);
      if (payload.byteLength === 0) continue;
      const position = state.fileOffset + offset;
      if (
        !run ||
        run.group !== state.group ||
        run.position + run.bytes !== position ||
        run.buffers.length >= maxBuffersPerWrite
      ) {
        run = { group: state.group, position, bytes: 0, buffers: [], advances: new Map() };
        runs.push(run);
      }
      run.buffers.push(payload);
      run.bytes += payload.byteLength;
      run.advances.set(state, (run.advances.get(state) ?? 0) + payload.byteLength);
    }
    return runs;
  }

  /**
   * Starts a checkpoint without waiting for it: the disk flushes while the next chunks arrive (waiting on each
   * 64 MB flush stalled the stream). One at a time; a write that finds one running leaves it be.
   */
  private checkpointBehind(): void {
    if (this.background) return;
    this.background = this.syncNow()
      .catch((err: unknown) => {
        this.backgroundError = err;
      })
      .finally(() => {
        this.background = undefined;
      });
  }

  /** Syncs the files and records how far each tensor got. */
  async checkpoint(): Promise<void> {
    await this.background;
    if (this.backgroundError) throw this.backgroundError;
    await this.syncNow();
  }

  /**
   * The progress recorded is what was written before the flush began: datasync makes at least those bytes
   * durable, so a crash resumes from a verified offset whatever was written meanwhile.
   */
  private async syncNow(): Promise<void> {
    this.unsynced = 0;
    this.lastCheckpoint = Date.now();
    const open = this.groups.flatMap((g) =>
      g.handle
        ? [{ g, handle: g.handle, done: Object.fromEntries(g.tensors.map((s) => [s.tensor.name, s.done])) }]
        : [],
    );
    for (const { g, handle, done } of open) {
      await handle.datasync();
      // Off the event loop: a rename waits for the file system's journal, which is busy flushing the data
      // written meanwhile (a synchronous one stalled the receiving stream for a tenth of the transfer).
      await writeAtomicAsync(g.sidecar, JSON.stringify({ layout: g.layout, done }));
    }
  }

  /** Completes every file whose tensors are all in; returns the number of tensors that became available. */
  async finish(): Promise<number> {
    await this.background;
    let added = 0;
    for (const g of this.groups) {
      if (!g.handle || g.tensors.some((s) => s.done < s.tensor.byteLength)) continue;
      await g.handle.sync();
      await g.handle.close();
      g.handle = undefined;
      renameSync(`${g.path}.incomplete`, g.path);
      rmSync(g.sidecar, { force: true });
      this.store.addFile(
        g.name,
        g.tensors.map((s) => s.tensor.name),
      );
      added += g.tensors.length;
    }
    return added;
  }

  /** Records progress and closes the files (an interrupted transfer resumes from here). */
  async close(): Promise<void> {
    await this.checkpoint();
    for (const g of this.groups) {
      await g.handle?.close();
      g.handle = undefined;
    }
  }
}

/**
 * A valid safetensors layout for the tensors: contiguous data from offset 0, the widest elements first (every
 * tensor stays aligned to its element size), the header padded to 8 bytes, the source shard's metadata kept.
 */
function layoutGroup(store: PartialStore, base: string, tensors: TableTensor[]): GroupFile {
  const sorted = [...tensors].sort(
    (a, b) =>
      bytesPerElement(b.dtype) - bytesPerElement(a.dtype) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  const metadata = store.table.shards.get(sorted[0].file)?.metadata ?? {};
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of sorted) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.byteLength] };
    offset += t.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.concat([Buffer.alloc(8), Buffer.from(json, "utf8")]);
  headerBytes.writeBigUInt64LE(BigInt(headerBytes.length - 8));
  const name = existingIncomplete(store, base) ?? store.freshName(base);
  const path = join(store.dir, name);
  const group: GroupFile = {
    name,
    path,
    sidecar: `${path}.incomplete.json`,
    layout: createHash("sha256").update(json).digest("hex").slice(0, 16),
    header: headerBytes,
    size: headerBytes.length + offset,
    tensors: [],
  };
  let at = headerBytes.length;
  for (const t of sorted) {
    group.tensors.push({ tensor: t, group, fileOffset: at, done: 0 });
    at += t.byteLength;
  }
  return group;
}

/** The name an interrupted transfer of this part used, if one is waiting. */
function existingIncomplete(store: PartialStore, base: string): string | undefined {
  const held = new Set(Object.values(store.held()));
  for (let i = 0; i < 100; i++) {
    const name = `${base}${i ? `-${i}` : ""}.safetensors`;
    if (held.has(name)) continue;
    return existsSync(join(store.dir, `${name}.incomplete`)) ? name : undefined;
  }
  return undefined;
}

/** Reopens an interrupted file whose layout still matches (keeping its recorded progress), else starts it anew. */
async function resumeOrCreate(group: GroupFile): Promise<void> {
  const incomplete = `${group.path}.incomplete`;
  if (existsSync(incomplete) && existsSync(group.sidecar)) {
    try {
      const saved = JSON.parse(readFileSync(group.sidecar, "utf8")) as {
        layout: string;
        done: Record<string, number>;
      };
      if (saved.layout === group.layout) {
        for (const s of group.tensors)
          s.done = Math.min(s.tensor.byteLength, Math.max(0, saved.done[s.tensor.name] ?? 0));
        group.handle = await open(incomplete, "r+");
        return;
      }
    } catch {
      // An unreadable record: start the file over.
    }
  }
  rmSync(group.sidecar, { force: true });
  group.handle = await open(incomplete, "w+");
  await group.handle.truncate(group.size);
  await group.handle.write(group.header, 0, group.header.length, 0);
}

/** Writes the buffers back to back from position, however many calls the kernel takes. */
async function writevFully(fh: FileHandle, buffers: Uint8Array[], position: number): Promise<void> {
  let at = position;
  let left = buffers;
  while (left.length > 0) {
    const { bytesWritten } = await fh.writev(left, at);
    at += bytesWritten;
    let skip = bytesWritten;
    const rest: Uint8Array[] = [];
    for (const b of left) {
      if (skip >= b.byteLength) skip -= b.byteLength;
      else {
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    left = rest;
  }
}
