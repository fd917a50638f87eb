// A hand-written protobuf codec for DataFrame, the message of the Data and Results streams (one per hop per
// token). proto-loader's generic codec builds a protobufjs message (fromObject), encodes it through a Writer op
// list, and on receipt decodes into a message and converts it again (toObject over ~22 fields); run cold once
// per token that costs tens of microseconds a hop. This codec writes the wire bytes straight from the frame into
// one buffer and reads them straight into the object proto-loader would have produced (protoLoaderOptions:
// keepCase, longs and enums as Number, defaults filled, oneofs named), key order included.
// Anything it does not expect (an unknown field, another wire type for a known field) is handed to the generic
// decoder, so odd input still gets proto-loader's exact answer. test/wire-codec.test.ts holds both codecs equal.
import type { DataFrame, DataFrameOut, WireSampling, WireTokenLogprob } from "./wire-types.js";

// Wire types.
const VARINT = 0;
const FIXED64 = 1;
const BYTES = 2;
const FIXED32 = 5;

/** Field numbers of DataFrame (proto/cluster.proto). */
const F = {
  kind: 1,
  seq: 2,
  step: 3,
  position: 4,
  count: 5,
  dtype: 6,
  shape: 7,
  chunk_index: 8,
  chunk_count: 9,
  payload: 10,
  sampling: 11,
  want_result: 12,
  sent_at_us: 13,
  plan_id: 14,
  token: 15,
  logprob: 16,
  top_logprobs: 17,
  error_code: 18,
  error: 19,
  origin_stage: 20,
  origin_at_us: 21,
  wave: 22,
} as const;

const tag = (field: number, wireType: number): number => (field << 3) | wireType;
const twoTo32 = 4294967296;
const twoTo64 = 2 ** 64;

/** Thrown by the reader when the input is not what this codec decodes; the generic decoder takes over. */
class Unexpected extends Error {}

// ------------------------------------------------------------ encoding

/**
 * The field values to write, coerced as protobufjs's fromObject coerces them (uint32: >>> 0, int32: | 0,
 * float/double: Number, bool: Boolean, string: String). Zero values are left out (proto3 reads an absent field as
 * its default), except where presence is meaning: sampling and Sampling.seed.
 */
interface Plan {
  size: number;
  strings: Array<{ field: number; bytes: number; text: string }>;
  sampling?: SamplingPlan;
  samplingBytes: number;
  shapeBytes: number;
}

interface SamplingPlan {
  size: number;
  /** Varint bytes of the seed when one is set. */
  seed?: number[];
}

function varintSize(v: number): number {
  // v is an unsigned 32-bit integer here.
  if (v < 0x80) return 1;
  if (v < 0x4000) return 2;
  if (v < 0x200000) return 3;
  if (v < 0x10000000) return 4;
  return 5;
}

/** Bytes of an int32 as protobuf writes it: negative values are sign-extended to ten bytes. */
function int32Size(v: number): number {
  return v < 0 ? 10 : varintSize(v);
}

/** A uint64 (a non-negative integer Number, saturated at 2^64 - 1) as varint bytes. */
function uint64Bytes(v: number): number[] {
  let lo = v >= twoTo64 ? 0xffffffff : v % twoTo32;
  let hi = v >= twoTo64 ? 0xffffffff : Math.floor(v / twoTo32);
  const bytes: number[] = [];
  while (hi > 0 || lo > 127) {
    bytes.push((lo & 127) | 128);
    lo = ((lo >>> 7) | (hi << 25)) >>> 0;
    hi >>>= 7;
  }
  bytes.push(lo);
  return bytes;
}

/** protobufjs turns a uint64 Number into a Long (unsigned): NaN and negatives become 0, fractions are cut. */
function uint64Of(value: unknown): number {
  const n = Number(value);
  if (!(n > 0)) return 0;
  return Math.trunc(n);
}

