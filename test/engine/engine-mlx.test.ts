// The mlx backend on the tiny model, for 4-bit (gs64, gs32), 8-bit, 3-bit, 6-bit and bf16 checkpoints:
// - checking mode (STUDIO_MLX_DTYPE=f32: the same MLX ops with f32 activations): the same greedy tokens as the
//   plain-TS f32 reference (test/reference) for 16 free-running steps and logits within 1e-4 of the largest
//   logit. This pins every op (quantized matmul, gather_qmm, rms_norm, half-split partial rope, GQA attention,
//   router) to docs/model.md.
// - production mode (bf16 activations and KV): logits within bf16 tolerance and the cpu's greedy token
//   wherever the choice is clear and routing matched (see BF16_* below for why near-ties and flips are exempt).
// Also: a split mlx run equals the single mlx run bit for bit (bf16 hidden on the wire), batching and fork
// leave a sequence's bits unchanged, and backend "auto" picks mlx only where MLX has a GPU.
// Runs whenever the addon was built with MLX (native/find-mlx.js found it at install); says why it skips otherwise.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeModel } from "../../cli/make-model/index.js";
import type {
  Engine,
  ForwardItem,
  ForwardOutput,
  SamplingParams,
  TokenLogprob,
} from "../../common/engine-api.js";
import { packageRoot } from "../../common/paths.js";
import { availableBackends, mlxInfo, openEngine, type StudioEngine } from "../../native/index.js";
import { ReferenceModel } from "../helpers/reference-minimax-m2.js";

const addonPath = join(packageRoot(), "native", "build", "Release", "studio_engine.node");
const skipReason = !existsSync(addonPath)
  ? `the studio_engine addon is not built (${addonPath})`
  : !availableBackends().includes("mlx")
    ? "studio_engine was built without MLX (install MLX, e.g. `brew install mlx`, or set MLX_DIR, then `npm install`)"
    : undefined;
if (skipReason) console.warn(`engine-mlx.test: skipping the mlx backend tests: ${skipReason}`);

const LAYERS = 6; // tiny preset
const HIDDEN = 128;
// 40 tokens: the prefill routes 80 (token, expert) pairs, enough for the backend's expert-sorted path
// (>= 64 pairs); the decode steps take the direct path.
const PROMPT = Array.from({ length: 40 }, (_, i) => (i * 37 + 5) % 1500);
const DECODE_STEPS = 16;
// f32 checking mode against the plain f32 reference: only summation order differs (observed ~1e-6).
const F32_TOLERANCE = 1e-4;
// bf16: every activation rounds to 8 significant bits (2^-9 relative), so after six layers the logits differ
// from the f32 cpu backend by about 1% of the largest logit (observed median 0.75-1.2%): the median step
// must stay under 3%. A token whose router scores sit within that noise of the top-k boundary can pick another
// expert, which moves that step's logits (and perhaps its greedy token) by tens of per cent (observed up to
// 34%, on at most 3 of 25 steps): such routing-flip steps (error over 5%) may be at most a quarter of the
// steps, none over 50%. A wrong op moves every step by 20% or more (a swapped rope pairing gives a median of
// 20-23%), failing the median bound.
const BF16_MEDIAN_TOLERANCE = 0.03;
const BF16_FLIP_ERROR = 0.05;
const BF16_MAX_FLIP_SHARE = 0.25;
const BF16_WORST_TOLERANCE = 0.5;
// Greedy choices closer than 10% of the largest logit are near-ties that bf16 noise may legitimately flip.
const BF16_CLEAR_MARGIN = 0.1;

interface Run {
  tokens: number[];
  logits: Float32Array[];
}

type Checkpoint = { name: string; bits: number; groupSize?: number };
const CHECKPOINTS: Checkpoint[] = [
  { name: "4-bit gs64", bits: 4, groupSize: 64 },
  { name: "4-bit gs32", bits: 4, groupSize: 32 },
  { name: "8-bit gs64", bits: 8, groupSize: 64 },
  // 3 and 6 bits pack across word boundaries.
  { name: "3-bit gs64", bits: 3, groupSize: 64 },
  { name: "6-bit gs32", bits: 6, groupSize: 32 },
  { name: "bf16", bits: 0 },
];

function lastLogits(out: ForwardOutput): Float32Array {
  if (!out.logits) throw new Error(`seq ${out.seq}: no logits returned`);
  return out.logits;
}

/** Greedy: the prompt, then `steps` steps feeding back each sampled token (or the forced ones when given). */
async function greedy(
  engine: Engine,
  seq: number,
  prompt: number[],
  steps = DECODE_STEPS,
  forced?: number[],
) {
  const run: Run = { tokens: [], logits: [] };
  let position = 0;
  let input = prompt;
  for (let step = 0; step <= steps; step++) {
    const [out] = await engine.forward([
      { seq, position, tokens: Int32Array.from(input), sampling: {}, returnLogits: true },
    ]);
    run.tokens.push(out.token!);
    run.logits.push(lastLogits(out));
    position += input.length;
    input = [forced ? forced[step] : out.token!];
  }
  return run;
}

