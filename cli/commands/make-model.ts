// `cluster make-model DIR`: writes a synthetic MiniMax-M2 checkpoint (one of the presets of presets.ts).
import { existsSync, readdirSync } from "node:fs";
import { SingleBar } from "cli-progress";
import type { Command } from "commander";
import { makeModel } from "../make-model/index.js";
import { isPresetName, PRESET_NAMES } from "../make-model/presets.js";
import type { FloatDtype } from "../make-model/weights.js";

interface MakeModelFlags {
  preset: string;
  bits: string;
  groupSize: string;
  dtype: string;
  seed: string;
  layers?: string;
  force?: boolean;
}

function integer(flag: string, value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n))
    throw new Error(`make-model: ${flag} must be a whole number (got "${value}")`);
  return n;
}

async function run(dir: string, flags: MakeModelFlags): Promise<void> {
  if (!isPresetName(flags.preset))
    throw new Error(`make-model: unknown preset "${flags.preset}" (use ${PRESET_NAMES.join(", ")})`);
  if (existsSync(dir) && readdirSync(dir).length > 0 && !flags.force)
    throw new Error(`make-model: ${dir} is not empty (use --force to write into it anyway)`);
  const bar = new SingleBar({
    format: "make-model [{bar}] {percentage}% | {value}/{total} MiB",
    stream: process.stderr,
    hideCursor: true,
  });
  let started = false;
  const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
  await makeModel({
    dir,
    preset: flags.preset,
    bits: integer("--bits", flags.bits),
    groupSize: integer("--group-size", flags.groupSize),
    dtype: flags.dtype as FloatDtype,
    seed: integer("--seed", flags.seed),
    layers: flags.layers === undefined ? undefined : integer("--layers", flags.layers),
    onProgress: (done, total) => {
      if (!started) {
        bar.start(Math.max(1, mib(total)), 0);
        started = true;
      }
      bar.update(mib(done));
    },
  }).finally(() => {
    if (started) bar.stop();
  });
  process.stderr.write(`make-model: wrote the ${flags.preset} checkpoint to ${dir}\n`);
}

export function register(program: Command): void {
  program
    .command("make-model")
    .description("write a synthetic MiniMax-M2 checkpoint (MLX layout, trained tokenizer, chat template)")
    .argument("<dir>", "output directory")
    .option("--preset <name>", PRESET_NAMES.join(" | "), "tiny")
    .option("--bits <n>", "quantization bits: 2, 3, 4, 5, 6, 8, or 0 for unquantized", "4")
    .option("--group-size <n>", "quantization group size: 32, 64 or 128", "64")
    .option("--dtype <type>", "dtype of unquantized tensors: bf16, f16 or f32", "bf16")
    .option("--seed <n>", "random seed (same seed, same checkpoint)", "0")
    .option(
      "--layers <n>",
      "number of transformer layers (default: the preset's; m2-shapes: 2, ~2 GB each at 4 bits)",
    )
    .option("--force", "write into a directory that is not empty")
    .action(async (dir: string, flags: MakeModelFlags) => {
      try {
        await run(dir, flags);
      } catch (err) {
        process.stderr.write(`${(err as Error).message}\n`);
        process.exitCode = 1;
      }
    });
}