const isPositiveZero = (v: number): boolean => Object.is(v, 0);

function samplingPlan(s: WireSampling): SamplingPlan {
  let size = 0;
  if (s.temperature != null && !isPositiveZero(Number(s.temperature))) size += 5;
  if (s.top_p != null && !isPositiveZero(Number(s.top_p))) size += 5;
  if (s.top_k != null && s.top_k >>> 0 !== 0) size += 1 + varintSize(s.top_k >>> 0);
  let seed: number[] | undefined;
  if (s.seed != null) {
    seed = uint64Bytes(uint64Of(s.seed));
    size += 1 + seed.length;
  }
  if (s.top_logprobs != null && s.top_logprobs >>> 0 !== 0) size += 1 + varintSize(s.top_logprobs >>> 0);
  if (s.logit_bias != null) {
    if (!Array.isArray(s.logit_bias)) throw new TypeError("DataFrame.sampling.logit_bias: array expected");
    for (const b of s.logit_bias) {
      const inner = pairSize(b.token, b.bias);
      size += 1 + varintSize(inner) + inner;
    }
  }
  return { size, seed };
}

/** Size of a {int32 token = 1; float value = 2} message (LogitBias, TokenLogprob). */
function pairSize(token: number, value: number): number {
  let size = 0;
  if (token != null && (token | 0) !== 0) size += 1 + int32Size(token | 0);
  if (value != null && !isPositiveZero(Number(value))) size += 5;
  return size;
}

function uint32Field(field: number, value: number | undefined): number {
  if (value == null) return 0;
  const v = value >>> 0;
  return v === 0 ? 0 : varintSize(tag(field, VARINT)) + varintSize(v);
}

function planOf(frame: DataFrameOut): Plan {
  let size = 0;
  size += enumSize(F.kind, frame.kind);
  size += uint32Field(F.seq, frame.seq);
  size += uint32Field(F.step, frame.step);
  size += uint32Field(F.position, frame.position);
  size += uint32Field(F.count, frame.count);
  size += enumSize(F.dtype, frame.dtype);
  let shapeBytes = 0;
  if (frame.shape != null) {
    if (!Array.isArray(frame.shape)) throw new TypeError("DataFrame.shape: array expected");
    for (const d of frame.shape) shapeBytes += varintSize(d >>> 0);
    if (shapeBytes > 0) size += 1 + varintSize(shapeBytes) + shapeBytes;
  }
  size += uint32Field(F.chunk_index, frame.chunk_index);
  size += uint32Field(F.chunk_count, frame.chunk_count);
  if (frame.payload != null && frame.payload.byteLength > 0)
    size += 1 + varintSize(frame.payload.byteLength) + frame.payload.byteLength;
  let sampling: SamplingPlan | undefined;
  let samplingBytes = 0;
  if (frame.sampling != null) {
    if (typeof frame.sampling !== "object") throw new TypeError("DataFrame.sampling: object expected");
    sampling = samplingPlan(frame.sampling);
    samplingBytes = sampling.size;
    size += 1 + varintSize(samplingBytes) + samplingBytes;
  }
  if (frame.want_result) size += 2;
  if (frame.sent_at_us != null && !isPositiveZero(Number(frame.sent_at_us))) size += 9;
  const strings: Plan["strings"] = [];
  const addString = (field: number, value: string | undefined): void => {
    if (value == null) return;
    const text = String(value);
    if (text.length === 0) return;
    const bytes = Buffer.byteLength(text, "utf8");
    strings.push({ field, bytes, text });
    size += varintSize(tag(field, BYTES)) + varintSize(bytes) + bytes;
  };
  addString(F.plan_id, frame.plan_id);
  if (frame.token != null && (frame.token | 0) !== 0) size += 1 + int32Size(frame.token | 0);
  if (frame.logprob != null && !isPositiveZero(Number(frame.logprob))) size += 6;
  if (frame.top_logprobs != null) {
    if (!Array.isArray(frame.top_logprobs)) throw new TypeError("DataFrame.top_logprobs: array expected");
    for (const l of frame.top_logprobs) {
      const inner = pairSize(l.token, l.logprob);
      size += 2 + varintSize(inner) + inner;
    }
  }
  addString(F.error_code, frame.error_code);
  addString(F.error, frame.error);
  size += uint32Field(F.origin_stage, frame.origin_stage);
  if (frame.origin_at_us != null && !isPositiveZero(Number(frame.origin_at_us))) size += 10;
  size += uint32Field(F.wave, frame.wave);
  return { size, strings, sampling, samplingBytes, shapeBytes };
}

