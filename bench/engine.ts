// Decode speed of the cpu engine against this machine's memory bandwidth. Decode of one sequence reads every
// active weight once per token, so tokens/s x weight bytes per token / copy bandwidth says how close the kernels
// get to the memory limit. Each run measures the copy bandwidth right before its decode, so a run's ratio
// compares figures taken under the same load (this matters on a shared machine). Then the same decode after a
// long prompt (--context tokens, prefilled in 256-token chunks): at long contexts attention reads the KV cache,
// which grows with every token, so decode slows down; its rate over the short-context rate says by how much.
// Prints readable lines, then ONE JSON line of figures (medians over the runs).
//
//   npm run bench:engine [-- --threads 2 --tokens 32 --runs 5 --context 2048 --model DIR]
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../cli/make-model/index.js";
import { readModelConfig } from "../common/model-config.js";
import { packageRoot } from "../common/paths.js";
import type { StudioEngine } from "../native/index.js";
import { measureMemoryBandwidth, openEngine } from "../native/index.js";
import { median } from "./stats.js";

const PROMPT = Int32Array.from([11, 42, 7, 300, 1200, 5, 64, 900, 17, 2048, 33, 8, 4000, 12, 99, 640]);
// Copy buffers far larger than any cache, so the copy kernel measures memory, not L3.
const BANDWIDTH_BYTES = 256 * 1024 * 1024;

interface Run {
  tokensPerSecond: number;
  bytesPerToken: number;
  cpuSecondsPerToken: number;
  bandwidth: number;
  readBandwidth: number;
  fraction: number;
}

async function ensureBenchModel(dir: string): Promise<void> {
  if (existsSync(join(dir, "model.safetensors.index.json"))) return;
  console.log(`making the bench model (4-bit, gs64) in ${dir} ...`);
  await makeModel({ dir, preset: "bench", bits: 4, groupSize: 64 });
}

/** Greedy decode of `tokens` tokens after the prompt on a fresh sequence. */
async function decodeRun(engine: StudioEngine, seq: number, tokens: number, threads: number): Promise<Run> {
  const bandwidth = await measureMemoryBandwidth(threads, BANDWIDTH_BYTES, "copy");
  const readBandwidth = await measureMemoryBandwidth(threads, BANDWIDTH_BYTES, "read");
  const [first] = await engine.forward([{ seq, position: 0, tokens: PROMPT }]);
  let token = first.token!;
  const bytesBefore = engine.stats().weightBytesRead;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < tokens; i++) {
    const [out] = await engine.forward([{ seq, position: PROMPT.length + i, tokens: Int32Array.of(token) }]);
    token = out.token!;
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const bytesPerToken = (engine.stats().weightBytesRead - bytesBefore) / tokens;
  await engine.release(seq);
  const tokensPerSecond = tokens / seconds;
  return {
    tokensPerSecond,
    bytesPerToken,
    cpuSecondsPerToken: (cpu.user + cpu.system) / 1e6 / tokens,
    bandwidth,
    readBandwidth,
    fraction: (tokensPerSecond * bytesPerToken) / bandwidth,
  };
}

interface LongContext {
  prefillTokensPerSecond: number;
  tokensPerSecond: number;
}

