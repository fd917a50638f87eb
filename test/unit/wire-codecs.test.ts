// The data plane's codecs and the key check, on real protobuf bytes (the proto file, the loader options and
// grpc metadata that the processes use).
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { clusterKeyHeader, clusterKeyProblem } from "../../common/wire/auth.js";
import {
  chunkFrames,
  decodeTokens,
  encodeTokens,
  expectedPayloadBytes,
  FrameAssembler,
  fromWireSampling,
  toWireSampling,
} from "../../common/wire/frames.js";
import { LatencyWindow } from "../../common/wire/latency.js";
import { studioNodeService } from "../../common/wire/proto.js";
import { type DataFrame, type DataFrameOut, Dtype, FrameKind } from "../../common/wire/types.js";

const dataMethod = studioNodeService().Data;

/** Through the real serializer, as a frame travels between processes. */
function roundTrip(frame: DataFrameOut): DataFrame {
  return dataMethod.requestDeserialize(dataMethod.requestSerialize(frame)) as DataFrame;
}

describe("token payloads", () => {
  it("round-trips token ids including large and zero ids", () => {
    const tokens = [0, 1, 200_034, 2 ** 31 - 1, 42];
    const frame = roundTrip({
      kind: FrameKind.TOKENS,
      seq: 7,
      count: 5,
      dtype: Dtype.I32,
      shape: [5],
      payload: encodeTokens(tokens),
    });
    expect(Array.from(decodeTokens(frame.payload))).toEqual(tokens);
    expect(frame.kind).toBe(FrameKind.TOKENS);
    expect(frame.seq).toBe(7);
  });
});

describe("sampling parameters", () => {
  it("keeps an explicit seed of 0 apart from no seed", () => {
    const withZero = roundTrip({
      kind: FrameKind.TOKENS,
      seq: 1,
      sampling: toWireSampling({ temperature: 0.7, seed: 0 }),
    });
    expect(fromWireSampling(withZero.sampling)).toEqual({ temperature: expect.closeTo(0.7, 5), seed: 0 });
    const without = roundTrip({
      kind: FrameKind.TOKENS,
      seq: 1,
      sampling: toWireSampling({ temperature: 0.7 }),
    });
    expect(fromWireSampling(without.sampling).seed).toBeUndefined();
  });

  it("carries every field", () => {
    const frame = roundTrip({
      kind: FrameKind.TOKENS,
      seq: 1,
      sampling: toWireSampling({
        temperature: 0.5,
        topP: 0.9,
        topK: 40,
        seed: 123456789,
        topLogprobs: 3,
        logitBias: [[5, -2.5]],
      }),
    });
    const s = fromWireSampling(frame.sampling);
    expect(s.topK).toBe(40);
    expect(s.seed).toBe(123456789);
    expect(s.topLogprobs).toBe(3);
    expect(s.logitBias).toEqual([[5, -2.5]]);
    expect(s.topP).toBeCloseTo(0.9, 5);
  });

  it("greedy (no fields) decodes to no parameters", () => {
    expect(
      fromWireSampling(roundTrip({ kind: FrameKind.TOKENS, seq: 1, sampling: toWireSampling({}) }).sampling),
    ).toEqual({});
  });
});