/** n token ids from a stride (distinct prompts of any length). */
function tokensOf(n: number, stride: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * stride + 3) % 1500);
}

/**
 * Greedy runs of several prompts side by side: every call holds one row per sequence (the prompts in the first,
 * then one decode row each). Also the attention launches of each call.
 */
async function greedyTogether(engine: StudioEngine, seqs: number[], prompts: number[][], steps: number) {
  const runs: Run[] = seqs.map(() => ({ tokens: [], logits: [] }));
  const launches: number[] = [];
  const positions = seqs.map(() => 0);
  const inputs = prompts.map((p) => [...p]);
  for (let step = 0; step <= steps; step++) {
    const before = engine.stats().attentionLaunches;
    const outs = await engine.forward(
      seqs.map((seq, i) => ({
        seq,
        position: positions[i],
        tokens: Int32Array.from(inputs[i]),
        sampling: {},
        returnLogits: true,
      })),
    );
    launches.push(engine.stats().attentionLaunches - before);
    outs.forEach((out, i) => {
      runs[i].tokens.push(out.token!);
      runs[i].logits.push(lastLogits(out));
      positions[i] += inputs[i].length;
      inputs[i] = [out.token!];
    });
  }
  return { runs, launches };
}

function expectSameRuns(got: Run[], want: Run[]) {
  got.forEach((run, i) => {
    expect(run.tokens).toEqual(want[i].tokens);
    for (let s = 0; s < run.logits.length; s++)
      expect(Array.from(run.logits[s])).toEqual(Array.from(want[i].logits[s]));
  });
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** The reference's greedy run, as greedy() gives an engine's. */
async function referenceGreedy(dir: string, prompt: number[], steps = DECODE_STEPS): Promise<Run> {
  const reference = await ReferenceModel.load(dir);
  const run: Run = { tokens: [], logits: [] };
  let logits = reference.forwardLast(prompt, 0);
  for (let step = 0; step <= steps; step++) {
    run.tokens.push(argmax(logits));
    run.logits.push(logits);
    if (step < steps) logits = reference.forwardLast([argmax(logits)], prompt.length + step);
  }
  return run;
}

/** Per step: max |a - b| relative to the largest |ref| logit of that step. */
function relativeErrors(run: Run, ref: Run): number[] {
  return ref.logits.map((r, s) => {
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < r.length; i++) {
      diff = Math.max(diff, Math.abs(run.logits[s][i] - r[i]));
      scale = Math.max(scale, Math.abs(r[i]));
    }
    return diff / scale;
  });
}

