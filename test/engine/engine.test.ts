// The shard engine (native addon, cpu backend) against the plain-TS reference forward pass on generated tiny
// checkpoints: logits and greedy tokens for 4-bit gs32/gs64, 8-bit and bf16; then the determinism promises
// (layer split, prefill chunking, batch company, fork) bit for bit; then bad checkpoints and bad calls fail
// with errors naming the file and tensor (or the option / sequence) at fault.
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeModel } from "../../cli/make-model/index.js";
import type { Engine, ForwardItem, ForwardOutput } from "../../common/engine-api.js";
import { availableBackends, cpuInfo, openEngine, type StudioEngine } from "../../native/index.js";
import { ReferenceModel, roundToF16 } from "../helpers/reference-minimax-m2.js";

const root = mkdtempSync(join(tmpdir(), "engine-test-"));
const LAYERS = 6; // tiny preset
const PROMPT = [3, 17, 200, 45, 999, 12, 7, 1023, 88, 5, 640];

interface Variant {
  name: string;
  bits: number;
  groupSize: number;
  dtype?: "bf16" | "f16" | "f32";
}
const VARIANTS: Variant[] = [
  { name: "4bit-gs32", bits: 4, groupSize: 32 },
  { name: "4bit-gs64", bits: 4, groupSize: 64 },
  { name: "8bit", bits: 8, groupSize: 64 },
  { name: "bf16", bits: 0, groupSize: 64 },
  // The other MLX widths (bit streams crossing byte boundaries), the widest group, and f16 scales/norms.
  { name: "4bit-gs128", bits: 4, groupSize: 128 },
  { name: "8bit-gs32", bits: 8, groupSize: 32 },
  { name: "3bit-gs32", bits: 3, groupSize: 32 },
  { name: "6bit-gs128", bits: 6, groupSize: 128 },
  { name: "2bit-gs64", bits: 2, groupSize: 64 },
  { name: "5bit-gs64", bits: 5, groupSize: 64 },
  { name: "4bit-gs64-f16", bits: 4, groupSize: 64, dtype: "f16" },
  { name: "f32", bits: 0, groupSize: 64, dtype: "f32" },
];
const dirs = new Map<string, string>();