function enumSize(field: number, value: number | undefined): number {
  if (typeof value !== "number") return 0;
  const v = value | 0;
  return v === 0 ? 0 : varintSize(tag(field, VARINT)) + int32Size(v);
}

class Out {
  readonly buf: Buffer;
  pos = 0;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  varint(v: number): void {
    while (v > 127) {
      this.buf[this.pos++] = (v & 127) | 128;
      v >>>= 7;
    }
    this.buf[this.pos++] = v;
  }

  int32(v: number): void {
    if (v >= 0) {
      this.varint(v);
      return;
    }
    // Sign-extended to 64 bits: the low 32 bits, then the high word all ones.
    let lo = v >>> 0;
    for (let i = 0; i < 4; i++) {
      this.buf[this.pos++] = (lo & 127) | 128;
      lo >>>= 7;
    }
    this.buf[this.pos++] = (lo & 0x0f) | 0x70 | 128;
    for (let i = 0; i < 4; i++) this.buf[this.pos++] = 0xff;
    this.buf[this.pos++] = 0x01;
  }

  raw(bytes: number[]): void {
    for (const b of bytes) this.buf[this.pos++] = b;
  }

  float(v: number): void {
    this.buf.writeFloatLE(v, this.pos);
    this.pos += 4;
  }

  double(v: number): void {
    this.buf.writeDoubleLE(v, this.pos);
    this.pos += 8;
  }

  bytes(b: Uint8Array): void {
    this.varint(b.byteLength);
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }
}

function writeUint32(out: Out, field: number, value: number | undefined): void {
  if (value == null) return;
  const v = value >>> 0;
  if (v === 0) return;
  out.varint(tag(field, VARINT));
  out.varint(v);
}

function writeEnum(out: Out, field: number, value: number | undefined): void {
  if (typeof value !== "number") return;
  const v = value | 0;
  if (v === 0) return;
  out.varint(tag(field, VARINT));
  out.int32(v);
}

function writePair(out: Out, field: number, token: number, value: number): void {
  out.varint(tag(field, BYTES));
  out.varint(pairSize(token, value));
  if (token != null && (token | 0) !== 0) {
    out.varint(tag(1, VARINT));
    out.int32(token | 0);
  }
  if (value != null && !isPositiveZero(Number(value))) {
    out.varint(tag(2, FIXED32));
    out.float(Number(value));
  }
}

function writeSampling(out: Out, s: WireSampling, plan: SamplingPlan): void {
  out.varint(tag(F.sampling, BYTES));
  out.varint(plan.size);
  if (s.temperature != null && !isPositiveZero(Number(s.temperature))) {
    out.varint(tag(1, FIXED32));
    out.float(Number(s.temperature));
  }
  if (s.top_p != null && !isPositiveZero(Number(s.top_p))) {
    out.varint(tag(2, FIXED32));
    out.float(Number(s.top_p));
  }
  writeUint32(out, 3, s.top_k);
  if (plan.seed !== undefined) {
    out.varint(tag(4, VARINT));
    out.raw(plan.seed);
  }
  writeUint32(out, 5, s.top_logprobs);
  for (const b of s.logit_bias ?? []) writePair(out, 6, b.token, b.bias);
}

