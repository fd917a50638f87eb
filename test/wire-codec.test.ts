// The hand-written DataFrame codec (common/wire-codec.ts) against proto-loader's own codec for the same proto and
// options: on many frames of every kind, bytes written by either side must read back, by either side, into the
// very same object (values, defaults, key order, Buffers). Odd input must get proto-loader's answer.
import * as protoLoader from "@grpc/proto-loader";
import { describe, expect, it } from "vitest";
import { decodeDataFrame, encodeDataFrame } from "../common/wire-codec.js";
import { protoLoaderOptions, protoPath, studioNodeService } from "../common/wire-proto.js";
import {
  type DataFrame,
  type DataFrameOut,
  Dtype,
  FrameKind,
  type WireSampling,
} from "../common/wire-types.js";
import { Rng } from "./seeded-rng.js";

// proto-loader's generic codec, loaded on its own (not through wire-proto, which installs the fast one).
const generic = (() => {
  const pkg = protoLoader.loadSync(protoPath(), protoLoaderOptions);
  const data = (pkg["studio.cluster.v1.StudioNode"] as protoLoader.ServiceDefinition).Data;
  return {
    encode: (frame: DataFrameOut): Buffer => data.requestSerialize(frame),
    decode: (buf: Buffer): DataFrame => data.requestDeserialize(buf) as DataFrame,
  };
})();

const fast = {
  encode: encodeDataFrame,
  decode: (buf: Buffer): DataFrame => decodeDataFrame(buf, generic.decode),
  /** The fast path alone: well-formed frames must never need the generic decoder. */
  decodeOnly: (buf: Buffer): DataFrame =>
    decodeDataFrame(buf, () => {
      throw new Error("the fast decoder handed a well-formed frame to the generic one");
    }),
};

/** Object.keys at every level, so a difference in key order (a different object shape) shows too. */
function keysOf(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return "Buffer";
  if (Array.isArray(value)) return value.map(keysOf);
  if (value && typeof value === "object")
    return Object.entries(value).map(([k, v]) => [k, keysOf(v)] as [string, unknown]);
  return typeof value;
}

function expectSame(actual: DataFrame, expected: DataFrame): void {
  // Payloads are compared as bytes (an element-wise deep comparison of megabyte buffers takes seconds).
  expect(Buffer.isBuffer(actual.payload)).toBe(true);
  expect(actual.payload.equals(expected.payload)).toBe(true);
  expect({ ...actual, payload: null }).toStrictEqual({ ...expected, payload: null });
  expect(keysOf(actual)).toEqual(keysOf(expected));
}

/** Both decoders fail on the bytes, or both read the same frame from them. */
function expectSameOutcome(bytes: Buffer): void {
  let expected: DataFrame | undefined;
  try {
    expected = generic.decode(bytes);
  } catch {
    expect(() => fast.decode(bytes)).toThrow();
    return;
  }
  expectSame(fast.decode(bytes), expected);
}

function checkBothWays(frame: DataFrameOut): void {
  const reference = generic.decode(generic.encode(frame));
  const fastBytes = fast.encode(frame);
  expectSame(fast.decodeOnly(fastBytes), reference);
  expectSame(generic.decode(fastBytes), reference);
  expectSame(fast.decodeOnly(generic.encode(frame)), reference);
}

const textSamples = ["", "p", "plan-7f3a", "ünïcødé ✓ 漢字", "x".repeat(300), "emoji 🦙 end"];

function randomFloat(rng: Rng): number {
  return rng.pick([0, -0, 1, -1.5, 0.7, 1e-30, 3.4e38, -2.2e-8, Math.PI, rng.next() * 200 - 100]);
}

function randomUint32(rng: Rng): number {
  return rng.pick([0, 1, 127, 128, 16_383, 16_384, 2 ** 21, 2 ** 28, 2 ** 32 - 1, rng.int(2 ** 32)]);
}

function randomInt32(rng: Rng): number {
  return rng.pick([0, 1, -1, 200_034, -(2 ** 31), 2 ** 31 - 1, rng.int(2 ** 32) - 2 ** 31]);
}