beforeAll(async () => {
  for (const v of VARIANTS) {
    const dir = join(root, v.name);
    await makeModel({ dir, preset: "tiny", bits: v.bits, groupSize: v.groupSize, dtype: v.dtype, seed: 7 });
    dirs.set(v.name, dir);
  }
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

function full(modelDir: string, threads = 2): Promise<StudioEngine> {
  return openEngine({
    backend: "cpu",
    modelDir,
    layerStart: 0,
    layerEnd: LAYERS,
    embed: true,
    head: true,
    threads,
  });
}

function argmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

function relativeError(got: Float32Array, want: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return diff / scale;
}

function bytesOf(a: Float32Array | Uint8Array | undefined): Buffer {
  if (!a) throw new Error("missing output");
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function tokens(ids: number[]): Int32Array {
  return Int32Array.from(ids);
}

async function one(engine: Engine, item: ForwardItem): Promise<ForwardOutput> {
  const [out] = await engine.forward([item]);
  return out;
}

/** The logits' bytes of `seq` fed prompt[from..] at position `from` (its cache holds the positions before). */
async function continued(engine: Engine, seq: number, prompt: number[], from: number): Promise<Buffer> {
  const out = await one(engine, {
    seq,
    position: from,
    tokens: tokens(prompt.slice(from)),
    returnLogits: true,
  });
  return bytesOf(out.logits);
}

/**
 * Prefills PROMPT as one sequence in one call and as another in chunks of 4, 1 and 6 tokens (tiled, single-token
 * and tiled kernels), which must give the same bits; returns the first's output.
 */
async function prefillWholeAndChunked(
  engine: Engine,
  label: string,
  [whole, pieces] = [1, 2],
): Promise<ForwardOutput> {
  const out = await one(engine, { seq: whole, position: 0, tokens: tokens(PROMPT), returnLogits: true });
  await one(engine, { seq: pieces, position: 0, tokens: tokens(PROMPT.slice(0, 4)) });
  await one(engine, { seq: pieces, position: 4, tokens: tokens(PROMPT.slice(4, 5)) });
  const chunked = await one(engine, {
    seq: pieces,
    position: 5,
    tokens: tokens(PROMPT.slice(5)),
    returnLogits: true,
  });
  expect(bytesOf(chunked.logits).equals(bytesOf(out.logits)), `${label} chunked prefill`).toBe(true);
  return out;
}

/**
 * 16 greedy decode steps of sequence 1 after PROMPT (prefilled into the engine, giving `out`, and not yet into the
 * reference). The reference follows the engine's tokens, so one differing pick does not fork the runs; `check`
 * sees the engine's output and the reference's logits at every step, the prefill's included (step 0).
 */
async function decodeBeside(
  engine: Engine,
  reference: ReferenceModel,
  out: ForwardOutput,
  check: (step: number, out: ForwardOutput, refLogits: Float32Array) => void,
): Promise<void> {
  let refLogits = reference.forward(PROMPT, 0).at(-1)!;
  for (let step = 0; ; step++) {
    check(step, out, refLogits);
    if (step === 16) return;
    const next = out.token!;
    refLogits = reference.forward([next], PROMPT.length + step)[0];
    out = await one(engine, {
      seq: 1,
      position: PROMPT.length + step,
      tokens: tokens([next]),
      returnLogits: true,
    });
  }
}

/** Greedy prefill + decode steps on one engine; returns the logits of every step. */
async function greedyRun(
  engine: Engine,
  seq: number,
  prompt: number[],
  steps: number,
): Promise<Float32Array[]> {
  const logits: Float32Array[] = [];
  let out = await one(engine, { seq, position: 0, tokens: tokens(prompt), returnLogits: true });
  logits.push(out.logits!);
  for (let s = 0; s < steps; s++) {
    out = await one(engine, {
      seq,
      position: prompt.length + s,
      tokens: tokens([out.token!]),
      returnLogits: true,
    });
    logits.push(out.logits!);
  }
  return logits;
}

describe("engine matches the reference forward pass", () => {
  for (const v of VARIANTS) {
    it(`${v.name}: prefill + 16 greedy decode steps`, async () => {
      const dir = dirs.get(v.name)!;
      const reference = await ReferenceModel.load(dir);
      const engine = await full(dir);
      try {
        const out = await prefillWholeAndChunked(engine, v.name);
        await decodeBeside(engine, reference, out, (step, got, refLogits) => {
          expect(relativeError(got.logits!, refLogits), `${v.name} step ${step}`).toBeLessThanOrEqual(1e-3);
          expect(got.token, `${v.name} greedy token at step ${step}`).toBe(argmax(refLogits));
        });
      } finally {
        await engine.close();
      }
    });
  }
});

describe('an f16 KV cache (kvDtype: "f16")', () => {
  // The cache rounds each key and value to f16 as it stores them; the reference rounds its own cache the same
  // way (roundToF16), so the engine is held to the default mode's bound against it.

  /** The whole model twice on the cpu backend: with an f16 cache and with the default f32 one. */
  function f16AndF32(dir: string): Promise<[Engine, Engine]> {
    const options = {
      backend: "cpu" as const,
      modelDir: dir,
      layerStart: 0,
      layerEnd: LAYERS,
      embed: true,
      head: true,
      threads: 2,
    };
    return Promise.all([openEngine({ ...options, kvDtype: "f16" }), openEngine(options)]);
  }

  for (const name of ["4bit-gs64", "8bit"]) {
    it(`${name}: prefill + 16 greedy decode steps against the reference with an f16 cache`, async () => {
      const dir = dirs.get(name)!;
      const reference = await ReferenceModel.load(dir);
      reference.kvF16 = true;
      const [engine, wide] = await f16AndF32(dir);
      try {
        expect([engine.stats().kvDtype, wide.stats().kvDtype]).toEqual(["f16", "f32"]);
        // Half the bytes per cached position, in RAM and in exported blocks.
        expect(engine.stats().kvBytesPerToken * 2).toBe(wide.stats().kvBytesPerToken);
        expect(engine.stats().kvBytesPerPositionPerLayer * 2).toBe(wide.stats().kvBytesPerPositionPerLayer);
        const out = await prefillWholeAndChunked(engine, name);
        const f32 = await one(wide, { seq: 1, position: 0, tokens: tokens(PROMPT), returnLogits: true });
        // The prompt's own keys and values are read back rounded: the cache really holds f16.
        expect(
          bytesOf(f32.logits).equals(bytesOf(out.logits)),
          `${name}: f16 cache gives the f32 cache's bits`,
        ).toBe(false);
        const errors: number[] = [];
        await decodeBeside(engine, reference, out, (step, got, refLogits) => {
          errors.push(relativeError(got.logits!, refLogits));
          expect(got.token, `${name} greedy token at step ${step}`).toBe(argmax(refLogits));
        });
        console.log(
          `engine.test: ${name} with an f16 cache: against the f16-cache reference worst ${Math.max(...errors).toFixed(5)}`,
        );
        expect(Math.max(...errors), `${name}: f16 cache against the f16-cache reference`).toBeLessThanOrEqual(
          1e-3,
        );
      } finally {
        await Promise.all([engine.close(), wide.close()]);
      }
    });
  }

  it("stores the f32 cache's keys and values rounded to nearest even; its blocks export, import and continue bit for bit", async () => {
    const dir = dirs.get("4bit-gs64")!;
    const [engine, wide] = await f16AndF32(dir);
    try {
      const long = Array.from({ length: 90 }, (_, i) => (i * 31 + 9) % 1500);
      await one(engine, { seq: 1, position: 0, tokens: tokens(long) });
      await engine.stashBlocks(1, [{ id: "a", start: 0, length: 70 }]);
      const exported = await engine.exportBlock("a");
      expect(exported[0].byteLength).toBe(70 * engine.stats().kvBytesPerPositionPerLayer);
      // Layer 0's keys and values come from the embeddings alone, so both caches see the same floats: the f16
      // cache holds exactly their rounding (later layers read rounded attention, so they differ further).
      await one(wide, { seq: 1, position: 0, tokens: tokens(long) });
      await wide.stashBlocks(1, [{ id: "a", start: 0, length: 70 }]);
      const [layer0] = await wide.exportBlock("a");
      const floats = new Float32Array(layer0.buffer, layer0.byteOffset, layer0.byteLength / 4);
      const halves = new Uint16Array(exported[0].buffer, exported[0].byteOffset, exported[0].byteLength / 2);
      expect(halves.length).toBe(floats.length);
      let mismatches = 0;
      for (let i = 0; i < floats.length; i++) if (f16Value(halves[i]) !== roundToF16(floats[i])) mismatches++;
      expect(mismatches, "layer 0 elements not the f32 cache's rounding").toBe(0);
      await engine.importBlock("a2", 70, exported);
      await engine.assemble(2, [{ id: "a2", take: 70 }]);
      const fresh = await continued(engine, 3, long, 0);
      expect((await continued(engine, 2, long, 70)).equals(fresh)).toBe(true);
    } finally {
      await Promise.all([engine.close(), wide.close()]);
    }
  });
});

/** The number an f16 bit pattern stands for. */
function f16Value(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

describe('the int8 precision mode (matmulInputs: "int8")', () => {
  // 4-bit matrices take int8 inputs per group; the reference rounds its own inputs the same way. The two agree to
  // float rounding until an input lands within a float ulp of a level boundary on one side and not the other:
  // it then rounds one level (1/127 of its group's largest input) apart, and that position's keys and values
  // keep the difference for the rest of the run. So each step is held to the mode's own error budget (its
  // distance from exact inputs, ~1e-2 here), and the kernels are held to the exact rounding in kernels_check.
  const int8Path = cpuInfo().int8;
  if (!int8Path)
    console.warn(
      "engine.test: this build has no int8 path (neither x86 with AVX2 nor aarch64 with dotprod): int8 runs the default path",
    );
  for (const name of ["4bit-gs32", "4bit-gs64", "4bit-gs128", "4bit-gs64-f16", "8bit"]) {
    it(`${name}: prefill + 16 greedy decode steps against the reference with int8 inputs`, async () => {
      const dir = dirs.get(name)!;
      const reference = await ReferenceModel.load(dir);
      const exact = await ReferenceModel.load(dir);
      reference.int8Inputs = int8Path;
      const engine = await openEngine({
        backend: "cpu",
        modelDir: dir,
        layerStart: 0,
        layerEnd: LAYERS,
        embed: true,
        head: true,
        threads: 2,
        matmulInputs: "int8",
      });
      try {
        expect(engine.stats().matmulInputs).toBe(int8Path ? "int8" : "default");
        let refLogits = reference.forward(PROMPT, 0).at(-1)!;
        let exactLogits = exact.forward(PROMPT, 0).at(-1)!;
        let out = await one(engine, { seq: 1, position: 0, tokens: tokens(PROMPT), returnLogits: true });
        await one(engine, { seq: 2, position: 0, tokens: tokens(PROMPT.slice(0, 5)) });
        const chunked = await one(engine, {
          seq: 2,
          position: 5,
          tokens: tokens(PROMPT.slice(5)),
          returnLogits: true,
        });
        expect(bytesOf(chunked.logits).equals(bytesOf(out.logits)), `${name} chunked prefill`).toBe(true);
        const errors: number[] = [];
        const fromExact: number[] = [];
        let sameTokens = 0;
        for (let step = 0; step <= 16; step++) {
          errors.push(relativeError(out.logits!, refLogits));
          fromExact.push(relativeError(out.logits!, exactLogits));
          if (out.token === argmax(refLogits)) sameTokens++;
          if (step === 16) break;
          // Both follow the engine's tokens, so one differing pick does not fork the runs.
          const next = out.token!;
          refLogits = reference.forward([next], PROMPT.length + step)[0];
          exactLogits = exact.forward([next], PROMPT.length + step)[0];
          out = await one(engine, {
            seq: 1,
            position: PROMPT.length + step,
            tokens: tokens([next]),
            returnLogits: true,
          });
        }
        const worst = Math.max(...errors);
        console.log(
          `engine.test: ${name} with int8 inputs: against the int8 reference worst ${worst.toFixed(4)}, ` +
            `${errors.filter((e) => e <= 1e-4).length}/17 steps within 1e-4, ${sameTokens}/17 greedy tokens equal; ` +
            `against exact inputs worst ${Math.max(...fromExact).toFixed(4)}`,
        );
        expect(worst, `${name}: int8 engine against the int8 reference`).toBeLessThanOrEqual(3e-2);
        expect(sameTokens, `${name}: greedy tokens equal to the int8 reference's`).toBeGreaterThanOrEqual(15);
        // 4-bit weights really take int8 inputs (8-bit ones keep the default path: within 1e-3 of exact).
        if (name === "8bit" || !int8Path) expect(Math.max(...fromExact)).toBeLessThanOrEqual(1e-3);
        else expect(Math.max(...fromExact)).toBeGreaterThan(1e-3);
      } finally {
        await engine.close();
      }
    });
  }
});

describe("determinism", () => {
  let dir = "";
  let engine: StudioEngine;
  beforeAll(async () => {
    dir = dirs.get("4bit-gs64")!;
    engine = await full(dir);
  });
  afterAll(async () => {
    await engine.close();
  });

  it("a layer split [0,k) + [k,n) equals the single engine bit for bit", async () => {
    const single = await greedyRun(engine, 10, PROMPT, 6);
    const first = await openEngine({
      backend: "cpu",
      modelDir: dir,
      layerStart: 0,
      layerEnd: 2,
      embed: true,
      head: false,
      threads: 1,
    });
    const second = await openEngine({
      backend: "cpu",
      modelDir: dir,
      layerStart: 2,
      layerEnd: LAYERS,
      embed: false,
      head: true,
      threads: 2,
    });
    try {
      let ids = PROMPT;
      let position = 0;
      for (let step = 0; step < single.length; step++) {
        const mid = await one(first, { seq: 4, position, tokens: tokens(ids) });
        expect(mid.hidden!.byteLength).toBe(ids.length * 128 * 4);
        const out = await one(second, { seq: 4, position, hidden: mid.hidden, returnLogits: true });
        expect(bytesOf(out.logits).equals(bytesOf(single[step])), `step ${step}`).toBe(true);
        position += ids.length;
        ids = [out.token!];
      }
    } finally {
      await first.close();
      await second.close();
    }
  });

  it("a prefill in chunks equals the prefill in one piece bit for bit", async () => {
    await prefillWholeAndChunked(engine, "shared engine", [20, 21]);
  });

  it("a long prompt (several attention row and position blocks) equals its prefill in uneven chunks bit for bit", async () => {
    // 75 tokens: the cpu attention takes query rows in blocks of 16 and cached positions in blocks of 32.
    const long = Array.from({ length: 75 }, (_, i) => 3 + ((i * 37) % 1000));
    const whole = await one(engine, { seq: 22, position: 0, tokens: tokens(long), returnLogits: true });
    let last: ForwardOutput | undefined;
    for (const [start, end] of [
      [0, 7],
      [7, 40],
      [40, 41],
      [41, 75],
    ])
      last = await one(engine, {
        seq: 23,
        position: start,
        tokens: tokens(long.slice(start, end)),
        returnLogits: true,
      });
    expect(bytesOf(last?.logits).equals(bytesOf(whole.logits))).toBe(true);
  });

  it("a sequence's outputs do not change when it shares a batch with others", async () => {
    const alone = await greedyRun(engine, 30, PROMPT, 3);
    const otherA = [9, 8, 7];
    const otherB = Array.from({ length: 23 }, (_, i) => (i * 53 + 11) % 1500);
    // Step 0: the sequence's prefill next to two other prefills of different lengths.
    const first = await engine.forward([
      { seq: 32, position: 0, tokens: tokens(otherA), returnLogits: true },
      { seq: 31, position: 0, tokens: tokens(PROMPT), returnLogits: true },
      { seq: 33, position: 0, tokens: tokens(otherB), returnLogits: true },
    ]);
    expect(bytesOf(first[1].logits).equals(bytesOf(alone[0]))).toBe(true);
    let token = first[1].token!;
    let tokA = first[0].token!;
    let tokB = first[2].token!;
    for (let s = 0; s < 3; s++) {
      // Decode steps next to a decode (otherA) and a prefill chunk (otherB continues with more prompt).
      const extra = [tokB, 1, 2, 3].map((t) => t % 1500);
      const launched = engine.stats().attentionLaunches;
      const outs = await engine.forward([
        { seq: 33, position: otherB.length + s * 4, tokens: tokens(extra), returnLogits: true },
        { seq: 31, position: PROMPT.length + s, tokens: tokens([token]), returnLogits: true },
        { seq: 32, position: otherA.length + s, tokens: tokens([tokA]), returnLogits: true },
      ]);
      expect(bytesOf(outs[1].logits).equals(bytesOf(alone[s + 1])), `decode step ${s}`).toBe(true);
      // The cpu backend's attention is one threaded pass per layer over every sequence of the batch.
      expect(engine.stats().attentionLaunches - launched).toBe(LAYERS);
      token = outs[1].token!;
      tokA = outs[2].token!;
      tokB = outs[0].token!;
    }
    await Promise.all([30, 31, 32, 33].map((s) => engine.release(s)));
  });

  it("scratch memory reused across calls leaves nothing behind: a fresh engine gives the same bits", async () => {
    // The cpu backend keeps its buffers between calls, uninitialised (native/README.md, "Scratch memory"): a
    // large prefill and a batch leave them full of other values before the small calls compared here.
    const long = Array.from({ length: 90 }, (_, i) => 5 + ((i * 41) % 1000));
    await one(engine, { seq: 60, position: 0, tokens: tokens(long) });
    await engine.forward([
      { seq: 61, position: 0, tokens: tokens(long.slice(0, 33)) },
      { seq: 60, position: long.length, tokens: tokens([7]) },
    ]);
    const reused = await greedyRun(engine, 62, PROMPT, 3);
    const fresh = await full(dir);
    try {
      const first = await greedyRun(fresh, 62, PROMPT, 3);
      for (let i = 0; i < first.length; i++)
        expect(bytesOf(reused[i]).equals(bytesOf(first[i])), `step ${i}`).toBe(true);
    } finally {
      await fresh.close();
    }
    await Promise.all([60, 61, 62].map((s) => engine.release(s)));
  });

  it("results do not depend on the thread count", async () => {
    const one_thread = await full(dir, 1);
    try {
      const a = await greedyRun(one_thread, 1, PROMPT, 2);
      const b = await greedyRun(engine, 40, PROMPT, 2);
      for (let i = 0; i < a.length; i++) expect(bytesOf(a[i]).equals(bytesOf(b[i]))).toBe(true);
    } finally {
      await one_thread.close();
    }
  });

  it("fork() then continue equals continuing the original", async () => {
    await one(engine, { seq: 50, position: 0, tokens: tokens(PROMPT) });
    await engine.fork(50, 51, 6);
    // The fork holds positions 0..5 only: it continues from there with the original's tokens.
    const viaFork = await continued(engine, 51, PROMPT, 6);
    const original = await one(engine, {
      seq: 50,
      position: PROMPT.length,
      tokens: tokens([4]),
      returnLogits: true,
    });
    expect(viaFork.equals(await continued(engine, 52, PROMPT, 0))).toBe(true);
    // Forking the full length then continuing equals the original's own continuation.
    await engine.fork(52, 53, PROMPT.length);
    const a = await one(engine, {
      seq: 53,
      position: PROMPT.length,
      tokens: tokens([4]),
      returnLogits: true,
    });
    expect(bytesOf(a.logits).equals(bytesOf(original.logits))).toBe(true);
    await Promise.all([50, 51, 52, 53].map((s) => engine.release(s)));
  });

  it("a sequence assembled from cache blocks, stashed or exported and imported, continues bit for bit", async () => {
    const long = Array.from({ length: 150 }, (_, i) => (i * 29 + 5) % 1500);
    await one(engine, { seq: 70, position: 0, tokens: tokens(long) });
    // Blocks that do not line up with the cache's 64-position storage blocks.
    await engine.stashBlocks(70, [
      { id: "a", start: 0, length: 100 },
      { id: "b", start: 100, length: 50 },
    ]);
    expect(engine.stats().blocks).toBe(2);
    const fresh = await continued(engine, 72, long, 0);
    await engine.assemble(71, [
      { id: "a", take: 100 },
      { id: "b", take: 49 },
    ]);
    expect((await continued(engine, 71, long, 149)).equals(fresh)).toBe(true);
    // What the disk tier stores: one array per layer, read back into new blocks.
    const exported = await Promise.all(["a", "b"].map((id) => engine.exportBlock(id)));
    expect(exported[1]).toHaveLength(LAYERS);
    expect(exported[1][0].byteLength).toBe(50 * engine.stats().kvBytesPerPositionPerLayer);
    await engine.importBlock("a2", 100, exported[0]);
    await engine.importBlock("b2", 50, exported[1]);
    const again = await engine.exportBlock("b2");
    expect(again.every((layer, i) => Buffer.from(layer).equals(Buffer.from(exported[1][i])))).toBe(true);
    await engine.assemble(73, [
      { id: "a2", take: 100 },
      { id: "b2", take: 49 },
    ]);
    expect((await continued(engine, 73, long, 149)).equals(fresh)).toBe(true);
    // A shorter take: the sequence holds only that prefix and recomputes the rest to the same logits.
    await engine.assemble(74, [{ id: "a", take: 60 }]);
    expect((await continued(engine, 74, long, 60)).equals(fresh)).toBe(true);
    await engine.dropBlocks(["a", "b", "a2", "b2", "unknown"]);
    expect([engine.stats().blocks, engine.stats().blockBytes]).toEqual([0, 0]);
    await Promise.all([70, 71, 72, 73, 74].map((s) => engine.release(s)));
  });

  it("seeded sampling is a pure function of (seed, position, logits)", async () => {
    const sampling = { temperature: 1.5, topP: 0.95, topK: 50, seed: 1234, topLogprobs: 5 };
    const a = await one(engine, {
      seq: 60,
      position: 0,
      tokens: tokens(PROMPT),
      sampling,
      returnLogits: true,
    });
    const b = await engine.forward([
      { seq: 61, position: 0, tokens: tokens([1, 2, 3]), sampling: { temperature: 1, seed: 9 } },
      { seq: 62, position: 0, tokens: tokens(PROMPT), sampling },
    ]);
    expect(b[1].token).toBe(a.token);
    expect(b[1].logprob).toBe(a.logprob);
    // topLogprobs: best first, and consistent with the returned logits' log-softmax.
    const top = a.topLogprobs!;
    expect(top.length).toBe(5);
    for (let i = 1; i < top.length; i++) expect(top[i].logprob).toBeLessThanOrEqual(top[i - 1].logprob);
    expect(top[0].token).toBe(argmax(a.logits!));
    const logits = a.logits!;
    const max = Math.max(...logits);
    const logZ = max + Math.log(logits.reduce((s, l) => s + Math.exp(l - max), 0));
    expect(a.logprob!).toBeCloseTo(logits[a.token!] - logZ, 4);
    // Different seeds over many positions do not all pick the same token (the draw really is random).
    const picks = new Set<number>();
    for (let seed = 0; seed < 12; seed++) {
      const r = await one(engine, {
        seq: 100 + seed,
        position: 0,
        tokens: tokens(PROMPT),
        sampling: { temperature: 3, seed },
      });
      picks.add(r.token!);
    }
    expect(picks.size).toBeGreaterThan(1);
    await Promise.all(
      [60, 61, 62, ...Array.from({ length: 12 }, (_, i) => 100 + i)].map((s) => engine.release(s)),
    );
  });

  it("a constraint's mask (allowTokens / banTokens) decides which ids can be drawn, after logitBias", async () => {
    const greedy = await one(engine, { seq: 130, position: 0, tokens: tokens(PROMPT), sampling: {} });
    const best = greedy.token!;
    // The best id banned, even with a huge bias: another is picked, greedy or at any seed.
    for (const sampling of [{}, { temperature: 2, seed: 3 }, { temperature: 1, topP: 0.5, seed: 4 }]) {
      const r = await one(engine, {
        seq: 131,
        position: 0,
        tokens: tokens(PROMPT),
        sampling: { ...sampling, logitBias: [[best, 100]], banTokens: Int32Array.of(best) },
      });
      expect(r.token).not.toBe(best);
      await engine.release(131);
    }
    // Only the allowed ids, at every seed; the same draw on a fresh run (a pure function of the mask too).
    const allow = Int32Array.of(7, 11, 300);
    for (let seed = 0; seed < 8; seed++) {
      const sampling = { temperature: 3, seed, allowTokens: allow, topLogprobs: 2 };
      const a = await one(engine, { seq: 140 + seed, position: 0, tokens: tokens(PROMPT), sampling });
      expect([...allow]).toContain(a.token);
      for (const t of a.topLogprobs ?? []) expect([...allow]).toContain(t.token);
      const b = await one(engine, { seq: 160 + seed, position: 0, tokens: tokens(PROMPT), sampling });
      expect(b.token).toBe(a.token);
    }
    await Promise.all(
      [
        130,
        ...Array.from({ length: 8 }, (_, i) => 140 + i),
        ...Array.from({ length: 8 }, (_, i) => 160 + i),
      ].map((s) => engine.release(s)),
    );
  });

  it("reports load progress on the JS thread, ending at the bytes it maps", async () => {
    const reports: Array<[number, number]> = [];
    const shard = await openEngine({
      backend: "cpu",
      modelDir: dir,
      layerStart: 1,
      layerEnd: 3,
      embed: false,
      head: false,
      threads: 1,
      onProgress: (done, total) => reports.push([done, total]),
    });
    try {
      expect(reports.length).toBeGreaterThan(0);
      const [done, total] = reports.at(-1)!;
      expect(done).toBe(total);
      expect(total).toBe(shard.stats().weightBytes);
      // Layers 1..2 only: a fraction of the whole model.
      expect(total).toBeLessThan(engine.stats().weightBytes / 2);
      for (let i = 1; i < reports.length; i++)
        expect(reports[i][0]).toBeGreaterThanOrEqual(reports[i - 1][0]);
    } finally {
      await shard.close();
    }
  });

  it("keeps the event loop free while a forward runs and tracks KV bytes per sequence", async () => {
    const before = engine.stats();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const long = Array.from({ length: 600 }, (_, i) => (i * 7) % 1500);
    const pending = engine.forward([{ seq: 70, position: 0, tokens: tokens(long) }]);
    await pending;
    clearInterval(timer);
    expect(ticks).toBeGreaterThan(0);
    const after = engine.stats();
    expect(after.sequences).toBe(before.sequences + 1);
    expect(after.kvBytes - before.kvBytes).toBeGreaterThanOrEqual(600 * after.kvBytesPerToken);
    expect(after.kvBytesPerToken).toBe(LAYERS * 2 * 2 * 64 * 4);
    await engine.release(70);
    expect(engine.stats().kvBytes).toBe(before.kvBytes);
  });
});

describe("bad input is refused with a clear error", () => {
  let dir = "";
  let engine: Engine;
  beforeAll(async () => {
    dir = dirs.get("4bit-gs64")!;
    engine = await full(dir);
  });
  afterAll(async () => {
    await engine.close();
  });

  it("names the sequence when a position does not match its length", async () => {
    await one(engine, { seq: 5, position: 0, tokens: tokens([1, 2, 3]) });
    await expect(one(engine, { seq: 5, position: 7, tokens: tokens([4]) })).rejects.toThrow(
      /seq 5.*position 7.*3 positions/,
    );
    await expect(one(engine, { seq: 6, position: 0, tokens: tokens([1_000_000]) })).rejects.toThrow(
      /seq 6.*token 1000000/,
    );
    await expect(one(engine, { seq: 6, position: 0, hidden: new Uint8Array(512) })).rejects.toThrow(
      /takes tokens/,
    );
    await expect(engine.fork(99, 100, 1)).rejects.toThrow(/unknown sequence 99/);
    await expect(engine.fork(5, 101, 4)).rejects.toThrow(/prefixLength 4 exceeds/);
    await expect(engine.fork(5, -1, 1)).rejects.toThrow(/newSeq must be a uint32/);
    await expect(engine.release(1.5)).rejects.toThrow(/seq must be a uint32/);
    // Cache blocks: the block, range or array at fault is named, and nothing is changed.
    await expect(engine.stashBlocks(99, [{ id: "x", start: 0, length: 1 }])).rejects.toThrow(
      /unknown sequence 99/,
    );
    await expect(engine.stashBlocks(5, [{ id: "x", start: 1, length: 3 }])).rejects.toThrow(
      /cache block x covers positions \[1, 4\) but sequence 5 holds 3/,
    );
    await expect(engine.stashBlocks(5, [{ id: "", start: 0, length: 1 }])).rejects.toThrow(
      /id must hold 1 to 256/,
    );
    await engine.stashBlocks(5, [{ id: "ok", start: 0, length: 3 }]);
    await expect(engine.assemble(200, [{ id: "nope", take: 1 }])).rejects.toThrow(
      /cache block nope is not held/,
    );
    await expect(engine.assemble(200, [{ id: "ok", take: 4 }])).rejects.toThrow(
      /take 4 of cache block ok.*3 positions/,
    );
    await expect(engine.assemble(5, [{ id: "ok", take: 1 }])).rejects.toThrow(/sequence 5 already exists/);
    await expect(engine.importBlock("y", 2, [new Uint8Array(4)])).rejects.toThrow(
      /1 layer arrays for a shard of 6/,
    );
    const perPosition = engine.stats().kvBytesPerPositionPerLayer;
    const layers = Array.from({ length: LAYERS }, () => new Uint8Array(2 * perPosition));
    layers[3] = new Uint8Array(perPosition);
    await expect(engine.importBlock("y", 2, layers)).rejects.toThrow(/layer 3 of cache block y holds/);
    await expect(engine.exportBlock("y")).rejects.toThrow(/cache block y is not held/);
    await engine.dropBlocks(["ok"]);
    // The failed calls left the sequence usable.
    const ok = await one(engine, { seq: 5, position: 3, tokens: tokens([4]) });
    expect(typeof ok.token).toBe("number");
  });

  it("refuses a bad layer range, an unknown precision mode or KV dtype and a backend this build lacks", async () => {
    await expect(
      openEngine({ modelDir: dir, layerStart: 4, layerEnd: 9, embed: false, head: true }),
    ).rejects.toThrow(/\[4, 9\) exceeds the model's 6 layers/);
    await expect(
      openEngine({ modelDir: dir, layerStart: 3, layerEnd: 2, embed: false, head: true }),
    ).rejects.toThrow(/not a valid range/);
    const int4 = "int4" as unknown as "int8";
    await expect(
      openEngine({ modelDir: dir, layerStart: 0, layerEnd: 1, embed: true, head: false, matmulInputs: int4 }),
    ).rejects.toThrow(/matmulInputs must be "default" or "int8" \(got "int4"\)/);
    const f8 = "f8" as unknown as "f16";
    await expect(
      openEngine({ modelDir: dir, layerStart: 0, layerEnd: 1, embed: true, head: false, kvDtype: f8 }),
    ).rejects.toThrow(/kvDtype must be "f32" or "f16" \(got "f8"\)/);
    if (!availableBackends().includes("mlx"))
      await expect(
        openEngine({ modelDir: dir, layerStart: 0, layerEnd: 1, embed: true, head: false, backend: "mlx" }),
      ).rejects.toThrow(/built without MLX/);
  });

  /** A copy of the model whose shard holding `tensor` gets its header (or bytes) edited by `edit`. */
  function brokenCopy(
    name: string,
    tensor: string,
    edit: (header: HeaderJson, file: Buffer) => Buffer,
  ): string {
    const copy = join(root, `broken-${name}`);
    mkdirSync(copy, { recursive: true });
    for (const f of readdirSync(dir)) copyFileSync(join(dir, f), join(copy, f));
    const index = JSON.parse(readFileSync(join(copy, "model.safetensors.index.json"), "utf8"));
    const shard = join(copy, index.weight_map[tensor]);
    const file = readFileSync(shard);
    const headerLength = Number(file.readBigUInt64LE(0));
    const header = JSON.parse(file.subarray(8, 8 + headerLength).toString("utf8")) as HeaderJson;
    writeFileSync(shard, edit(header, file.subarray(8 + headerLength)));
    return copy;
  }
  type HeaderJson = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  function withHeader(header: HeaderJson, data: Buffer): Buffer {
    const text = Buffer.from(JSON.stringify(header), "utf8");
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(text.length));
    return Buffer.concat([length, text, data]);
  }
  const T = "model.layers.1.self_attn.k_proj.weight";
  const shardName = (d: string) =>
    JSON.parse(readFileSync(join(d, "model.safetensors.index.json"), "utf8")).weight_map[T] as string;
  const open = (modelDir: string) => full(modelDir, 1);

  const cases: Array<[string, (h: HeaderJson, data: Buffer) => Buffer, RegExp]> = [
    [
      "wrong-shape",
      (h, data) => {
        h[T].shape = [h[T].shape[1], h[T].shape[0]];
        return withHeader(h, data);
      },
      /shape \[16, 128\], expected \[128, 16\]/,
    ],
    [
      "unknown-dtype",
      (h, data) => {
        h[T].dtype = "Q7";
        return withHeader(h, data);
      },
      /unknown dtype Q7/,
    ],
    [
      "offsets-out-of-file",
      (h, data) => {
        const [b, e] = h[T].data_offsets;
        h[T].data_offsets = [b + data.length, e + data.length];
        return withHeader(h, data);
      },
      /run past the end of the file/,
    ],
    [
      "offsets-size-mismatch",
      (h, data) => {
        h[T].data_offsets = [h[T].data_offsets[0], h[T].data_offsets[1] - 4];
        return withHeader(h, data);
      },
      /needs 8192/,
    ],
    [
      "truncated",
      (h, data) => withHeader(h, data.subarray(0, data.length - 100)),
      /past the end of the file/,
    ],
  ];
  for (const [name, edit, message] of cases) {
    it(`${name}: names the file and the tensor`, async () => {
      const copy = brokenCopy(name, T, edit);
      const err = await open(copy).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err, name).toBeInstanceOf(Error);
      expect(err!.message).toContain(join(copy, shardName(copy)));
      expect(err!.message).toMatch(/: tensor /);
      if (name !== "truncated") expect(err!.message).toContain(T);
      expect(err!.message).toMatch(message);
    });
  }

  it("a safetensors header that is not JSON: names the file", async () => {
    const copy = brokenCopy("bad-header-json", T, (_h, data) => {
      const text = Buffer.from('{"model.layers.1.self_attn.k_proj.weight": {"dtype": "U32", ', "utf8");
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(BigInt(text.length));
      return Buffer.concat([length, text, data]);
    });
    await expect(open(copy)).rejects.toThrow(new RegExp(`${shardName(copy)}: bad header: invalid JSON`));
  });

  it("overlapping tensors: names both", async () => {
    const other = "model.layers.1.self_attn.v_proj.weight";
    const copy = brokenCopy("overlap", T, (h, data) => {
      if (!h[other]) throw new Error("test setup: k_proj and v_proj are expected in the same shard");
      h[other].data_offsets = [...h[T].data_offsets] as [number, number];
      return withHeader(h, data);
    });
    await expect(open(copy)).rejects.toThrow(/overlaps tensor/);
  });

  it("a tensor missing from the index, and a broken index, are named", async () => {
    const copy = join(root, "broken-missing");
    mkdirSync(copy, { recursive: true });
    for (const f of readdirSync(dir)) copyFileSync(join(dir, f), join(copy, f));
    const indexFile = join(copy, "model.safetensors.index.json");
    const index = JSON.parse(readFileSync(indexFile, "utf8"));
    delete index.weight_map["model.layers.3.block_sparse_moe.e_score_correction_bias"];
    writeFileSync(indexFile, JSON.stringify(index));
    await expect(open(copy)).rejects.toThrow(
      /model\.safetensors\.index\.json: tensor model\.layers\.3\.block_sparse_moe\.e_score_correction_bias: missing/,
    );
    writeFileSync(indexFile, "{ not json");
    await expect(open(copy)).rejects.toThrow(/model\.safetensors\.index\.json.*invalid JSON/);
  });
});