/** DataFrame bytes as the proto defines them; what protobufjs writes, less the fields at their default value. */
export function encodeDataFrame(frame: DataFrameOut): Buffer {
  if (frame === null || typeof frame !== "object" || Array.isArray(frame))
    throw new TypeError("DataFrame: object expected");
  const plan = planOf(frame);
  const out = new Out(plan.size);
  writeEnum(out, F.kind, frame.kind);
  writeUint32(out, F.seq, frame.seq);
  writeUint32(out, F.step, frame.step);
  writeUint32(out, F.position, frame.position);
  writeUint32(out, F.count, frame.count);
  writeEnum(out, F.dtype, frame.dtype);
  if (plan.shapeBytes > 0 && frame.shape) {
    out.varint(tag(F.shape, BYTES));
    out.varint(plan.shapeBytes);
    for (const d of frame.shape) out.varint(d >>> 0);
  }
  writeUint32(out, F.chunk_index, frame.chunk_index);
  writeUint32(out, F.chunk_count, frame.chunk_count);
  if (frame.payload != null && frame.payload.byteLength > 0) {
    out.varint(tag(F.payload, BYTES));
    out.bytes(frame.payload);
  }
  if (plan.sampling && frame.sampling) writeSampling(out, frame.sampling, plan.sampling);
  if (frame.want_result) {
    out.varint(tag(F.want_result, VARINT));
    out.varint(1);
  }
  if (frame.sent_at_us != null && !isPositiveZero(Number(frame.sent_at_us))) {
    out.varint(tag(F.sent_at_us, FIXED64));
    out.double(Number(frame.sent_at_us));
  }
  const strings = plan.strings;
  let next = 0;
  const writeStringsUpTo = (field: number): void => {
    while (next < strings.length && strings[next].field <= field) {
      const s = strings[next++];
      out.varint(tag(s.field, BYTES));
      out.varint(s.bytes);
      out.pos += out.buf.write(s.text, out.pos, s.bytes, "utf8");
    }
  };
  writeStringsUpTo(F.plan_id);
  if (frame.token != null && (frame.token | 0) !== 0) {
    out.varint(tag(F.token, VARINT));
    out.int32(frame.token | 0);
  }
  if (frame.logprob != null && !isPositiveZero(Number(frame.logprob))) {
    out.varint(tag(F.logprob, FIXED32));
    out.float(Number(frame.logprob));
  }
  for (const l of frame.top_logprobs ?? []) writePair(out, F.top_logprobs, l.token, l.logprob);
  writeStringsUpTo(F.error);
  writeUint32(out, F.origin_stage, frame.origin_stage);
  if (frame.origin_at_us != null && !isPositiveZero(Number(frame.origin_at_us))) {
    out.varint(tag(F.origin_at_us, FIXED64));
    out.double(Number(frame.origin_at_us));
  }
  writeUint32(out, F.wave, frame.wave);
  if (out.pos !== plan.size)
    throw new Error(`DataFrame encoder wrote ${out.pos} bytes, planned ${plan.size} (a codec bug)`);
  return out.buf;
}

// ------------------------------------------------------------ decoding

class In {
  readonly buf: Buffer;
  pos: number;
  end: number;