/** Prefills `context` tokens in chunks of 256, then decodes `tokens` tokens after them. */
async function longContextRun(
  engine: StudioEngine,
  seq: number,
  context: number,
  tokens: number,
  vocabSize: number,
): Promise<LongContext> {
  const prompt = Int32Array.from({ length: context }, (_, i) => (i * 131 + 7) % vocabSize);
  const p0 = performance.now();
  let token = 0;
  for (let start = 0; start < context; start += 256) {
    const [out] = await engine.forward([
      { seq, position: start, tokens: prompt.subarray(start, start + 256) },
    ]);
    token = out.token!;
  }
  const prefillSeconds = (performance.now() - p0) / 1000;
  const t0 = performance.now();
  for (let i = 0; i < tokens; i++) {
    const [out] = await engine.forward([{ seq, position: context + i, tokens: Int32Array.of(token) }]);
    token = out.token!;
  }
  const seconds = (performance.now() - t0) / 1000;
  await engine.release(seq);
  return { prefillTokensPerSecond: context / prefillSeconds, tokensPerSecond: tokens / seconds };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      threads: { type: "string", default: "2" },
      tokens: { type: "string", default: "32" },
      runs: { type: "string", default: "5" },
      context: { type: "string", default: "2048" },
      model: { type: "string" },
    },
  });
  const threads = Number(values.threads);
  const tokens = Number(values.tokens);
  const runs = Number(values.runs);
  const context = Number(values.context);
  const dir = values.model ?? join(packageRoot(), ".cache", "models", "bench-4bit");
  await ensureBenchModel(dir);
  const config = readModelConfig(dir);

  const started = performance.now();
  const engine = await openEngine({
    modelDir: dir,
    layerStart: 0,
    layerEnd: config.numLayers,
    embed: true,
    head: true,
    threads,
  });
  console.log(
    `model: ${dir} (${config.numLayers} layers, hidden ${config.hiddenSize}, ${config.numExperts} experts top-${config.expertsPerToken}), ` +
      `${(engine.stats().weightBytes / 1e9).toFixed(2)} GB mapped, loaded in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );

  const results: Run[] = [];
  let long: LongContext | undefined;
  try {
    // Prefill throughput, for the record (the JSON figures are about decode).
    const chunk = Int32Array.from({ length: 256 }, (_, i) => (i * 131 + 7) % config.vocabSize);
    const p0 = performance.now();
    await engine.forward([{ seq: 1_000, position: 0, tokens: chunk }]);
    const prefillSeconds = (performance.now() - p0) / 1000;
    await engine.release(1_000);
    console.log(
      `prefill: ${chunk.length} tokens in ${prefillSeconds.toFixed(2)} s = ${(chunk.length / prefillSeconds).toFixed(1)} tokens/s`,
    );
    // Run 0 warms the caches and page tables and is not counted.
    for (let run = 0; run <= runs; run++) {
      const r = await decodeRun(engine, run + 1, tokens, threads);
      if (run === 0) continue;
      results.push(r);
      console.log(
        `run ${run}: copy ${(r.bandwidth / 1e9).toFixed(2)} GB/s, read ${(r.readBandwidth / 1e9).toFixed(2)} GB/s, decode ${r.tokensPerSecond.toFixed(2)} tokens/s x ` +
          `${(r.bytesPerToken / 1e6).toFixed(1)} MB = ${((r.tokensPerSecond * r.bytesPerToken) / 1e9).toFixed(2)} GB/s ` +
          `(${(r.fraction * 100).toFixed(1)}%), ${(r.cpuSecondsPerToken * 1000).toFixed(1)} ms cpu per token`,
      );
    }
    if (context > 0) {
      long = await longContextRun(engine, 2_000, context, tokens, config.vocabSize);
      console.log(
        `after a ${context}-token prompt (prefilled at ${long.prefillTokensPerSecond.toFixed(1)} tokens/s): decode ${long.tokensPerSecond.toFixed(2)} tokens/s`,
      );
    }
  } finally {
    await engine.close();
  }

  const tokensPerSecond = median(results.map((r) => r.tokensPerSecond));
  const bytesPerToken = median(results.map((r) => r.bytesPerToken));
  const bandwidth = median(results.map((r) => r.bandwidth));
  const fraction = median(results.map((r) => r.fraction));
  const cpuPerToken = median(results.map((r) => r.cpuSecondsPerToken));
  console.log(`memory bandwidth (copy, ${threads} threads): ${(bandwidth / 1e9).toFixed(2)} GB/s (median)`);
  console.log(
    `decode: ${tokensPerSecond.toFixed(2)} tokens/s (median of ${runs} runs of ${tokens} tokens, ${threads} threads), ` +
      `${(bytesPerToken / 1e6).toFixed(1)} MB of weights per token`,
  );
  // On a shared machine wall time includes waiting for a core; cpu time shows what the kernels themselves cost.
  console.log(
    `cpu: ${(cpuPerToken * 1000).toFixed(1)} ms per token (all threads) -> ` +
      `${(bytesPerToken / cpuPerToken / 1e9).toFixed(2)} GB of weights per cpu-second`,
  );
  const readFraction = median(results.map((r) => (r.tokensPerSecond * r.bytesPerToken) / r.readBandwidth));
  console.log(
    `bandwidth fraction: ${(fraction * 100).toFixed(1)}% of the copy bandwidth (read + written bytes), ` +
      `${(readFraction * 100).toFixed(1)}% of the read-only bandwidth (medians of the per-run ratios)`,
  );
  if (long)
    console.log(
      `decode after ${context} tokens of context: ${long.tokensPerSecond.toFixed(2)} tokens/s = ${(long.tokensPerSecond / tokensPerSecond).toFixed(2)} of the short-context rate`,
    );
  console.log(
    JSON.stringify({
      bench: "engine",
      tokens_per_s: Number(tokensPerSecond.toFixed(3)),
      bytes_per_token: Math.round(bytesPerToken),
      bandwidth_gbs: Number((bandwidth / 1e9).toFixed(3)),
      bandwidth_fraction: Number(fraction.toFixed(4)),
      threads,
      ...(long && {
        context,
        context_prefill_tps: Number(long.prefillTokensPerSecond.toFixed(2)),
        context_decode_tps: Number(long.tokensPerSecond.toFixed(3)),
        context_decode_ratio: Number((long.tokensPerSecond / tokensPerSecond).toFixed(3)),
      }),
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(1);
});
