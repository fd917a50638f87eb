// The hand-written TensorChunk codec (common/wire/tensor-chunk.ts) against protobufjs, the proto's own
// encoder and decoder as every other call uses them: both directions must give the same message, including
// the edge cases a peer may send (defaults left out, unknown fields, large offsets), and a cut-off message
// must fail with a named error rather than a wrong chunk.
import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import { studioNodeService } from "../../common/wire/proto.js";
import { ChunkSlot, decodeTensorChunk } from "../../common/wire/tensor-chunk.js";
import type { TensorChunk } from "../../common/wire/types.js";
import { Rng } from "../helpers/seeded-rng.js";

const method = studioNodeService().FetchTensors;
const protoEncode = (chunk: TensorChunk): Buffer => method.responseSerialize(chunk as never);
const protoDecode = (bytes: Buffer): TensorChunk => method.responseDeserialize(bytes) as TensorChunk;

function slotEncode(name: string, offset: number, total: number, payload: Buffer): Buffer {
  const slot = new ChunkSlot(Buffer.from(name), offset, total, payload.length);
  payload.copy(slot.payload);
  return slot.seal(crc32(payload)).bytes;
}

function plain(chunk: TensorChunk) {
  return { ...chunk, payload: Buffer.from(chunk.payload).toString("hex") };
}

describe("TensorChunk wire codec", () => {
  it("encodes exactly what protobufjs decodes, and decodes what protobufjs encodes", () => {
    const rng = new Rng(7);
    const cases: Array<[string, number, number, number]> = [
      ["model.layers.0.mlp.experts.weight", 0, 1, 1],
      ["x", 0, 0, 0],
      ["model.embed_tokens.weight", 2 ** 40 + 3, 2 ** 41, 4096],
      ["ü-named tensor", 127, 128, 65_536],
    ];
    for (let i = 0; i < 40; i++) cases.push([`t${i}`, rng.int(2 ** 32) * 16, 2 ** 36, rng.int(70_000)]);
    for (const [name, offset, total, length] of cases) {
      const payload = Buffer.alloc(length);
      for (let i = 0; i < length; i++) payload[i] = (i * 31 + length) & 255;
      const ours = slotEncode(name, offset, total, payload);
      const expected = { name, offset, total, payload, crc32: crc32(payload) };
      expect(plain(protoDecode(ours))).toEqual(plain(expected));
      expect(plain(decodeTensorChunk(protoEncode(expected)))).toEqual(plain(expected));
    }
  });

  it("skips unknown fields and reads fields in any order", () => {
    const payload = Buffer.from("abcdef");
    const known = protoEncode({ name: "w", offset: 5, total: 11, payload, crc32: crc32(payload) });
    // An unknown varint field 9, an unknown 8-byte field 10 and an unknown length-delimited field 11, first.
    const unknown = Buffer.from([
      9 << 3,
      0x96,
      0x01,
      (10 << 3) | 1,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      (11 << 3) | 2,
      2,
      0,
      0,
    ]);
    const decoded = decodeTensorChunk(Buffer.concat([unknown, known]));
    expect(plain(decoded)).toEqual(
      plain({ name: "w", offset: 5, total: 11, payload, crc32: crc32(payload) }),
    );
  });

  it("refuses a message cut off inside a field, naming what ran past the end", () => {
    const payload = Buffer.alloc(300, 1);
    const whole = slotEncode("w", 0, 300, payload);
    // Cuts inside the name, inside the payload's length varint and inside the payload (a cut between fields
    // decodes as a shorter message, as in protobuf; the crc32 and the offsets catch that one).
    for (const cut of [2, 10, whole.length - 200]) {
      expect(() => decodeTensorChunk(whole.subarray(0, cut))).toThrow(/TensorChunk: .*(runs past|cut off)/);
    }
  });
});