  constructor(buf: Buffer, pos: number, end: number) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }

  /** A varint's low 32 bits, unsigned (protobufjs's uint32(); int32() is this | 0). */
  varint(): number {
    const buf = this.buf;
    let result = 0;
    let shift = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Unexpected("truncated varint");
      const b = buf[this.pos++];
      if (shift < 32) result |= (b & 127) << shift;
      shift += 7;
      if (b < 128) return result >>> 0;
    }
    throw new Unexpected("varint longer than ten bytes");
  }

  /** A uint64 varint as a Number (what longs: Number makes of it). */
  uint64(): number {
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Unexpected("truncated varint");
      const b = this.buf[this.pos++];
      if (i < 4) lo |= (b & 127) << (7 * i);
      else if (i === 4) {
        lo |= (b & 0x0f) << 28;
        hi |= (b & 127) >> 4;
      } else hi |= (b & 127) << (7 * i - 32);
      if (b < 128) return (lo >>> 0) + (hi >>> 0) * twoTo32;
    }
    throw new Unexpected("varint longer than ten bytes");
  }

  length(): number {
    const n = this.varint();
    if (this.pos + n > this.end) throw new Unexpected("length past the end");
    return n;
  }

  float(): number {
    if (this.pos + 4 > this.end) throw new Unexpected("truncated float");
    const v = this.buf.readFloatLE(this.pos);
    this.pos += 4;
    return v;
  }

  double(): number {
    if (this.pos + 8 > this.end) throw new Unexpected("truncated double");
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }

  string(): string {
    const n = this.length();
    const s = this.buf.toString("utf8", this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
}

function expectWireType(t: number, wireType: number): void {
  if ((t & 7) !== wireType) throw new Unexpected(`field ${t >>> 3} has wire type ${t & 7}`);
}

function readPair(input: In, second: "logprob"): WireTokenLogprob;
function readPair(input: In, second: "bias"): { token: number; bias: number };
function readPair(input: In, second: "logprob" | "bias"): WireTokenLogprob | { token: number; bias: number } {
  const length = input.length();
  const end = input.pos + length;
  const outerEnd = input.end;
  input.end = end;
  let token = 0;
  let value = 0;
  while (input.pos < end) {
    const t = input.varint();
    if (t === tag(1, VARINT)) token = input.varint() | 0;
    else if (t === tag(2, FIXED32)) value = input.float();
    else throw new Unexpected(`nested field ${t >>> 3} (wire type ${t & 7})`);
  }
  input.end = outerEnd;
  return second === "logprob" ? { token, logprob: value } : { token, bias: value };
}

function readSampling(input: In): WireSampling {
  const length = input.length();
  const end = input.pos + length;
  const outerEnd = input.end;
  input.end = end;
  const s: WireSampling = { logit_bias: [], temperature: 0, top_p: 0, top_k: 0, top_logprobs: 0 };
  const bias: Array<{ token: number; bias: number }> = [];
  let seed: number | undefined;
  while (input.pos < end) {
    const t = input.varint();
    switch (t) {
      case tag(1, FIXED32):
        s.temperature = input.float();
        break;
      case tag(2, FIXED32):
        s.top_p = input.float();
        break;
      case tag(3, VARINT):
        s.top_k = input.varint();
        break;
      case tag(4, VARINT):
        seed = input.uint64();
        break;
      case tag(5, VARINT):
        s.top_logprobs = input.varint();
        break;
      case tag(6, BYTES):
        bias.push(readPair(input, "bias"));
        break;
      default:
        throw new Unexpected(`sampling field ${t >>> 3} (wire type ${t & 7})`);
    }
  }
  input.end = outerEnd;
  if (seed !== undefined) {
    s.seed = seed;
    // proto3 `optional` is a one-field oneof; oneofs: true names the member that is set.
    (s as WireSampling & { _seed: string })._seed = "seed";
  }
  if (bias.length > 0) s.logit_bias = bias;
  return s;
}

function fastDecode(buf: Buffer): DataFrame {
  // Key order as protobufjs's toObject with defaults writes it.
  const frame: DataFrame = {
    shape: [],
    top_logprobs: [],
    kind: 0,
    seq: 0,
    step: 0,
    position: 0,
    count: 0,
    dtype: 0,
    chunk_index: 0,
    chunk_count: 0,
    payload: Buffer.alloc(0),
    sampling: null,
    want_result: false,
    sent_at_us: 0,
    plan_id: "",
    token: 0,
    logprob: 0,
    error_code: "",
    error: "",
    origin_stage: 0,
    origin_at_us: 0,
    wave: 0,
  };
  const input = new In(buf, 0, buf.length);
  const shape: number[] = [];
  const logprobs: WireTokenLogprob[] = [];
  while (input.pos < input.end) {
    const t = input.varint();
    const field = t >>> 3;
    switch (field) {
      case F.kind:
        expectWireType(t, VARINT);
        frame.kind = input.varint() | 0;
        break;
      case F.seq:
        expectWireType(t, VARINT);
        frame.seq = input.varint();
        break;
      case F.step:
        expectWireType(t, VARINT);
        frame.step = input.varint();
        break;
      case F.position:
        expectWireType(t, VARINT);
        frame.position = input.varint();
        break;
      case F.count:
        expectWireType(t, VARINT);
        frame.count = input.varint();
        break;
      case F.dtype:
        expectWireType(t, VARINT);
        frame.dtype = input.varint() | 0;
        break;
      case F.shape:
        if ((t & 7) === BYTES) {
          const length = input.length();
          const end = input.pos + length;
          const outerEnd = input.end;
          input.end = end;
          while (input.pos < end) shape.push(input.varint());
          input.end = outerEnd;
        } else {
          expectWireType(t, VARINT);
          shape.push(input.varint());
        }
        break;
      case F.chunk_index:
        expectWireType(t, VARINT);
        frame.chunk_index = input.varint();
        break;
      case F.chunk_count:
        expectWireType(t, VARINT);
        frame.chunk_count = input.varint();
        break;
      case F.payload: {
        expectWireType(t, BYTES);
        const n = input.length();
        // A view of the received buffer, as protobufjs returns it (no copy).
        frame.payload = n === 0 ? Buffer.alloc(0) : buf.subarray(input.pos, input.pos + n);
        input.pos += n;
        break;
      }
      case F.sampling:
        expectWireType(t, BYTES);
        frame.sampling = readSampling(input);
        break;
      case F.want_result:
        expectWireType(t, VARINT);
        frame.want_result = input.varint() !== 0;
        break;
      case F.sent_at_us:
        expectWireType(t, FIXED64);
        frame.sent_at_us = input.double();
        break;
      case F.plan_id:
        expectWireType(t, BYTES);
        frame.plan_id = input.string();
        break;
      case F.token:
        expectWireType(t, VARINT);
        frame.token = input.varint() | 0;
        break;
      case F.logprob:
        expectWireType(t, FIXED32);
        frame.logprob = input.float();
        break;
      case F.top_logprobs:
        expectWireType(t, BYTES);
        logprobs.push(readPair(input, "logprob"));
        break;
      case F.error_code:
        expectWireType(t, BYTES);
        frame.error_code = input.string();
        break;
      case F.error:
        expectWireType(t, BYTES);
        frame.error = input.string();
        break;
      case F.origin_stage:
        expectWireType(t, VARINT);
        frame.origin_stage = input.varint();
        break;
      case F.origin_at_us:
        expectWireType(t, FIXED64);
        frame.origin_at_us = input.double();
        break;
      case F.wave:
        expectWireType(t, VARINT);
        frame.wave = input.varint();
        break;
      default:
        throw new Unexpected(`unknown field ${field}`);
    }
  }
  if (shape.length > 0) frame.shape = shape;
  if (logprobs.length > 0) frame.top_logprobs = logprobs;
  return frame;
}

/**
 * DataFrame from its bytes, shaped as proto-loader shapes it. Input this decoder does not expect (fields from a
 * newer peer, another wire type, damage) goes to `generic` (proto-loader's own decoder), which decides.
 */
export function decodeDataFrame(buf: Buffer, generic: (buf: Buffer) => unknown): DataFrame {
  try {
    return fastDecode(buf);
  } catch (err) {
    if (err instanceof Unexpected) return generic(buf) as DataFrame;
    throw err;
  }
}