function randomSampling(rng: Rng): WireSampling {
  const s: WireSampling = {};
  if (rng.next() < 0.7) s.temperature = randomFloat(rng);
  if (rng.next() < 0.5) s.top_p = randomFloat(rng);
  if (rng.next() < 0.5) s.top_k = randomUint32(rng);
  if (rng.next() < 0.5) s.seed = rng.pick([0, 1, 42, 2 ** 32 + 5, 2 ** 53 - 1, rng.int(2 ** 31)]);
  if (rng.next() < 0.5) s.top_logprobs = rng.int(21);
  if (rng.next() < 0.5)
    s.logit_bias = Array.from({ length: rng.int(4) }, () => ({
      token: randomInt32(rng),
      bias: randomFloat(rng),
    }));
  return s;
}

function randomPayload(rng: Rng): Uint8Array | undefined {
  const size = rng.next() < 0.02 ? 1024 * 1024 + 3 : rng.pick([-1, 0, 1, 4, 64, 8192, 65_536]);
  if (size < 0) return undefined;
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 97) bytes[i] = rng.int(256);
  // Both a plain Uint8Array and a Buffer view into a larger buffer, as stages hand them over.
  return rng.next() < 0.5 ? bytes : Buffer.concat([Buffer.alloc(3), bytes]).subarray(3);
}

function randomFrame(rng: Rng): DataFrameOut {
  const kind = rng.pick([
    FrameKind.TOKENS,
    FrameKind.HIDDEN,
    FrameKind.RESULT,
    FrameKind.ERROR,
    FrameKind.CANCEL,
    FrameKind.UNSPECIFIED,
  ]);
  const frame: DataFrameOut = { kind, seq: randomUint32(rng) };
  const maybe = (p: number): boolean => rng.next() < p;
  if (maybe(0.8)) frame.step = randomUint32(rng);
  if (maybe(0.8)) frame.position = randomUint32(rng);
  if (maybe(0.8)) frame.count = randomUint32(rng);
  if (maybe(0.7)) frame.dtype = rng.pick([Dtype.UNSPECIFIED, Dtype.I32, Dtype.F32, Dtype.BF16]);
  if (maybe(0.7)) frame.shape = Array.from({ length: rng.int(4) }, () => randomUint32(rng));
  if (maybe(0.6)) frame.chunk_index = randomUint32(rng);
  if (maybe(0.6)) frame.chunk_count = randomUint32(rng);
  const payload = randomPayload(rng);
  if (payload) frame.payload = payload;
  if (maybe(0.5)) frame.sampling = maybe(0.2) ? null : randomSampling(rng);
  if (maybe(0.6)) frame.want_result = maybe(0.5);
  if (maybe(0.8)) frame.sent_at_us = rng.pick([0, 1_795_239_478_001_034.5, rng.next() * 1e15]);
  if (maybe(0.7)) frame.plan_id = rng.pick(textSamples);
  if (maybe(0.5)) frame.token = randomInt32(rng);
  if (maybe(0.5)) frame.logprob = randomFloat(rng);
  if (maybe(0.4))
    frame.top_logprobs = Array.from({ length: rng.int(6) }, () => ({
      token: randomInt32(rng),
      logprob: randomFloat(rng),
    }));
  if (maybe(0.3)) frame.error_code = rng.pick(textSamples);
  if (maybe(0.3)) frame.error = rng.pick(textSamples);
  if (maybe(0.4)) frame.origin_stage = randomUint32(rng);
  if (maybe(0.6)) frame.origin_at_us = rng.pick([0, -0, 1e15 + 0.25]);
  if (maybe(0.6)) frame.wave = randomUint32(rng);
  return frame;
}

