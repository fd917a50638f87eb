// common/safetensors.ts: the writer's format, the reader's validation (errors name the file and the tensor),
// float conversions and the shard index.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  bf16ToFloat,
  f16ToFloat,
  floatToBf16,
  floatToF16,
  fromFloat32,
  readAllHeaders,
  readIndex,
  readSafetensorsHeader,
  readTensor,
  toFloat32,
  writeSafetensorsFile,
} from "../../common/safetensors.js";

const work = mkdtempSync(join(tmpdir(), "h2-safetensors-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A hand-built file: header JSON as given (padded), then `data` bytes. */
function rawFile(name: string, header: unknown, data: Buffer, declaredLength?: bigint): string {
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(declaredLength ?? BigInt(Buffer.byteLength(json)));
  const file = join(work, name);
  writeFileSync(file, Buffer.concat([length, Buffer.from(json), data]));
  return file;
}

describe("writer", () => {
  it("writes a header padded to 8 bytes, tensors sorted by name, readable back", async () => {
    const file = join(work, "written.safetensors");
    const values = Float32Array.from([1.5, -2, 3.25]);
    await writeSafetensorsFile(
      file,
      [
        { name: "z.last", dtype: "F32", shape: [3] },
        { name: "a.first", dtype: "U32", shape: [2] },
      ],
      (spec) =>
        spec.name === "a.first"
          ? Buffer.from(Uint32Array.from([7, 0xffffffff]).buffer)
          : fromFloat32(values, "F32"),
      { format: "mlx" },
    );
    const bytes = readFileSync(file);
    const headerLength = Number(bytes.readBigUInt64LE(0));
    expect((8 + headerLength) % 8).toBe(0);
    const header = readSafetensorsHeader(file);
    expect(header.metadata).toEqual({ format: "mlx" });
    expect(header.tensors.get("a.first")?.byteOffset).toBe(header.dataStart);
    expect(header.tensors.get("z.last")?.byteOffset).toBe(header.dataStart + 8);
    expect(Array.from(toFloat32(readTensor(header, "z.last")))).toEqual([1.5, -2, 3.25]);
    expect(Array.from(new Uint32Array(readTensor(header, "a.first").data.buffer.slice(0)))).toEqual([
      7, 0xffffffff,
    ]);
    expect(() => readTensor(header, "missing")).toThrow(/no tensor named "missing"/);
  });

  it("refuses a producer that returns the wrong number of bytes", async () => {
    await expect(
      writeSafetensorsFile(join(work, "short.safetensors"), [{ name: "t", dtype: "F32", shape: [4] }], () =>
        Buffer.alloc(8),
      ),
    ).rejects.toThrow(/tensor "t" produced 8 bytes, expected 16/);
  });
});

describe("reader validation", () => {
  const ok = { t: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };

  it("accepts a well-formed file", () => {
    const header = readSafetensorsHeader(rawFile("ok.safetensors", ok, Buffer.alloc(8)));
    expect(header.tensors.get("t")).toMatchObject({ dtype: "F32", shape: [2], byteLength: 8 });
  });

  it("names the file when it is too short or the header length is impossible", () => {
    const tiny = join(work, "tiny.safetensors");
    writeFileSync(tiny, Buffer.alloc(4));
    expect(() => readSafetensorsHeader(tiny)).toThrow(/tiny\.safetensors: too short/);
    const file = rawFile("long.safetensors", ok, Buffer.alloc(8), 1n << 40n);
    expect(() => readSafetensorsHeader(file)).toThrow(/long\.safetensors: header length/);
  });

  it("names the file when the header is not JSON", () => {
    const file = join(work, "garbage.safetensors");
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(8n);
    writeFileSync(file, Buffer.concat([length, Buffer.from("{not json")]));
    expect(() => readSafetensorsHeader(file)).toThrow(/garbage\.safetensors: header is not valid JSON/);
  });

  it("names the tensor with an unknown dtype, a bad shape or bad offsets", () => {
    const cases: [string, unknown, RegExp][] = [
      [
        "dtype",
        { w: { dtype: "F128", shape: [2], data_offsets: [0, 8] } },
        /tensor "w": unknown dtype "F128"/,
      ],
      ["shape", { w: { dtype: "F32", shape: [-1], data_offsets: [0, 8] } }, /tensor "w": shape must be/],
      [
        "offsets",
        { w: { dtype: "F32", shape: [2], data_offsets: [8, 0] } },
        /tensor "w": data_offsets must be/,
      ],
      [
        "past-end",
        { w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } },
        /tensor "w": data_offsets \[0, 16\] run past/,
      ],
      [
        "size",
        { w: { dtype: "BF16", shape: [2], data_offsets: [0, 8] } },
        /tensor "w": 8 bytes of data but BF16\[2\] needs 4/,
      ],
    ];
    for (const [name, header, message] of cases) {
      const file = rawFile(`${name}.safetensors`, header, Buffer.alloc(8));
      expect(() => readSafetensorsHeader(file), name).toThrow(message);
      expect(() => readSafetensorsHeader(file), name).toThrow(new RegExp(`${name}\\.safetensors`));
    }
  });

  it("refuses to read a non-float tensor as floats", () => {
    expect(() => toFloat32({ dtype: "U32", shape: [1], data: Buffer.alloc(4) }, "x.weight")).toThrow(
      /x\.weight: dtype U32 is not a float type/,
    );
  });
});

describe("float conversions", () => {
  it("bf16 rounds to nearest even and keeps exact values", () => {
    expect(bf16ToFloat(floatToBf16(1))).toBe(1);
    expect(bf16ToFloat(floatToBf16(-0.5))).toBe(-0.5);
    // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1)
    expect(bf16ToFloat(floatToBf16(1 + 2 ** -8))).toBe(1);
    expect(bf16ToFloat(floatToBf16(1 + 3 * 2 ** -8))).toBe(1 + 2 ** -6);
    expect(Number.isNaN(bf16ToFloat(floatToBf16(Number.NaN)))).toBe(true);
  });

  it("f16 covers normals, subnormals and overflow", () => {
    for (const v of [0, 1, -2.5, 65504, 2 ** -14, 2 ** -24, 0.099975586])
      expect(f16ToFloat(floatToF16(v))).toBeCloseTo(v, 6);
    expect(f16ToFloat(floatToF16(1e6))).toBe(Number.POSITIVE_INFINITY);
    expect(floatToF16(1)).toBe(0x3c00);
    expect(floatToF16(-2)).toBe(0xc000);
  });
});

describe("index", () => {
  it("reads weight_map and total_size and checks each shard holds its tensors", async () => {
    const dir = join(work, "model");
    mkdirSync(dir);
    await writeSafetensorsFile(join(dir, "a.safetensors"), [{ name: "x", dtype: "F32", shape: [1] }], () =>
      Buffer.alloc(4),
    );
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ metadata: { total_size: 4 }, weight_map: { x: "a.safetensors" } }),
    );
    expect(readIndex(dir)).toEqual({ totalSize: 4, weightMap: { x: "a.safetensors" } });
    expect(readAllHeaders(dir).get("x")?.tensors.has("x")).toBe(true);
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { x: "a.safetensors", y: "a.safetensors" } }),
    );
    expect(() => readAllHeaders(dir)).toThrow(/index says it holds tensor "y"/);
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ weight_map: { x: "../etc" } }));
    expect(() => readIndex(dir)).toThrow(/tensor "x" maps to an invalid file/);
  });

  it("builds an index for a single-file checkpoint and explains a missing one", async () => {
    const dir = join(work, "single");
    mkdirSync(dir);
    expect(() => readIndex(dir)).toThrow(/neither model\.safetensors\.index\.json nor model\.safetensors/);
    await writeSafetensorsFile(
      join(dir, "model.safetensors"),
      [{ name: "w", dtype: "BF16", shape: [3] }],
      () => Buffer.alloc(6),
    );
    expect(readIndex(dir)).toEqual({ totalSize: 6, weightMap: { w: "model.safetensors" } });
  });
});
