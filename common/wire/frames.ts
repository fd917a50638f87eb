// Codecs of the data plane: token payloads, sampling parameters, chunking of large activations and their
// reassembly with size checks. Pure functions and one small class; no I/O.
import type { SamplingParams, TokenLogprob } from "../engine-api.js";
import type { ToolConstraintSpec } from "../tool-grammar.js";
import { type DataFrame, type DataFrameOut, Dtype, type WireSampling } from "./types.js";

/** Payload bytes per frame when an item is split (the brief's 1-4 MiB band). */
export const chunkBytes = 1024 * 1024;

/** Largest item a receiver accepts (one prefill chunk of activations is far smaller). */
export const maxItemBytes = 1024 * 1024 * 1024;

/** Wall clock in microseconds since the Unix epoch, with sub-millisecond resolution. */
export function nowUs(): number {
  return (performance.timeOrigin + performance.now()) * 1000;
}

export function dtypeBytes(dtype: number): number {
  switch (dtype) {
    case Dtype.I32:
    case Dtype.F32:
      return 4;
    case Dtype.BF16:
      return 2;
    default:
      return 0;
  }
}

export function dtypeOfActivation(name: string): Dtype {
  if (name === "f32") return Dtype.F32;
  if (name === "bf16") return Dtype.BF16;
  throw new Error(`unknown activation dtype "${name}"`);
}

export function dtypeName(dtype: number): string {
  return (
    ({ [Dtype.I32]: "i32", [Dtype.F32]: "f32", [Dtype.BF16]: "bf16" } as Record<number, string>)[dtype] ??
    `#${dtype}`
  );
}

/** Token ids as little-endian int32 bytes (a view when the host is little-endian, as every supported one is). */
export function encodeTokens(tokens: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(tokens.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < tokens.length; i++) view.setInt32(i * 4, tokens[i], true);
  return out;
}

export function decodeTokens(payload: Uint8Array): Int32Array {
  const out = new Int32Array(payload.byteLength >>> 2);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt32(i * 4, true);
  return out;
}

export function toWireSampling(s: SamplingParams): WireSampling {
  const wire: WireSampling = {
    temperature: s.temperature ?? 0,
    top_p: s.topP ?? 0,
    top_k: s.topK ?? 0,
    top_logprobs: s.topLogprobs ?? 0,
    logit_bias: (s.logitBias ?? []).map(([token, bias]) => ({ token, bias })),
  };
  if (s.seed !== undefined) wire.seed = s.seed;
  if (s.constraint) wire.constraint = JSON.stringify(s.constraint);
  return wire;
}

export function fromWireSampling(w: WireSampling | null | undefined): SamplingParams {
  if (!w) return {};
  const s: SamplingParams = {};
  if (w.temperature) s.temperature = w.temperature;
  if (w.top_p) s.topP = w.top_p;
  if (w.top_k) s.topK = w.top_k;
  // proto3 `optional`: present only when the sender set it (oneofs: true leaves it undefined otherwise).
  if (w.seed !== undefined && w.seed !== null) s.seed = w.seed;
  if (w.top_logprobs) s.topLogprobs = w.top_logprobs;
  if (w.logit_bias && w.logit_bias.length > 0) s.logitBias = w.logit_bias.map((b) => [b.token, b.bias]);
  // Checked where it is used (the last stage), which fails the sequence when it is malformed.
  if (w.constraint) s.constraint = JSON.parse(w.constraint) as ToolConstraintSpec;
  return s;
}

export function toWireLogprobs(list: TokenLogprob[] | undefined): DataFrameOut["top_logprobs"] {
  return list?.map((l) => ({ token: l.token, logprob: l.logprob })) ?? [];
}

