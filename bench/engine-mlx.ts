// Decode tokens/s of the mlx backend beside the cpu backend, on the same machine, the same bench-preset model
// and the same prompt. On a Mac the mlx figure is the Metal GPU; on Linux it is MLX's cpu device (a
// correctness build, not a fast path). Prints readable lines, then ONE JSON line of figures.
//
//   npm run bench:engine-mlx [-- --tokens 32 --runs 3 --threads 2 --model DIR]
//
// --sampling-modes ROUNDS: instead, the mlx backend alone in its three decode modes, alternated ROUNDS times:
// host (logits downloaded, the host samples: before issue 18 item 2, and still the default on MLX's cpu device),
// device (sampled on the device, each step built after the last returned: STUDIO_DECODE_AHEAD=off) and ahead
// (the default on a GPU: the next step built before this one's token is read). --temperature / --top-p sample
// instead of greedy.
//
// --batched-decode STREAMS: instead, STREAMS sequences decoding side by side (one row each per call, after
// prompts of --context tokens), with their decode rows sharing one attention kernel per layer (the default) and
// each running its own (STUDIO_MLX_BATCHED_DECODE=off), alternated --rounds times; the attention kernels each
// call launched are printed too.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../cli/make-model/index.js";
import type { BackendName, SamplingParams } from "../common/engine-api.js";
import { readModelConfig } from "../common/model-config.js";
import { packageRoot } from "../common/paths.js";
import { availableBackends, mlxInfo, openEngine } from "../native/index.js";
import { median } from "./stats.js";

const PROMPT = Int32Array.from([11, 42, 7, 300, 1200, 5, 64, 900, 17, 2048, 33, 8, 4000, 12, 99, 640]);

interface Figures {
  tokensPerSecond: number;
  runs: number[];
  loadSeconds: number;
}

async function ensureBenchModel(dir: string): Promise<void> {
  if (existsSync(join(dir, "model.safetensors.index.json"))) return;
  console.log(`making the bench model (4-bit) in ${dir} ...`);
  await makeModel({ dir, preset: "bench", bits: 4, groupSize: 64 });
}

/** An engine holding every layer of the model, with its embedding and head. */
function openWholeModel(dir: string, backend: BackendName, threads: number) {
  return openEngine({
    modelDir: dir,
    layerStart: 0,
    layerEnd: readModelConfig(dir).numLayers,
    embed: true,
    head: true,
    backend,
    threads,
  });
}