describe("DataFrame codec", () => {
  it("is the codec of the Data and Results methods", () => {
    const service = studioNodeService();
    const frame: DataFrameOut = { kind: FrameKind.HIDDEN, seq: 3, payload: new Uint8Array([1, 2, 3]) };
    const bytes = encodeDataFrame(frame);
    expect(service.Data.requestSerialize(frame)).toEqual(bytes);
    expect(service.Data.responseSerialize(frame)).toEqual(bytes);
    expect(service.Results.responseSerialize(frame)).toEqual(bytes);
    expectSame(service.Data.requestDeserialize(bytes) as DataFrame, generic.decode(bytes));
    expectSame(service.Results.responseDeserialize(bytes) as DataFrame, generic.decode(bytes));
  });

  it("reads and writes what proto-loader does, on every kind of frame a stage sends", () => {
    const payload = new Uint8Array(8192).fill(7);
    const frames: DataFrameOut[] = [
      {
        kind: FrameKind.TOKENS,
        seq: 5,
        step: 0,
        position: 0,
        count: 16,
        dtype: Dtype.I32,
        shape: [16],
        payload: new Uint8Array(64),
        sampling: { temperature: 0.7, top_p: 0.9, top_k: 40, top_logprobs: 5, logit_bias: [], seed: 0 },
        want_result: true,
        plan_id: "plan-1",
        origin_at_us: 1e15,
        wave: 1,
        sent_at_us: 1e15 + 3,
      },
      {
        kind: FrameKind.HIDDEN,
        seq: 5,
        step: 3,
        position: 18,
        count: 1,
        dtype: Dtype.F32,
        shape: [1, 2048],
        want_result: true,
        plan_id: "plan-1",
        origin_at_us: 1e15,
        wave: 0,
        sampling: null,
        payload,
        chunk_index: 0,
        chunk_count: 1,
        sent_at_us: 1e15 + 9,
      },
      {
        kind: FrameKind.RESULT,
        seq: 5,
        step: 3,
        position: 18,
        count: 1,
        token: 1234,
        logprob: -0.25,
        top_logprobs: [
          { token: 1234, logprob: -0.25 },
          { token: 0, logprob: -3 },
        ],
        plan_id: "plan-1",
        origin_at_us: 1e15,
        sent_at_us: 1e15 + 40,
      },
      {
        kind: FrameKind.ERROR,
        seq: 9,
        step: 2,
        error_code: "bad_request",
        error: "seq 9 step 2: position 4, expected 3",
        origin_stage: 1,
        plan_id: "plan-1",
        sent_at_us: 1e15,
      },
      { kind: FrameKind.CANCEL, seq: 9, plan_id: "plan-1", sent_at_us: 1e15 },
      { kind: FrameKind.CANCEL, seq: 0 },
      { kind: FrameKind.HIDDEN, seq: 1, sampling: {} },
      {
        kind: FrameKind.HIDDEN,
        seq: 1,
        sampling: { seed: 2 ** 53 - 1, logit_bias: [{ token: -5, bias: -100 }] },
      },
    ];
    for (const frame of frames) checkBothWays(frame);
  });

  it("reads and writes what proto-loader does, on 3000 random frames", () => {
    const rng = new Rng(20261121);
    for (let i = 0; i < 3000; i++) checkBothWays(randomFrame(rng));
  });

  it("coerces values as protobufjs's fromObject does", () => {
    const odd = {
      kind: 2.9,
      seq: -1,
      step: 2 ** 32 + 7,
      count: "12",
      want_result: 1,
      plan_id: 42,
      token: 3.7,
      logprob: "0.5",
      shape: [-3, 2.5],
      sampling: { top_k: -2, seed: -5, temperature: "0.3" },
    } as unknown as DataFrameOut;
    checkBothWays(odd);
    checkBothWays({ kind: FrameKind.HIDDEN, seq: 1, sampling: { seed: 1.9 } });
  });

  it("hands input it does not expect to proto-loader's decoder", () => {
    const base = generic.encode({ kind: FrameKind.HIDDEN, seq: 4, plan_id: "p", payload: new Uint8Array(9) });
    const cases = [
      // An unknown field (number 40, a varint) from a newer peer.
      Buffer.concat([base, Buffer.from([(40 << 3) | 0, 0x96, 0x01])]),
      // Unpacked repeated values, as older writers send them.
      Buffer.concat([base, Buffer.from([(7 << 3) | 0, 5, (7 << 3) | 0, 6])]),
      // A known field with another wire type (protobufjs reads it its own way, or fails).
      Buffer.concat([base, Buffer.from([(2 << 3) | 5, 1, 0, 0, 0])]),
      Buffer.concat([base, Buffer.from([(12 << 3) | 0, 7])]),
    ];
    for (const bytes of cases) expectSameOutcome(bytes);
  });

  it("fails on damaged bytes where proto-loader fails, and reads what it reads", () => {
    const bytes = generic.encode({
      kind: FrameKind.HIDDEN,
      seq: 4,
      plan_id: "plan",
      payload: new Uint8Array(100),
      sampling: { seed: 3, logit_bias: [{ token: 1, bias: 2 }] },
    });
    for (let cut = 1; cut < bytes.length; cut += 3) expectSameOutcome(bytes.subarray(0, cut));
  });

  it("refuses a frame that is not an object, naming it", () => {
    expect(() => encodeDataFrame(null as unknown as DataFrameOut)).toThrow(/DataFrame: object expected/);
    expect(() => encodeDataFrame({ kind: 1, seq: 1, shape: 3 } as unknown as DataFrameOut)).toThrow(
      /DataFrame.shape: array expected/,
    );
  });
});