/** Splits an item into frames of at most `size` payload bytes, each repeating the header. */
export function chunkFrames(header: DataFrameOut, payload: Uint8Array, size = chunkBytes): DataFrameOut[] {
  if (payload.byteLength <= size) return [{ ...header, payload, chunk_index: 0, chunk_count: 1 }];
  const count = Math.ceil(payload.byteLength / size);
  const frames: DataFrameOut[] = [];
  for (let i = 0; i < count; i++) {
    const part = payload.subarray(i * size, Math.min(payload.byteLength, (i + 1) * size));
    // Only the first chunk needs the sampling parameters; later ones stay small.
    frames.push({
      ...header,
      sampling: i === 0 ? header.sampling : null,
      payload: part,
      chunk_index: i,
      chunk_count: count,
    });
  }
  return frames;
}

/** What an item's payload must measure, from its header; a reason when the header itself is unusable. */
export function expectedPayloadBytes(frame: DataFrame, hiddenSize?: number): number | string {
  const width = dtypeBytes(frame.dtype);
  if (width === 0) return `unknown dtype ${frame.dtype}`;
  if (frame.count === 0) return "count must be at least 1";
  const shape = frame.shape;
  if (shape.length === 0 || shape[0] !== frame.count)
    return `shape ${JSON.stringify(shape)} does not start with count ${frame.count}`;
  if (hiddenSize !== undefined && shape.length === 2 && shape[1] !== hiddenSize)
    return `shape ${JSON.stringify(shape)} has width ${shape[1]} but this stage takes ${hiddenSize}`;
  const bytes = shape.reduce((a, b) => a * b, 1) * width;
  if (bytes > maxItemBytes) return `item of ${bytes} bytes exceeds the ${maxItemBytes}-byte limit`;
  return bytes;
}

export type AssembledItem = { frame: DataFrame; payload: Uint8Array } | { frame: DataFrame; problem: string };

/**
 * Reassembles chunked items from one stream. Chunks of an item arrive in order and back to back (one writer per
 * stream); anything else is reported as a problem for that sequence instead of being guessed at.
 */
export class FrameAssembler {
  private pending: { frame: DataFrame; parts: Uint8Array[]; bytes: number } | undefined;

  /** Returns the finished item, a problem, or undefined while more chunks are due. */
  push(frame: DataFrame, expectedBytes: number): AssembledItem | undefined {
    const count = Math.max(1, frame.chunk_count);
    if (this.pending && (this.pending.frame.seq !== frame.seq || this.pending.frame.step !== frame.step)) {
      const stale = this.pending.frame;
      this.pending = undefined;
      return {
        frame: stale,
        problem: `chunk ${frame.chunk_index} of seq ${frame.seq} arrived before seq ${stale.seq} step ${stale.step} was complete`,
      };
    }
    if (count === 1) return this.finish(frame, [frame.payload], frame.payload.byteLength, expectedBytes);
    const expectedIndex = this.pending ? this.pending.parts.length : 0;
    if (frame.chunk_index !== expectedIndex) {
      this.pending = undefined;
      return {
        frame,
        problem: `chunk ${frame.chunk_index} of ${count} arrived where chunk ${expectedIndex} was due`,
      };
    }
    if (!this.pending) this.pending = { frame, parts: [], bytes: 0 };
    this.pending.parts.push(frame.payload);
    this.pending.bytes += frame.payload.byteLength;
    if (this.pending.bytes > expectedBytes) {
      const first = this.pending.frame;
      this.pending = undefined;
      return {
        frame: first,
        problem: `chunks carry more than the ${expectedBytes} bytes the header announces`,
      };
    }
    if (this.pending.parts.length < count) return undefined;
    const { frame: first, parts, bytes } = this.pending;
    this.pending = undefined;
    return this.finish(first, parts, bytes, expectedBytes);
  }

  private finish(frame: DataFrame, parts: Uint8Array[], bytes: number, expected: number): AssembledItem {
    if (bytes !== expected)
      return {
        frame,
        problem: `payload has ${bytes} bytes but the header (${dtypeName(frame.dtype)} ${JSON.stringify(frame.shape)}) needs ${expected}`,
      };
    return { frame, payload: parts.length === 1 ? parts[0] : Buffer.concat(parts) };
  }
}