/** Greedy decode of `tokens` tokens after the prompt, `runs` times on fresh sequences; tokens/s per run. */
async function measure(
  dir: string,
  backend: BackendName,
  tokens: number,
  runs: number,
  threads: number,
  sampling: SamplingParams = {},
) {
  const started = performance.now();
  const engine = await openWholeModel(dir, backend, threads);
  const loadSeconds = (performance.now() - started) / 1000;
  try {
    if (engine.stats().backend !== backend)
      throw new Error(`asked for ${backend}, engine runs ${engine.stats().backend}`);
    const perRun: number[] = [];
    // Run 0 warms caches and lazy initialisation (MLX builds its kernels on first use) and is not counted.
    for (let run = 0; run <= runs; run++) {
      const seq = run + 1;
      const [first] = await engine.forward([{ seq, position: 0, tokens: PROMPT, sampling }]);
      let token = first.token!;
      const t0 = performance.now();
      for (let i = 0; i < tokens; i++) {
        const [out] = await engine.forward([
          { seq, position: PROMPT.length + i, tokens: Int32Array.of(token), sampling },
        ]);
        token = out.token!;
      }
      const seconds = (performance.now() - t0) / 1000;
      await engine.release(seq);
      if (run > 0) perRun.push(tokens / seconds);
    }
    return { tokensPerSecond: median(perRun), runs: perRun, loadSeconds } satisfies Figures;
  } finally {
    await engine.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      tokens: { type: "string", default: "32" },
      runs: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      model: { type: "string", default: join(packageRoot(), ".cache", "models", "bench-4bit") },
      "sampling-modes": { type: "string" },
      "batched-decode": { type: "string" },
      context: { type: "string", default: "512" },
      rounds: { type: "string", default: "2" },
      temperature: { type: "string", default: "0" },
      "top-p": { type: "string", default: "1" },
    },
  });
  const tokens = Number(values.tokens);
  const runs = Number(values.runs);
  const threads = Number(values.threads);
  if (!availableBackends().includes("mlx")) {
    console.error(
      "bench engine-mlx: this studio_engine was built without MLX (see README: Apple silicon set-up)",
    );
    process.exit(2);
  }
  const info = mlxInfo()!;
  const dir = values.model;
  await ensureBenchModel(dir);
  if (values["batched-decode"] !== undefined) {
    const streams = Number(values["batched-decode"]);
    const context = Number(values.context);
    for (const [name, n] of [
      ["--batched-decode", streams],
      ["--context", context],
      ["--rounds", Number(values.rounds)],
    ] as const)
      if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer (got ${n})`);
    console.log(
      `model ${dir}; ${streams} streams decoding ${tokens} tokens each after prompts of ${context + 1}-${context + streams} tokens; modes alternated ${values.rounds} times`,
    );
    await batchedDecode(dir, streams, context, tokens, Number(values.rounds), info.version);
    return;
  }
  console.log(
    `model ${dir}; decode ${tokens} tokens after a ${PROMPT.length}-token prompt, median of ${runs} runs`,
  );
  if (values["sampling-modes"] !== undefined) {
    const sampling: SamplingParams = {
      temperature: Number(values.temperature),
      topP: Number(values["top-p"]),
      seed: 1,
    };
    await samplingModes(dir, Number(values["sampling-modes"]), tokens, runs, sampling, info.version);
    return;
  }
  const cpu = await measure(dir, "cpu", tokens, runs, threads);
  console.log(
    `cpu backend (${threads} threads):  ${cpu.tokensPerSecond.toFixed(2)} tokens/s  (runs ${cpu.runs.map((r) => r.toFixed(2)).join(", ")})`,
  );
  const mlx = await measure(dir, "mlx", tokens, runs, threads);
  console.log(
    `mlx backend (MLX ${info.version}, ${info.device}): ${mlx.tokensPerSecond.toFixed(2)} tokens/s  (runs ${mlx.runs.map((r) => r.toFixed(2)).join(", ")})`,
  );
  const ratio = mlx.tokensPerSecond / cpu.tokensPerSecond;
  console.log(
    `mlx / cpu: ${ratio.toFixed(2)}x; load: cpu ${cpu.loadSeconds.toFixed(1)} s, mlx ${mlx.loadSeconds.toFixed(1)} s`,
  );
  console.log(
    JSON.stringify({
      bench: "engine-mlx",
      mlx_version: info.version,
      mlx_device: info.device,
      mlx_tokens_per_s: Number(mlx.tokensPerSecond.toFixed(3)),
      cpu_tokens_per_s: Number(cpu.tokensPerSecond.toFixed(3)),
      mlx_over_cpu: Number(ratio.toFixed(3)),
      cpu_threads: threads,
      decode_tokens: tokens,
      runs,
    }),
  );
}

const MODES = {
  host: { STUDIO_MLX_SAMPLING: "host" },
  device: { STUDIO_MLX_SAMPLING: "device", STUDIO_DECODE_AHEAD: "off" },
  ahead: { STUDIO_MLX_SAMPLING: "device" },
} satisfies Record<string, Record<string, string>>;
type Mode = keyof typeof MODES;

/** The mlx backend in each decode mode (environment read when the engine is made), alternated `rounds` times. */
async function samplingModes(
  dir: string,
  rounds: number,
  tokens: number,
  runs: number,
  sampling: SamplingParams,
  version: string,
): Promise<void> {
  const figures: Record<Mode, number[]> = { host: [], device: [], ahead: [] };
  for (let round = 0; round < rounds; round++) {
    for (const mode of Object.keys(MODES) as Mode[]) {
      Object.assign(process.env, MODES[mode]);
      try {
        const f = await measure(dir, "mlx", tokens, runs, 1, sampling);
        figures[mode].push(...f.runs);
        console.log(`round ${round + 1} ${mode}: ${f.runs.map((r) => r.toFixed(3)).join(", ")} tokens/s`);
      } finally {
        for (const key of Object.keys(MODES[mode])) delete process.env[key];
      }
    }
  }
  const medians = Object.fromEntries(
    (Object.keys(figures) as Mode[]).map((m) => [m, median(figures[m])]),
  ) as Record<Mode, number>;
  console.log(
    `medians (tokens/s): host ${medians.host.toFixed(3)}, device ${medians.device.toFixed(3)}, ahead ${medians.ahead.toFixed(3)}; ahead / host ${(medians.ahead / medians.host).toFixed(3)}`,
  );
  console.log(
    JSON.stringify({
      bench: "engine-mlx-sampling",
      mlx_version: version,
      mlx_device: mlxInfo()!.device,
      temperature: sampling.temperature,
      top_p: sampling.topP,
      host_tokens_per_s: Number(medians.host.toFixed(3)),
      device_tokens_per_s: Number(medians.device.toFixed(3)),
      ahead_tokens_per_s: Number(medians.ahead.toFixed(3)),
      ahead_over_host: Number((medians.ahead / medians.host).toFixed(3)),
      decode_tokens: tokens,
      runs,
      rounds,
    }),
  );
}

/** Decode tokens/s of `streams` sequences side by side, and the attention kernels per call. */
async function measureStreams(dir: string, streams: number, context: number, tokens: number) {
  const engine = await openWholeModel(dir, "mlx", 1);
  try {
    const seqs = Array.from({ length: streams }, (_, i) => i + 1);
    // Prompts of slightly different lengths (as real sequences are), within one key class of the slab.
    const vocab = readModelConfig(dir).vocabSize;
    let inputs = seqs.map((seq) => Array.from({ length: context + seq }, (_, i) => (i * 31 + seq) % vocab));
    const positions = seqs.map(() => 0);
    const step = async () => {
      const outs = await engine.forward(
        seqs.map((seq, i) => ({
          seq,
          position: positions[i],
          tokens: Int32Array.from(inputs[i]),
          sampling: {},
        })),
      );
      seqs.forEach((_, i) => {
        positions[i] += inputs[i].length;
      });
      inputs = outs.map((o) => [o.token!]);
    };
    await step();
    await step(); // the first decode step builds the slabs and MLX's kernels for the shape: not counted
    const launches0 = engine.stats().attentionLaunches;
    const t0 = performance.now();
    for (let i = 0; i < tokens; i++) await step();
    const seconds = (performance.now() - t0) / 1000;
    return {
      tokensPerSecond: (streams * tokens) / seconds,
      launchesPerStep: (engine.stats().attentionLaunches - launches0) / tokens,
    };
  } finally {
    await engine.close();
  }
}

/** Batched decode with one attention kernel per layer per key class against one per sequence, alternated. */
async function batchedDecode(
  dir: string,
  streams: number,
  context: number,
  tokens: number,
  rounds: number,
  version: string,
): Promise<void> {
  const modes = { together: "on", apart: "off" } as const;
  const figures = { together: [] as number[], apart: [] as number[] };
  const launches = { together: 0, apart: 0 };
  for (let round = 0; round < rounds; round++) {
    for (const mode of ["together", "apart"] as const) {
      process.env.STUDIO_MLX_BATCHED_DECODE = modes[mode];
      try {
        const f = await measureStreams(dir, streams, context, tokens);
        figures[mode].push(f.tokensPerSecond);
        launches[mode] = f.launchesPerStep;
        console.log(
          `round ${round + 1} ${mode}: ${f.tokensPerSecond.toFixed(3)} tokens/s over ${streams} streams, ${f.launchesPerStep} attention kernels per step`,
        );
      } finally {
        delete process.env.STUDIO_MLX_BATCHED_DECODE;
      }
    }
  }
  const together = median(figures.together);
  const apart = median(figures.apart);
  console.log(
    `medians: together ${together.toFixed(3)}, apart ${apart.toFixed(3)} tokens/s; together / apart ${(together / apart).toFixed(3)}`,
  );
  console.log(
    JSON.stringify({
      bench: "engine-mlx-batched-decode",
      mlx_version: version,
      mlx_device: mlxInfo()!.device,
      streams,
      context,
      together_tokens_per_s: Number(together.toFixed(3)),
      apart_tokens_per_s: Number(apart.toFixed(3)),
      together_over_apart: Number((together / apart).toFixed(3)),
      together_kernels_per_step: launches.together,
      apart_kernels_per_step: launches.apart,
      decode_tokens: tokens,
      rounds,
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
