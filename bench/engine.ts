// The cpu engine's speed on one or more generated checkpoints: prefill, time to first token and decode.
//
// Per preset (BENCH_PRESETS, default "bench"; "bench,m2-shapes" adds MiniMax-M2.1's real shapes in 2 layers):
// - prefill tokens/s of a fresh prompt of 512 and 2,048 tokens (--prefill), fed in chunks of --chunk tokens as
//   the scheduler does (256 by default), median of --prefill-runs runs; after the --context-sized prompt, decode;
// - time to first token of an 8k prompt (one run, opt-in: BENCH_TTFT=8192, it takes minutes);
// - decode of one sequence against this machine's memory bandwidth: decode reads every active weight once per
//   token, so tokens/s x weight bytes per token / copy bandwidth says how close the kernels get to the memory
//   limit (each run measures the copy bandwidth right before its decode, so a ratio compares figures taken
//   under the same load; this matters on a shared machine);
// - each figure also per layer, so presets with different layer counts compare (and a full model's figure is
//   about the per-layer rate / its layer count): prefill per layer = tokens/s x layers (the lm_head runs on one
//   row per chunk: chunks x the head's cost per token, a small share); decode per layer comes from a second
//   engine without the head (embedding + layers), its runs paired with the full model's, which also gives the
//   head's cost per token;
// - cpu time per token (all threads) next to wall time: on a shared machine wall time includes waiting for a
//   core, cpu time is what the kernels cost;
// - each decoded token's time, as p10 / median / p90 over the counted runs: a shared host slows streaks of
//   tokens, and the p10 time's tokens/s is the steadier figure to compare across sittings.
// Prints readable lines, then ONE JSON line of figures (medians over the runs): the first preset's figures at
// the top level (the keys older runs had) and every preset's under "presets".
//
// --matmul-inputs int8 runs the cpu backend's fast precision mode (native/README.md, "Precision modes");
// --kv-dtype f16 caches keys and values as f16 (native/README.md, "The KV cache's element type").
//
//   npm run bench:engine [-- --threads 2 --tokens 32 --runs 5 --prefill 512,2048 --prefill-runs 3 --chunk 256
//                         --context 2048 --model DIR --matmul-inputs default|int8 --kv-dtype f32|f16]
//   BENCH_PRESETS=bench,m2-shapes BENCH_TTFT=8192 npm run bench:engine
import { existsSync } from "node:fs";
import { loadavg } from "node:os";
import { basename, join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../cli/make-model/index.js";
import { isPresetName, type PresetName } from "../cli/make-model/presets.js";
import { isKvDtype, isMatmulInputs, type KvDtype, type MatmulInputs } from "../common/engine-api.js";
import { type ModelConfig, readModelConfig } from "../common/model-config.js";
import { packageRoot } from "../common/paths.js";
import type { StudioEngine } from "../native/index.js";
import { cpuInfo, describeCpuKernels, measureMemoryBandwidth, openEngine } from "../native/index.js";
import { median, quantile, round } from "./stats.js";

const PROMPT = Int32Array.from([11, 42, 7, 300, 1200, 5, 64, 900, 17, 2048, 33, 8, 4000, 12, 99, 640]);
// Copy buffers far larger than any cache, so the copy kernel measures memory, not L3.
const BANDWIDTH_BYTES = 256 * 1024 * 1024;
/** Presets this bench can make when their checkpoint is missing. */
const BENCH_PRESETS: readonly PresetName[] = ["bench", "m2-shapes"];

interface Settings {
  threads: number;
  tokens: number;
  runs: number;
  prefillSizes: number[];
  prefillRuns: number;
  chunk: number;
  context: number;
  ttft: number;
  matmulInputs: MatmulInputs;
  kvDtype: KvDtype;
}

interface Target {
  name: string;
  dir: string;
}

interface Run {
  tokensPerSecond: number;
  bytesPerToken: number;
  cpuSecondsPerToken: number;
  bandwidth: number;
  readBandwidth: number;
  fraction: number;
  /** Each decoded token's milliseconds, in order. */
  tokenMs: number[];
}

function positive(flag: string, value: string, allowZero = false): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < (allowZero ? 0 : 1))
    throw new Error(
      `bench:engine: ${flag} must be a ${allowZero ? "non-negative" : "positive"} integer (got "${value}")`,
    );
  return n;
}