describe("chunked activations", () => {
  const hidden = 64;
  const count = 300;
  const bytes = new Uint8Array(count * hidden * 4).map((_, i) => (i * 7) & 0xff);
  const header: DataFrameOut = {
    kind: FrameKind.HIDDEN,
    seq: 9,
    step: 2,
    position: 10,
    count,
    dtype: Dtype.F32,
    shape: [count, hidden],
    sampling: toWireSampling({ seed: 3 }),
  };

  it("splits into chunks within the size and reassembles the exact bytes", () => {
    const frames = chunkFrames(header, bytes, 10_000).map(roundTrip);
    expect(frames.length).toBe(Math.ceil(bytes.byteLength / 10_000));
    expect(frames.every((f) => f.payload.byteLength <= 10_000)).toBe(true);
    expect(frames.slice(1).every((f) => f.sampling === null)).toBe(true);
    const assembler = new FrameAssembler();
    const expected = expectedPayloadBytes(frames[0], hidden);
    expect(expected).toBe(bytes.byteLength);
    let done: ReturnType<FrameAssembler["push"]>;
    for (const f of frames) done = assembler.push(f, expected as number);
    expect(done && "payload" in done).toBe(true);
    if (done && "payload" in done)
      expect(Buffer.compare(Buffer.from(done.payload), Buffer.from(bytes))).toBe(0);
  });

  it("reports a payload shorter than its header", () => {
    const frame = roundTrip({ ...header, payload: bytes.subarray(0, 100) });
    const result = new FrameAssembler().push(frame, expectedPayloadBytes(frame, hidden) as number);
    expect(result && "problem" in result && result.problem).toMatch(
      /100 bytes but the header .* needs 76800/,
    );
  });

  it("reports a missing chunk and interleaved sequences", () => {
    const frames = chunkFrames(header, bytes, 10_000).map(roundTrip);
    const assembler = new FrameAssembler();
    assembler.push(frames[0], bytes.byteLength);
    const skipped = assembler.push(frames[2], bytes.byteLength);
    expect(skipped && "problem" in skipped && skipped.problem).toMatch(/chunk 2 .* where chunk 1 was due/);
    assembler.push(frames[0], bytes.byteLength);
    const other = roundTrip({ ...header, seq: 10, payload: bytes });
    const mixed = assembler.push(other, bytes.byteLength);
    expect(mixed && "problem" in mixed && mixed.problem).toMatch(/before seq 9 step 2 was complete/);
  });

  it("rejects headers whose shape disagrees with count or the stage's width", () => {
    expect(expectedPayloadBytes(roundTrip({ ...header, shape: [count + 1, hidden] }), hidden)).toMatch(
      /does not start with count/,
    );
    expect(expectedPayloadBytes(roundTrip({ ...header }), hidden * 2)).toMatch(
      /has width 64 but this stage takes 128/,
    );
    expect(expectedPayloadBytes(roundTrip({ ...header, dtype: 99 as Dtype }), hidden)).toMatch(
      /unknown dtype 99/,
    );
    expect(expectedPayloadBytes(roundTrip({ ...header, count: 0, shape: [0, hidden] }), hidden)).toMatch(
      /count must be at least 1/,
    );
  });
});

describe("cluster key check", () => {
  const key = "k".repeat(43);
  it("accepts the key and refuses a missing or wrong one", () => {
    const good = new grpc.Metadata();
    good.set(clusterKeyHeader, key);
    expect(clusterKeyProblem(good, key)).toBeUndefined();
    expect(clusterKeyProblem(new grpc.Metadata(), key)).toMatch(/missing x-cluster-key/);
    const wrong = new grpc.Metadata();
    wrong.set(clusterKeyHeader, `${key}x`);
    expect(clusterKeyProblem(wrong, key)).toMatch(/wrong x-cluster-key/);
  });
});

describe("latency window", () => {
  it("gives percentiles over the last minute only", () => {
    const w = new LatencyWindow();
    const t0 = 1_000_000;
    for (let i = 1; i <= 100; i++) w.add(i, t0);
    expect(w.percentile(0.5, t0)).toBe(50);
    expect(w.percentile(0.99, t0)).toBe(99);
    w.add(5000, t0 + 61_000);
    expect(w.percentile(0.5, t0 + 61_000)).toBe(5000);
  });

  it("leaves out the samples taken before a given time when asked (a benchmark's warm-up)", () => {
    const w = new LatencyWindow();
    const t0 = 1_000_000;
    for (let i = 1; i <= 10; i++) w.add(10_000 * i, t0);
    for (let i = 1; i <= 100; i++) w.add(i, t0 + 500);
    expect(w.percentiles([0.5, 0.99], t0 + 1000, t0 + 500)).toEqual([50, 99]);
    expect(w.countSince(t0 + 500, t0 + 1000)).toBe(100);
    expect(w.percentile(0.99, t0 + 1000)).toBe(90_000);
    expect(w.countSince(0, t0 + 1000)).toBe(110);
    expect(w.percentiles([0.5], t0 + 1000, t0 + 2000)).toEqual([0]);
  });
});
