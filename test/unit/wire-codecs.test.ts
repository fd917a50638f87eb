// The data plane's codecs and the key check, on real protobuf bytes (the proto file, the loader options and
// grpc metadata that the processes use).
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  bodyDigest,
  CallVerifier,
  ClusterSecret,
  callAuthHeader,
  PeerProofError,
  signCall,
  verifyHelloReply,
} from "../../common/wire/auth.js";
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

describe("cluster key on the wire (HMAC handshake and signed calls)", () => {
  const key = "k".repeat(43);
  const secret = new ClusterSecret(key);
  const path = "/studio.cluster.v1.StudioNode/Status";

  function signed(verifier: CallVerifier, p = path, offsetMs = 0): grpc.Metadata {
    const peer = { nodeId: verifier.nodeId, clusterId: "c", epoch: verifier.epoch, clockOffsetMs: offsetMs };
    const metadata = new grpc.Metadata();
    metadata.set(callAuthHeader, signCall(secret, peer, p));
    return metadata;
  }

  it("accepts a signed call once, for its node, method and process only", () => {
    const verifier = new CallVerifier(secret, "node-a", "c");
    const call = signed(verifier);
    expect(verifier.problem(call, path)).toBeUndefined();
    expect(verifier.problem(call, path)).toMatch(/replayed/);
    expect(verifier.problem(signed(verifier), "/studio.cluster.v1.StudioNode/LoadShard")).toMatch(
      /MAC is wrong/,
    );
    // Another node, or the same node id after a restart (a new epoch), refuses it.
    expect(new CallVerifier(secret, "node-b", "c").problem(signed(verifier), path)).toMatch(/MAC is wrong/);
    expect(new CallVerifier(secret, "node-a", "c").problem(signed(verifier), path)).toMatch(/MAC is wrong/);
    // A call signed with another key is refused; no header at all is named.
    const otherKey = new ClusterSecret("o".repeat(43));
    const forged = new grpc.Metadata();
    const peer = { nodeId: "node-a", clusterId: "c", epoch: verifier.epoch, clockOffsetMs: 0 };
    forged.set(callAuthHeader, signCall(otherKey, peer, path));
    expect(verifier.problem(forged, path)).toMatch(/MAC is wrong/);
    expect(verifier.problem(new grpc.Metadata(), path)).toMatch(/missing x-cluster-auth/);
    // A MAC over one request's bytes does not pass for other bytes.
    const bodyA = bodyDigest(Buffer.from("a"));
    const withBody = new grpc.Metadata();
    const peerA = { nodeId: "node-a", clusterId: "c", epoch: verifier.epoch, clockOffsetMs: 0 };
    withBody.set(callAuthHeader, signCall(secret, peerA, path, bodyA));
    expect(verifier.problem(withBody, path, bodyDigest(Buffer.from("b")))).toMatch(/altered on the way/);
    expect(verifier.problem(withBody, path, bodyA)).toBeUndefined();
    // The key itself never appears in what travels.
    expect(signed(verifier).get(callAuthHeader)[0]).not.toContain(key);
  });

  it("refuses a call outside the replay window, and the client's clock offset brings it back in", () => {
    const verifier = new CallVerifier(secret, "node-a", "c", 30_000);
    expect(verifier.problem(signed(verifier, path, -60_000), path)).toMatch(/-60 s off this node's clock/);
    expect(verifier.problem(signed(verifier, path, 0), path)).toBeUndefined();
  });

  it("the Hello proof checks only with the key, the nonce sent and the cluster id", () => {
    const verifier = new CallVerifier(secret, "node-a", "cid");
    const nonce = Buffer.alloc(32, 7);
    const reply = {
      version: "",
      node_id: "node-a",
      name: "",
      capabilities: null,
      api_port: 0,
      grpc_port: 0,
      cluster_id: "cid",
      plan_id: "",
      ...verifier.proofFields({ nonce }),
    };
    const check =
      (s: ClusterSecret, n: Buffer, r = reply) =>
      () =>
        verifyHelloReply(s, "cid", "x:1", { nonce: n, clientId: "" }, r);
    expect(check(secret, nonce)).not.toThrow();
    expect(check(secret, Buffer.alloc(32, 8))).toThrow(/did not prove it holds the cluster key/);
    expect(check(new ClusterSecret("o".repeat(43)), nonce)).toThrow(PeerProofError);
    expect(check(secret, nonce, { ...reply, node_id: "node-0" })).toThrow(/did not prove/);
    expect(check(secret, nonce, { ...reply, cluster_id: "other" })).toThrow(/belongs to another cluster/);
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