function modelDirOf(preset: PresetName): string {
  const name = preset === "bench" ? "bench-4bit" : `${preset}-4bit`;
  return join(packageRoot(), ".cache", "models", name);
}

async function ensureModel(target: Target): Promise<void> {
  if (existsSync(join(target.dir, "model.safetensors.index.json"))) return;
  if (!isPresetName(target.name) || !BENCH_PRESETS.includes(target.name))
    throw new Error(`bench:engine: no checkpoint in ${target.dir}`);
  console.log(`making the ${target.name} model (4-bit, gs64) in ${target.dir} ...`);
  const t0 = performance.now();
  await makeModel({ dir: target.dir, preset: target.name, bits: 4, groupSize: 64 });
  console.log(`  made in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}

/** A deterministic prompt of `length` ids spread over the vocabulary. */
function promptOf(length: number, vocabSize: number): Int32Array {
  return Int32Array.from({ length }, (_, i) => (i * 131 + 7) % vocabSize);
}

/** Feeds `prompt` in chunks on a fresh sequence; returns seconds and the token after it (first stage + head). */
async function prefill(
  engine: StudioEngine,
  seq: number,
  prompt: Int32Array,
  chunk: number,
): Promise<{ seconds: number; cpuSeconds: number; token: number }> {
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  let token = 0;
  for (let start = 0; start < prompt.length; start += chunk) {
    const [out] = await engine.forward([
      { seq, position: start, tokens: prompt.subarray(start, start + chunk) },
    ]);
    token = out.token ?? 0;
  }
  const cpu = process.cpuUsage(cpu0);
  return { seconds: (performance.now() - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6, token };
}

/**
 * Greedy decode of `tokens` tokens from `position` on; with no head, the ids fed are a fixed pattern. Returns
 * tokens/s, and each token's milliseconds when `tokenMs` is given.
 */
async function decode(
  engine: StudioEngine,
  seq: number,
  position: number,
  first: number,
  tokens: number,
  vocabSize: number,
  tokenMs?: number[],
): Promise<number> {
  let token = first;
  const t0 = performance.now();
  let last = t0;
  for (let i = 0; i < tokens; i++) {
    const [out] = await engine.forward([{ seq, position: position + i, tokens: Int32Array.of(token) }]);
    token = out.token ?? (token * 131 + 7) % vocabSize;
    const now = performance.now();
    tokenMs?.push(now - last);
    last = now;
  }
  return tokens / ((last - t0) / 1000);
}

/** Short-prompt decode against the memory bandwidth measured right before it. */
async function decodeRun(engine: StudioEngine, seq: number, s: Settings, vocabSize: number): Promise<Run> {
  const bandwidth = await measureMemoryBandwidth(s.threads, BANDWIDTH_BYTES, "copy");
  const readBandwidth = await measureMemoryBandwidth(s.threads, BANDWIDTH_BYTES, "read");
  const [first] = await engine.forward([{ seq, position: 0, tokens: PROMPT }]);
  const bytesBefore = engine.stats().weightBytesRead;
  const cpu0 = process.cpuUsage();
  const tokenMs: number[] = [];
  const tokensPerSecond = await decode(
    engine,
    seq,
    PROMPT.length,
    first.token!,
    s.tokens,
    vocabSize,
    tokenMs,
  );
  const cpu = process.cpuUsage(cpu0);
  const bytesPerToken = (engine.stats().weightBytesRead - bytesBefore) / s.tokens;
  await engine.release(seq);
  return {
    tokensPerSecond,
    bytesPerToken,
    cpuSecondsPerToken: (cpu.user + cpu.system) / 1e6 / s.tokens,
    bandwidth,
    readBandwidth,
    fraction: (tokensPerSecond * bytesPerToken) / bandwidth,
    tokenMs,
  };
}

type Figures = Record<string, number>;

/** Prefill at each size (median of runs), decode after the --context-sized prompt, and the opt-in TTFT. */
async function prefillFigures(engine: StudioEngine, config: ModelConfig, s: Settings): Promise<Figures> {
  const layers = config.numLayers;
  const figures: Figures = {};
  let seq = 10_000;
  for (const size of s.prefillSizes) {
    const prompt = promptOf(size, config.vocabSize);
    const rates: number[] = [];
    const cpuMs: number[] = [];
    const after: number[] = [];
    for (let run = 0; run < s.prefillRuns; run++) {
      const { seconds, cpuSeconds, token } = await prefill(engine, ++seq, prompt, s.chunk);
      rates.push(size / seconds);
      cpuMs.push((cpuSeconds * 1000) / size);
      if (size === s.context) after.push(await decode(engine, seq, size, token, s.tokens, config.vocabSize));
      await engine.release(seq);
    }
    const tps = median(rates);
    figures[`prefill_${size}_tps`] = round(tps, 2);
    figures[`prefill_${size}_layer_tps`] = round(tps * layers, 1);
    figures[`prefill_${size}_cpu_ms_per_token`] = round(median(cpuMs), 2);
    console.log(
      `  prefill ${size} tokens (chunks of ${s.chunk}): ${tps.toFixed(1)} tokens/s = ${(tps * layers).toFixed(0)} tokens/s per layer ` +
        `(median of ${rates.map((r) => r.toFixed(1)).join(", ")}); ${median(cpuMs).toFixed(1)} ms cpu per token (all threads)`,
    );
    if (after.length > 0) {
      figures.context = size;
      figures.context_prefill_tps = round(tps, 2);
      figures.context_decode_tps = round(median(after), 3);
      console.log(`  decode after the ${size}-token prompt: ${median(after).toFixed(2)} tokens/s`);
    }
  }
  if (s.ttft > 0) {
    const { seconds, cpuSeconds } = await prefill(engine, ++seq, promptOf(s.ttft, config.vocabSize), s.chunk);
    await engine.release(seq);
    figures[`ttft_${s.ttft}_s`] = round(seconds, 2);
    figures[`ttft_${s.ttft}_layer_s`] = round(seconds / layers, 2);
    figures[`ttft_${s.ttft}_cpu_s`] = round(cpuSeconds, 1);
    console.log(
      `  time to first token of a ${s.ttft}-token prompt: ${seconds.toFixed(1)} s = ${(seconds / layers).toFixed(2)} s per layer ` +
        `(${cpuSeconds.toFixed(0)} s of cpu, all threads)`,
    );
  }
  return figures;
}

/** Decode on embedding + layers only (the ids fed are a fixed pattern): tokens/s. */
async function headlessRun(
  engine: StudioEngine,
  seq: number,
  s: Settings,
  vocabSize: number,
): Promise<number> {
  await engine.forward([{ seq, position: 0, tokens: PROMPT }]);
  const tps = await decode(engine, seq, PROMPT.length, 7, s.tokens, vocabSize);
  await engine.release(seq);
  return tps;
}

/**
 * Decode runs of the whole model, each followed by one of the engine without the head: paired runs see about
 * the same load, so a pair's difference is the head's cost per token (on a busy machine, medians of separate
 * series taken minutes apart disagree by more than the head costs).
 */
async function decodeFigures(
  engine: StudioEngine,
  headless: StudioEngine,
  config: ModelConfig,
  s: Settings,
): Promise<Figures> {
  const results: Run[] = [];
  const layerRates: number[] = [];
  const headMs: number[] = [];
  // Run 0 warms the caches and page tables and is not counted.
  for (let run = 0; run <= s.runs; run++) {
    const r = await decodeRun(engine, run + 1, s, config.vocabSize);
    const layersOnly = await headlessRun(headless, run + 1, s, config.vocabSize);
    if (run === 0) continue;
    results.push(r);
    layerRates.push(layersOnly);
    headMs.push(1000 / r.tokensPerSecond - 1000 / layersOnly);
    console.log(
      `  run ${run}: copy ${(r.bandwidth / 1e9).toFixed(2)} GB/s, read ${(r.readBandwidth / 1e9).toFixed(2)} GB/s, decode ${r.tokensPerSecond.toFixed(2)} tokens/s x ` +
        `${(r.bytesPerToken / 1e6).toFixed(1)} MB = ${((r.tokensPerSecond * r.bytesPerToken) / 1e9).toFixed(2)} GB/s ` +
        `(${(r.fraction * 100).toFixed(1)}%), ${(r.cpuSecondsPerToken * 1000).toFixed(1)} ms cpu per token; without the head ${layersOnly.toFixed(2)} tokens/s`,
    );
  }
  const of = (f: (r: Run) => number) => median(results.map(f));
  const tokensPerSecond = of((r) => r.tokensPerSecond);
  const bytesPerToken = of((r) => r.bytesPerToken);
  const cpuPerToken = of((r) => r.cpuSecondsPerToken);
  console.log(
    `  decode: ${tokensPerSecond.toFixed(2)} tokens/s (median of ${s.runs} runs of ${s.tokens} tokens), ` +
      `${(bytesPerToken / 1e6).toFixed(1)} MB of weights per token, copy bandwidth ${(of((r) => r.bandwidth) / 1e9).toFixed(2)} GB/s`,
  );
  // On a shared machine wall time includes waiting for a core; cpu time shows what the kernels themselves cost.
  console.log(
    `  cpu: ${(cpuPerToken * 1000).toFixed(1)} ms per token (all threads) -> ` +
      `${(bytesPerToken / cpuPerToken / 1e9).toFixed(2)} GB of weights per cpu-second; bandwidth fraction ` +
      `${(of((r) => r.fraction) * 100).toFixed(1)}% of copy, ` +
      `${(of((r) => (r.tokensPerSecond * r.bytesPerToken) / r.readBandwidth) * 100).toFixed(1)}% of read-only`,
  );
  // A shared host slows streaks of tokens (bench/RESULTS.md, "decode per token"): the fastest tenth shows what
  // the engine does when nothing else takes the memory or the cores.
  const tokenMs = results.flatMap((r) => r.tokenMs);
  const [p10, p50, p90] = [0.1, 0.5, 0.9].map((q) => quantile(tokenMs, q));
  console.log(
    `  decode per token (${tokenMs.length} tokens of the counted runs): p10 ${p10.toFixed(1)}, median ${p50.toFixed(1)}, ` +
      `p90 ${p90.toFixed(1)} ms; ${(1000 / p10).toFixed(2)} tokens/s at the p10 time`,
  );
  const layersTps = median(layerRates);
  const layerMs = 1000 / layersTps / config.numLayers;
  console.log(
    `  decode without the head (embedding + ${config.numLayers} layers): ${layersTps.toFixed(2)} tokens/s = ` +
      `${layerMs.toFixed(2)} ms per layer per token (${(1000 / layerMs).toFixed(1)} tokens/s per layer); ` +
      `norm + lm_head ${median(headMs).toFixed(2)} ms per token (median of the paired differences)`,
  );
  return {
    tokens_per_s: round(tokensPerSecond, 3),
    bytes_per_token: Math.round(bytesPerToken),
    bandwidth_gbs: round(of((r) => r.bandwidth) / 1e9, 3),
    bandwidth_fraction: round(
      of((r) => r.fraction),
      4,
    ),
    cpu_ms_per_token: round(cpuPerToken * 1000, 2),
    decode_layer_tps: round(layersTps * config.numLayers, 2),
    decode_layer_ms: round(layerMs, 3),
    decode_head_ms: round(median(headMs), 3),
    decode_token_ms_p10: round(p10, 2),
    decode_token_ms_p50: round(p50, 2),
    decode_token_ms_p90: round(p90, 2),
    decode_p10_tps: round(1000 / p10, 2),
  };
}

async function benchTarget(target: Target, s: Settings): Promise<Figures> {
  await ensureModel(target);
  const config = readModelConfig(target.dir);
  const started = performance.now();
  const open = (head: boolean) =>
    openEngine({
      modelDir: target.dir,
      layerStart: 0,
      layerEnd: config.numLayers,
      embed: true,
      head,
      threads: s.threads,
      matmulInputs: s.matmulInputs,
      kvDtype: s.kvDtype,
    });
  const engine = await open(true);
  const headless = await open(false).catch(async (err: unknown) => {
    await engine.close();
    throw err;
  });
  console.log(
    `${target.name}: ${target.dir} (${config.numLayers} layers, hidden ${config.hiddenSize}, ${config.numExperts} experts top-${config.expertsPerToken}, ` +
      `vocab ${config.vocabSize}), ${(engine.stats().weightBytes / 1e9).toFixed(2)} GB mapped, loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  let figures: Figures;
  try {
    const decoded = await decodeFigures(engine, headless, config, s);
    const prefilled = await prefillFigures(engine, config, s);
    figures = { layers: config.numLayers, ...decoded, ...prefilled };
  } finally {
    await headless.close();
    await engine.close();
  }
  if (figures.context_decode_tps !== undefined)
    figures.context_decode_ratio = round(figures.context_decode_tps / figures.tokens_per_s, 3);
  return figures;
}

function kvDtypeOf(value: string): KvDtype {
  if (!isKvDtype(value)) throw new Error(`bench:engine: --kv-dtype is f32 or f16 (got "${value}")`);
  return value;
}

function matmulInputsOf(value: string): MatmulInputs {
  if (!isMatmulInputs(value))
    throw new Error(`bench:engine: --matmul-inputs is default or int8 (got "${value}")`);
  return value;
}

function settingsOf(values: Record<string, string | undefined>): Settings {
  const prefillSizes = (values.prefill ?? "").split(",").map((v) => positive("--prefill", v.trim()));
  return {
    threads: positive("--threads", values.threads!),
    tokens: positive("--tokens", values.tokens!),
    runs: positive("--runs", values.runs!),
    prefillSizes,
    prefillRuns: positive("--prefill-runs", values["prefill-runs"]!),
    chunk: positive("--chunk", values.chunk!),
    context: positive("--context", values.context!, true),
    ttft: positive("BENCH_TTFT", process.env.BENCH_TTFT ?? "0", true),
    matmulInputs: matmulInputsOf(values["matmul-inputs"]!),
    kvDtype: kvDtypeOf(values["kv-dtype"]!),
  };
}

function targetsOf(model: string | undefined): Target[] {
  if (model) return [{ name: basename(model), dir: model }];
  const names = (process.env.BENCH_PRESETS ?? "bench").split(",").map((n) => n.trim());
  return names.map((name) => {
    if (!isPresetName(name) || !BENCH_PRESETS.includes(name))
      throw new Error(`bench:engine: BENCH_PRESETS names ${BENCH_PRESETS.join(" and ")} (got "${name}")`);
    return { name, dir: modelDirOf(name) };
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      threads: { type: "string", default: "2" },
      tokens: { type: "string", default: "32" },
      runs: { type: "string", default: "5" },
      prefill: { type: "string", default: "512,2048" },
      "prefill-runs": { type: "string", default: "3" },
      chunk: { type: "string", default: "256" },
      context: { type: "string", default: "2048" },
      model: { type: "string" },
      "matmul-inputs": { type: "string", default: "default" },
      "kv-dtype": { type: "string", default: "f32" },
    },
  });
  const s = settingsOf(values);
  if (s.context > 0 && !s.prefillSizes.includes(s.context)) s.prefillSizes.push(s.context);
  const targets = targetsOf(values.model);
  const presets: Record<string, Figures> = {};
  // The machine may be shared: the load before and after says how much the figures were disturbed.
  const loadBefore = loadavg()[0];
  // Figures from hosts with other SIMD paths do not compare (bench/RESULTS.md: AVX2 against AVX-512).
  const cpu = cpuInfo();
  console.log(
    `cpu kernels: ${describeCpuKernels(cpu)}; matmul inputs: ${s.matmulInputs}; kv cache: ${s.kvDtype}`,
  );
  for (const target of targets) presets[target.name] = await benchTarget(target, s);
  const loadAfter = loadavg()[0];
  console.log(`load average (1 min): ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after`);
  console.log(
    JSON.stringify({
      bench: "engine",
      threads: s.threads,
      simd: cpu.simd,
      int16: cpu.int16,
      matmul_inputs: s.matmulInputs,
      kv_dtype: s.kvDtype,
      chunk_tokens: s.chunk,
      load_before: round(loadBefore, 2),
      load_after: round(loadAfter, 2),
      ...presets[targets[0].name],
      presets,
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(1);
});