/** Top-1 minus top-2 logit, relative to the largest |logit|. */
function relativeMargin(logits: Float32Array): number {
  let first = -Infinity;
  let second = -Infinity;
  let scale = 0;
  for (const v of logits) {
    scale = Math.max(scale, Math.abs(v));
    if (v > first) {
      second = first;
      first = v;
    } else if (v > second) second = v;
  }
  return (first - second) / scale;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function openFull(dir: string, backend: "cpu" | "mlx") {
  return openEngine({
    modelDir: dir,
    layerStart: 0,
    layerEnd: LAYERS,
    embed: true,
    head: true,
    backend,
    threads: 2,
  });
}

/** An mlx engine in the f32 checking mode (the variable is read once, when the backend is made). */
async function openMlxF32(dir: string) {
  process.env.STUDIO_MLX_DTYPE = "f32";
  try {
    return await openFull(dir, "mlx");
  } finally {
    delete process.env.STUDIO_MLX_DTYPE;
  }
}

/** An mlx engine made with these environment variables set (each is read once, when the engine is made). */
async function openMlxWith(env: Record<string, string>, dir: string) {
  Object.assign(process.env, env);
  try {
    return await openFull(dir, "mlx");
  } finally {
    for (const key of Object.keys(env)) delete process.env[key];
  }
}

/** An mlx engine that picks tokens on the device (the default only where MLX has a GPU). */
function openMlxDeviceSampling(dir: string) {
  return openMlxWith({ STUDIO_MLX_SAMPLING: "device" }, dir);
}

/** An mlx engine whose tokens the host sampler picks from downloaded logits, as before sampling on the device. */
function openMlxHostSampling(dir: string) {
  return openMlxWith({ STUDIO_MLX_SAMPLING: "host" }, dir);
}

/**
 * Lone decode steps of one sequence, interrupted by everything that must drop a step built ahead: another
 * sequence's call, a token other than the one sampled, a batch of two, other sampling, a release, a logit bias.
 */
async function aheadScript(engine: StudioEngine): Promise<ForwardOutput[]> {
  const outs: ForwardOutput[] = [];
  const sampling: SamplingParams = { temperature: 0.9, topK: 30, seed: 7, topLogprobs: 2 };
  let position = 0;
  let input = PROMPT;
  const step = async (tokens: number[], s = sampling) => {
    const [out] = await engine.forward([{ seq: 1, position, tokens: Int32Array.from(tokens), sampling: s }]);
    outs.push(out);
    position += tokens.length;
    input = [out.token!];
  };
  await step(input);
  for (let i = 0; i < 4; i++) await step(input);
  outs.push(...(await engine.forward([{ seq: 2, position: 0, tokens: Int32Array.of(5, 6, 7), sampling }])));
  await step(input); // dropped by seq 2's call
  await step(input);
  await step([(input[0] + 1) % 1536]); // another token than the one sampled: dropped
  await engine.fork(1, 3, position);
  const pair = await engine.forward([
    { seq: 1, position, tokens: Int32Array.from(input), sampling },
    { seq: 3, position, tokens: Int32Array.from(input), sampling: { ...sampling, seed: 8 } },
  ]); // a batch of two: dropped
  outs.push(...pair);
  position += 1;
  input = [pair[0].token!];
  await step(input, { ...sampling, seed: 9 }); // other sampling: dropped
  await step(input, { ...sampling, seed: 9 });
  await engine.release(1); // dropped with the sequence
  position = 0;
  input = PROMPT;
  await step(input);
  for (let i = 0; i < 3; i++) await step(input);
  await step(input, { ...sampling, logitBias: [[3, 2]] }); // a host row; it builds nothing ahead
  return outs;
}

// Greedy, and each way a draw's candidates are formed (all ids, the top_p nucleus, top_k, top_k with top_p).
const SAMPLINGS: SamplingParams[] = [
  {},
  { topLogprobs: 4 },
  { temperature: 0.8, seed: 5 },
  { temperature: 1.3, topP: 0.9, seed: 9 },
  { temperature: 0.7, topK: 20, seed: 3, topLogprobs: 3 },
  { temperature: 1, topK: 50, topP: 0.8, seed: 11 },
];

interface Sampled {
  tokens: number[];
  logprobs: number[];
  top: TokenLogprob[][];
}

/** The prompt then 12 steps, each feeding back its sampled token. */
async function sampled(engine: Engine, seq: number, sampling: SamplingParams): Promise<Sampled> {
  const run: Sampled = { tokens: [], logprobs: [], top: [] };
  let position = 0;
  let input = PROMPT;
  for (let step = 0; step <= 12; step++) {
    const [out] = await engine.forward([{ seq, position, tokens: Int32Array.from(input), sampling }]);
    run.tokens.push(out.token!);
    run.logprobs.push(out.logprob!);
    run.top.push(out.topLogprobs ?? []);
    position += input.length;
    input = [out.token!];
  }
  return run;
}

describe.skipIf(skipReason !== undefined)("mlx backend", () => {
  const root = mkdtempSync(join(tmpdir(), "engine-mlx-"));
  const dirs = new Map<string, string>();

  beforeAll(async () => {
    for (const c of CHECKPOINTS) {
      const dir = join(root, c.name.replace(/\W+/g, "-"));
      await makeModel({ dir, preset: "tiny", bits: c.bits, groupSize: c.groupSize, seed: 7 });
      dirs.set(c.name, dir);
    }
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it("reports itself: backend mlx, bf16 activations, bf16 KV", async () => {
    const engine = await openFull(dirs.get("4-bit gs64")!, "mlx");
    try {
      const stats = engine.stats();
      expect(stats.backend).toBe("mlx");
      expect(stats.activationDtype).toBe("bf16");
      // 6 layers x (k + v) x 2 kv heads x 64 dims x 2 bytes.
      expect(stats.kvBytesPerToken).toBe(LAYERS * 2 * 2 * 64 * 2);
      const info = mlxInfo();
      expect(info?.version).toMatch(/^\d+\.\d+/);
      expect(["gpu", "cpu"]).toContain(info?.device);
    } finally {
      await engine.close();
    }
  });

  for (const c of CHECKPOINTS) {
    it(`${c.name}, f32 checking mode: the reference's greedy tokens, logits within ${F32_TOLERANCE}`, async () => {
      const dir = dirs.get(c.name)!;
      const mlx = await openMlxF32(dir);
      try {
        expect(mlx.stats().activationDtype).toBe("f32");
        const ref = await referenceGreedy(dir, PROMPT);
        const got = await greedy(mlx, 1, PROMPT);
        const worst = Math.max(...relativeErrors(got, ref));
        console.log(
          `engine-mlx ${c.name} f32: worst relative logit error vs reference ${worst.toExponential(2)}`,
        );
        expect(got.tokens).toEqual(ref.tokens);
        expect(worst).toBeLessThanOrEqual(F32_TOLERANCE);
      } finally {
        await mlx.close();
      }
    });

    it(`${c.name}, bf16: logits within bf16 tolerance, the cpu's greedy token wherever it is clear`, async () => {
      const dir = dirs.get(c.name)!;
      const cpu = await openFull(dir, "cpu");
      const mlx = await openFull(dir, "mlx");
      try {
        const steps = 24;
        const ref = await greedy(cpu, 1, PROMPT, steps);
        // Both follow the cpu's tokens, so every step compares the same history.
        const got = await greedy(mlx, 1, PROMPT, steps, ref.tokens);
        const errors = relativeErrors(got, ref);
        const flips = errors.map((e) => e > BF16_FLIP_ERROR);
        // Clear choices on steps whose routing matched: there bf16 noise alone cannot change the token.
        const checked = ref.logits.map((l, s) => !flips[s] && relativeMargin(l) >= BF16_CLEAR_MARGIN);
        const agree = ref.tokens.filter((t, s) => t === got.tokens[s]).length;
        console.log(
          `engine-mlx ${c.name} bf16: relative logit error median ${median(errors).toExponential(2)}, worst ` +
            `${Math.max(...errors).toExponential(2)}, routing-flip steps ${flips.filter(Boolean).length}; greedy ` +
            `agrees on ${agree}/${ref.tokens.length} steps (${checked.filter(Boolean).length} clear, all must agree)`,
        );
        expect(median(errors)).toBeLessThanOrEqual(BF16_MEDIAN_TOLERANCE);
        expect(flips.filter(Boolean).length).toBeLessThanOrEqual(BF16_MAX_FLIP_SHARE * errors.length);
        expect(Math.max(...errors)).toBeLessThanOrEqual(BF16_WORST_TOLERANCE);
        expect(checked.filter(Boolean).length).toBeGreaterThan(0);
        for (let s = 0; s < ref.tokens.length; s++)
          if (checked[s]) expect(got.tokens[s], `step ${s}`).toBe(ref.tokens[s]);
      } finally {
        await cpu.close();
        await mlx.close();
      }
    });
  }

  it("f32 checking mode past the KV growth step (256 positions): chunked prefill and decode match the reference", async () => {
    const dir = dirs.get("4-bit gs64")!;
    const reference = await ReferenceModel.load(dir);
    const mlx = await openMlxF32(dir);
    try {
      const tokens = Array.from({ length: 300 }, (_, i) => (i * 53 + 11) % 1500);
      // Chunks [0,200) then [200,300) (crossing 256 inside one chunk), then three decode steps.
      const chunks = [tokens.slice(0, 200), tokens.slice(200), [7], [8], [9]];
      let position = 0;
      for (const chunk of chunks) {
        const want = reference.forwardLast(chunk, position);
        const [got] = await mlx.forward([
          { seq: 1, position, tokens: Int32Array.from(chunk), sampling: {}, returnLogits: true },
        ]);
        const [error] = relativeErrors(
          { tokens: [], logits: [lastLogits(got)] },
          { tokens: [], logits: [want] },
        );
        expect(error, `chunk at position ${position}`).toBeLessThanOrEqual(F32_TOLERANCE);
        expect(got.token).toBe(argmax(want));
        position += chunk.length;
      }
      // f32 KV: 4 bytes per element, grown in steps of 256 positions (300 -> 512).
      expect(mlx.stats().kvBytes).toBe(512 * LAYERS * 2 * 2 * 64 * 4);
    } finally {
      await mlx.close();
    }
  });

  it("a split run (layers [0,3) then [3,6), bf16 hidden on the wire) equals the single run bit for bit", async () => {
    const dir = dirs.get("4-bit gs64")!;
    const single = await openFull(dir, "mlx");
    const first = await openEngine({
      modelDir: dir,
      layerStart: 0,
      layerEnd: 3,
      embed: true,
      head: false,
      backend: "mlx",
    });
    const last = await openEngine({
      modelDir: dir,
      layerStart: 3,
      layerEnd: 6,
      embed: false,
      head: true,
      backend: "mlx",
    });
    try {
      const want = await greedy(single, 1, PROMPT);
      const got: Run = { tokens: [], logits: [] };
      let position = 0;
      let input = PROMPT;
      for (let step = 0; step <= DECODE_STEPS; step++) {
        const [mid] = await first.forward([{ seq: 9, position, tokens: Int32Array.from(input) }]);
        // bf16 activations: 2 bytes per value.
        expect(mid.hidden!.byteLength).toBe(input.length * HIDDEN * 2);
        const [out] = await last.forward([
          { seq: 9, position, hidden: mid.hidden!, sampling: {}, returnLogits: true },
        ]);
        got.tokens.push(out.token!);
        got.logits.push(lastLogits(out));
        position += input.length;
        input = [out.token!];
      }
      expect(got.tokens).toEqual(want.tokens);
      for (let s = 0; s < want.logits.length; s++)
        expect(Array.from(got.logits[s])).toEqual(Array.from(want.logits[s]));
    } finally {
      await Promise.all([single.close(), first.close(), last.close()]);
    }
  });

  it("a sequence gives the same bits alone and in a batch with two others", async () => {
    const dir = dirs.get("4-bit gs64")!;
    const engine = await openFull(dir, "mlx");
    try {
      const alone = await greedy(engine, 1, PROMPT, 3);
      // Same prompt as seq 10, beside two sequences of other lengths, prefill and decode in the same batches.
      const others = [
        [3, 4, 5],
        [900, 901, 902, 903, 904, 905, 906],
      ];
      const inputs = [PROMPT, ...others];
      const positions = [0, 0, 0];
      const batched: Run = { tokens: [], logits: [] };
      for (let step = 0; step <= 3; step++) {
        const outs = await engine.forward(
          inputs.map((tokens, i) => ({
            seq: 10 + i,
            position: positions[i],
            tokens: Int32Array.from(tokens),
            sampling: {},
            returnLogits: true,
          })),
        );
        batched.tokens.push(outs[0].token!);
        batched.logits.push(lastLogits(outs[0]));
        outs.forEach((out, i) => {
          positions[i] += inputs[i].length;
          inputs[i] = [out.token!];
        });
      }
      expect(batched.tokens).toEqual(alone.tokens);
      for (let s = 0; s < alone.logits.length; s++)
        expect(Array.from(batched.logits[s])).toEqual(Array.from(alone.logits[s]));
    } finally {
      await engine.close();
    }
  });

  it("decode rows of one key class share one attention per layer, and each row keeps its bits", async () => {
    const engine = await openFull(dirs.get("4-bit gs64")!, "mlx");
    const off = await openMlxWith({ STUDIO_MLX_BATCHED_DECODE: "off" }, dirs.get("4-bit gs64")!);
    try {
      // Two classes: up to 64 keys, and (64, 80] keys; the 70- and 72-token prompts stay in theirs for 6 steps.
      const prompts = [PROMPT, PROMPT.slice(0, 12), tokensOf(70, 31), tokensOf(72, 43)];
      const alone = [];
      for (let i = 0; i < prompts.length; i++) alone.push(await greedy(engine, 100 + i, prompts[i], 6));
      const together = await greedyTogether(engine, [1, 2, 3, 4], prompts, 6);
      expectSameRuns(together.runs, alone);
      // The prefill: one kernel per sequence per layer; then two per layer, one per class, not four.
      expect(together.launches).toEqual([4 * LAYERS, ...Array(6).fill(2 * LAYERS)]);
      // Switched off, every row takes its own kernel, to the same bits.
      const apart = await greedyTogether(off, [1, 2, 3, 4], prompts, 6);
      expectSameRuns(apart.runs, alone);
      expect(apart.launches).toEqual(Array(7).fill(4 * LAYERS));
    } finally {
      await Promise.all([engine.close(), off.close()]);
    }
  });

  it("at a power of two of keys (from 1,024) a row runs alone, then joins the next class", async () => {
    const engine = await openFull(dirs.get("8-bit gs64")!, "mlx");
    try {
      const prompts = [tokensOf(1021, 7), tokensOf(1022, 11)];
      const alone = [await greedy(engine, 100, prompts[0], 5), await greedy(engine, 101, prompts[1], 5)];
      const together = await greedyTogether(engine, [1, 2], prompts, 5);
      expectSameRuns(together.runs, alone);
      // Keys per step: (1022, 1023) together; (1023, 1024) and (1024, 1025) each alone; then together again.
      expect(together.launches.map((n) => n / LAYERS)).toEqual([2, 1, 2, 2, 1, 1]);
    } finally {
      await engine.close();
    }
  });

  it("sequences leave and join a decoding batch (slots freed, reused, the slab replaced) and keep their bits", async () => {
    const engine = await openFull(dirs.get("4-bit gs64")!, "mlx");
    try {
      // Each sequence: its prompt, and the calls it is in (its prompt in the first, then one decode row each).
      const plan = [
        { seq: 1, prompt: tokensOf(20, 3), first: 0, last: 7 },
        { seq: 2, prompt: tokensOf(25, 5), first: 0, last: 2 },
        { seq: 3, prompt: tokensOf(30, 7), first: 0, last: 2 },
        { seq: 4, prompt: tokensOf(10, 9), first: 0, last: 7 },
        { seq: 5, prompt: tokensOf(33, 13), first: 0, last: 5 },
        { seq: 6, prompt: tokensOf(16, 17), first: 3, last: 7 },
        { seq: 7, prompt: tokensOf(12, 19), first: 4, last: 7 },
      ];
      const alone = [];
      for (const p of plan) {
        alone.push(await greedy(engine, 100 + p.seq, p.prompt, p.last - p.first));
        await engine.release(100 + p.seq);
      }
      const runs: Run[] = plan.map(() => ({ tokens: [], logits: [] }));
      const positions = plan.map(() => 0);
      const inputs = plan.map((p) => p.prompt);
      const launches: number[] = [];
      for (let call = 0; call <= 7; call++) {
        const live = plan.flatMap((p, i) => (p.first <= call && call <= p.last ? [i] : []));
        const before = engine.stats().attentionLaunches;
        const outs = await engine.forward(
          live.map((i) => ({
            seq: plan[i].seq,
            position: positions[i],
            tokens: Int32Array.from(inputs[i]),
            sampling: {},
            returnLogits: true,
          })),
        );
        launches.push((engine.stats().attentionLaunches - before) / LAYERS);
        outs.forEach((out, j) => {
          const i = live[j];
          runs[i].tokens.push(out.token!);
          runs[i].logits.push(lastLogits(out));
          positions[i] += inputs[i].length;
          inputs[i] = [out.token!];
        });
        for (const i of live) if (plan[i].last === call) await engine.release(plan[i].seq);
      }
      expectSameRuns(runs, alone);
      // Per layer: prompts alone; every call's decode rows (all under 64 keys) in one kernel.
      expect(launches).toEqual([5, 1, 1, 2, 2, 1, 1, 1]);
      expect([engine.stats().sequences, engine.stats().kvBytes]).toEqual([0, 0]);
    } finally {
      await engine.close();
    }
  });

  it("a sequence decoding in a batch forks, stashes blocks and frees its KV as it would alone", async () => {
    const engine = await openFull(dirs.get("4-bit gs64")!, "mlx");
    try {
      const prompts = [PROMPT, PROMPT.slice(0, 20)];
      const { runs } = await greedyTogether(engine, [1, 2], prompts, 3);
      const positions = prompts.map((p) => p.length + 3);
      const next = runs.map((r) => r.tokens[3]);
      await engine.fork(1, 3, positions[0]);
      await engine.stashBlocks(2, [{ id: "b", start: 0, length: positions[1] }]);
      // Seq 3 joins the batch: the class's rows change, and its slab is built again.
      const outs = await engine.forward(
        [1, 2, 3].map((seq, i) => ({
          seq,
          position: positions[i === 2 ? 0 : i],
          tokens: Int32Array.of(next[i === 2 ? 0 : i]),
          returnLogits: true,
        })),
      );
      expect(Array.from(lastLogits(outs[2]))).toEqual(Array.from(lastLogits(outs[0])));
      await engine.assemble(4, [{ id: "b", take: positions[1] }]);
      const [b] = await engine.forward([
        { seq: 4, position: positions[1], tokens: Int32Array.of(next[1]), returnLogits: true },
      ]);
      expect(Array.from(lastLogits(b))).toEqual(Array.from(lastLogits(outs[1])));
      for (const seq of [1, 2, 3, 4]) await engine.release(seq);
      await engine.dropBlocks(["b"]);
      expect([engine.stats().sequences, engine.stats().kvBytes, engine.stats().blockBytes]).toEqual([
        0, 0, 0,
      ]);
    } finally {
      await engine.close();
    }
  });

  it("fork then continue equals the original continuing, and release frees the KV", async () => {
    const engine = await openFull(dirs.get("8-bit gs64")!, "mlx");
    try {
      const [first] = await engine.forward([
        { seq: 1, position: 0, tokens: Int32Array.from(PROMPT), sampling: {} },
      ]);
      await engine.fork(1, 2, PROMPT.length);
      const next = Int32Array.of(first.token!);
      const [a] = await engine.forward([
        { seq: 1, position: PROMPT.length, tokens: next, returnLogits: true },
      ]);
      const [b] = await engine.forward([
        { seq: 2, position: PROMPT.length, tokens: next, returnLogits: true },
      ]);
      expect(Array.from(lastLogits(b))).toEqual(Array.from(lastLogits(a)));
      // A fork to a shorter prefix recomputes the tail and lands on the same logits as well.
      await engine.fork(1, 3, 4);
      const [c] = await engine.forward([
        {
          seq: 3,
          position: 4,
          tokens: Int32Array.from([...PROMPT.slice(4), first.token!]),
          returnLogits: true,
        },
      ]);
      expect(Array.from(lastLogits(c))).toEqual(Array.from(lastLogits(a)));
      expect(engine.stats().sequences).toBe(3);
      await engine.release(1);
      await engine.release(2);
      await engine.release(3);
      expect(engine.stats().sequences).toBe(0);
      expect(engine.stats().kvBytes).toBe(0);
    } finally {
      await engine.close();
    }
  });

  it("cache blocks (bf16 arrays): assembled, or exported and imported, a sequence continues bit for bit", async () => {
    const engine = await openFull(dirs.get("4-bit gs64")!, "mlx");
    try {
      const long = Array.from({ length: 300 }, (_, i) => (i * 29 + 5) % 1500);
      await engine.forward([{ seq: 1, position: 0, tokens: Int32Array.from(long) }]);
      // Across the cache's 256-position growth step, and a block shorter than one step.
      await engine.stashBlocks(1, [
        { id: "a", start: 0, length: 260 },
        { id: "b", start: 260, length: 40 },
      ]);
      const [fresh] = await engine.forward([
        { seq: 2, position: 0, tokens: Int32Array.from(long), returnLogits: true },
      ]);
      const continued = async (seq: number, ids: [string, string]) => {
        await engine.assemble(seq, [
          { id: ids[0], take: 260 },
          { id: ids[1], take: 39 },
        ]);
        const [out] = await engine.forward([
          { seq, position: 299, tokens: Int32Array.from(long.slice(299)), returnLogits: true },
        ]);
        return Array.from(lastLogits(out));
      };
      expect(await continued(3, ["a", "b"])).toEqual(Array.from(lastLogits(fresh)));
      const exported = await Promise.all(["a", "b"].map((id) => engine.exportBlock(id)));
      // bf16 keys and values: 2 bytes per element.
      expect(exported[1][0].byteLength).toBe(40 * engine.stats().kvBytesPerPositionPerLayer);
      expect(engine.stats().kvBytesPerPositionPerLayer).toBe(2 * 2 * 128);
      await engine.importBlock("a2", 260, exported[0]);
      await engine.importBlock("b2", 40, exported[1]);
      const again = await engine.exportBlock("b2");
      expect(again.every((l, i) => Buffer.from(l).equals(Buffer.from(exported[1][i])))).toBe(true);
      expect(await continued(4, ["a2", "b2"])).toEqual(Array.from(lastLogits(fresh)));
      await engine.dropBlocks(["a", "b", "a2", "b2"]);
      expect([engine.stats().blocks, engine.stats().blockBytes]).toEqual([0, 0]);
    } finally {
      await engine.close();
    }
  });

  it("samples on the device: greedy and seeded tokens equal the host sampler's, and a seed repeats its tokens", async () => {
    const dir = dirs.get("4-bit gs64")!;
    const device = await openMlxDeviceSampling(dir);
    const host = await openMlxHostSampling(dir);
    try {
      for (const sampling of SAMPLINGS) {
        const onDevice = await sampled(device, 1, sampling);
        const onHost = await sampled(host, 1, sampling);
        // Same logits (same ops and bits on both engines), same seeded draw: the same tokens. The device sums
        // in f32 where the host sums in double, so a draw within ~1e-5 of a boundary could differ; these
        // seeds have none (native/test/mlx_sampler_check.cpp measures how rare such ties are).
        expect(onDevice.tokens, JSON.stringify(sampling)).toEqual(onHost.tokens);
        for (let i = 0; i < onHost.logprobs.length; i++)
          expect(Math.abs(onDevice.logprobs[i] - onHost.logprobs[i])).toBeLessThan(1e-4);
        expect(onDevice.top.map((t) => t.map((x) => x.token))).toEqual(
          onHost.top.map((t) => t.map((x) => x.token)),
        );
        // The same seed again (a new sequence): the very same tokens and log-probabilities.
        const again = await sampled(device, 2, sampling);
        expect(again).toEqual(onDevice);
        for (const seq of [1, 2]) await device.release(seq);
        await host.release(1);
      }
    } finally {
      await Promise.all([device.close(), host.close()]);
    }
  });

  it("decode ahead: a lone sequence uses the step built ahead; other calls drop it; no token or bit changes", async () => {
    const dir = dirs.get("4-bit gs64")!;
    const ahead = await openMlxDeviceSampling(dir);
    const notAhead = await openMlxWith({ STUDIO_MLX_SAMPLING: "device", STUDIO_DECODE_AHEAD: "off" }, dir);
    const host = await openMlxHostSampling(dir);
    try {
      const [a, n, h] = await Promise.all([aheadScript(ahead), aheadScript(notAhead), aheadScript(host)]);
      // Building ahead changes nothing, to the bit; the host sampler picks the same tokens.
      expect(a).toEqual(n);
      expect(a.map((o) => o.token)).toEqual(h.map((o) => o.token));
      for (let i = 0; i < a.length; i++) expect(Math.abs(a[i].logprob! - h[i].logprob!)).toBeLessThan(1e-4);
      const used = ahead.stats().stepsAheadUsed;
      const dropped = ahead.stats().stepsAheadDropped;
      // Only decode steps build ahead (not a prompt). Used: 3 of the 4 steps after the prompt, the 2nd after
      // seq 2's call, the 2nd with seed 9, 2 of the 3 after the new prompt. Dropped: by seq 2's call, the other
      // token, the batch of two, the release, the bias.
      expect(used).toBe(7);
      expect(dropped).toBe(5);
      for (const e of [notAhead, host])
        expect([e.stats().stepsAheadUsed, e.stats().stepsAheadDropped]).toEqual([0, 0]);
    } finally {
      await Promise.all([ahead.close(), notAhead.close(), host.close()]);
    }
  });

  it("rows with a logit bias, a mask or returnLogits sample on the host beside device rows in one batch", async () => {
    const dir = dirs.get("4-bit gs64")!;
    const device = await openMlxDeviceSampling(dir);
    const host = await openMlxHostSampling(dir);
    try {
      const items = (): ForwardItem[] => [
        { seq: 1, position: 0, tokens: Int32Array.from(PROMPT), sampling: { temperature: 0.9, seed: 4 } },
        {
          seq: 2,
          position: 0,
          tokens: Int32Array.from(PROMPT),
          sampling: { temperature: 0.9, seed: 4, logitBias: [[7, 30]] },
        },
        {
          seq: 3,
          position: 0,
          tokens: Int32Array.from(PROMPT),
          sampling: { temperature: 0.9, seed: 4, allowTokens: Int32Array.of(11, 12, 13) },
        },
        { seq: 4, position: 0, tokens: Int32Array.from(PROMPT), sampling: { seed: 4 }, returnLogits: true },
      ];
      const [onDevice, onHost] = await Promise.all([device.forward(items()), host.forward(items())]);
      expect(onDevice.map((o) => o.token)).toEqual(onHost.map((o) => o.token));
      // The host rows are the host sampler's to the bit; the device row's log-probability is an f32 sum's.
      expect(onDevice.slice(1).map((o) => o.logprob)).toEqual(onHost.slice(1).map((o) => o.logprob));
      expect(Math.abs(onDevice[0].logprob! - onHost[0].logprob!)).toBeLessThan(1e-4);
      expect(onDevice[1].token).toBe(7);
      expect([11, 12, 13]).toContain(onDevice[2].token);
      expect(Array.from(onDevice[3].logits!)).toEqual(Array.from(onHost[3].logits!));
    } finally {
      await Promise.all([device.close(), host.close()]);
    }
  });

  it("rejects bad input with a message naming it, and keeps working", async () => {
    const engine = await openFull(dirs.get("4-bit gs64")!, "mlx");
    try {
      await expect(engine.forward([{ seq: 1, position: 3, tokens: Int32Array.of(1) }])).rejects.toThrow(
        /position 3/,
      );
      await expect(
        engine.forward([{ seq: 1, position: 0, tokens: Int32Array.of(1_000_000) }]),
      ).rejects.toThrow(/token 1000000/);
      const [ok] = await engine.forward([
        { seq: 1, position: 0, tokens: Int32Array.from(PROMPT), sampling: {} },
      ]);
      expect(ok.token).toBeGreaterThanOrEqual(0);
      await expect(
        openMlxWith({ STUDIO_MLX_BATCHED_DECODE: "sometimes" }, dirs.get("4-bit gs64")!),
      ).rejects.toThrow(/STUDIO_MLX_BATCHED_DECODE must be on or off \(got "sometimes"\)/);
    } finally {
      await engine.close();
    }
    // A later stage takes bf16 hidden: 2 bytes a value, whole rows of hiddenSize values.
    const later = await openEngine({
      modelDir: dirs.get("4-bit gs64")!,
      layerStart: 3,
      layerEnd: LAYERS,
      embed: false,
      head: true,
      backend: "mlx",
    });
    try {
      await expect(later.forward([{ seq: 1, position: 0, hidden: new Uint8Array(3) }])).rejects.toThrow(
        /hidden byte length 3 is not a multiple of 2 \(bf16\)/,
      );
      await expect(
        later.forward([{ seq: 1, position: 0, hidden: new Uint8Array(HIDDEN * 2 + 2) }]),
      ).rejects.toThrow(/hidden holds 129 floats, not a multiple of hidden_size 128/);
      const [ok] = await later.forward([
        { seq: 1, position: 0, hidden: new Uint8Array(HIDDEN * 2), sampling: {} },
      ]);
      expect(ok.token).toBeGreaterThanOrEqual(0);
    } finally {
      await later.close();
    }
  });

  it('backend "auto" picks mlx exactly when MLX computes on a GPU, the cpu backend otherwise', async () => {
    const engine = await openEngine({
      modelDir: dirs.get("4-bit gs64")!,
      layerStart: 0,
      layerEnd: LAYERS,
      embed: true,
      head: true,
      backend: "auto",
    });
    try {
      expect(engine.stats().backend).toBe(mlxInfo()?.device === "gpu" ? "mlx" : "cpu");
    } finally {
      await engine.close();
    }
  });
});
