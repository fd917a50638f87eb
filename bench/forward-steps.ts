// A fixed amount of engine work for instruction counts: one engine thread runs a prefill of --prompt tokens
// and --steps decode steps on the whole model, and prints its wall time and the last token. Under callgrind
// its instruction count does not depend on the machine's load, so two builds compare exactly:
//   valgrind --tool=callgrind --collect-atstart=no --toggle-collect='studio::model::MinimaxM2Shard::forward*' \
//     node dist/bench/forward-steps.js --model .cache/models/tiny-4bit
// With --chunk N the prompt is fed in chunks of N tokens as the scheduler does, and --threads sets the engine's
// threads: `perf record` of a prefill as served (e.g. --prompt 512 --chunk 256 --threads 2 --steps 0);
// --matmul-inputs int8 runs the int8 precision mode.
import { parseArgs } from "node:util";
import { isMatmulInputs } from "../common/engine-api.js";
import { readModelConfig } from "../common/model-config.js";
import { openEngine } from "../native/index.js";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: ".cache/models/tiny-4bit" },
    prompt: { type: "string", default: "64" },
    steps: { type: "string", default: "16" },
    chunk: { type: "string", default: "0" },
    threads: { type: "string", default: "1" },
    "matmul-inputs": { type: "string", default: "default" },
  },
});
const matmulInputs = values["matmul-inputs"];
if (!isMatmulInputs(matmulInputs))
  throw new Error(`forward-steps: --matmul-inputs is default or int8 (got "${matmulInputs}")`);
const modelDir = values.model;
const promptTokens = Number(values.prompt);
const steps = Number(values.steps);
const chunk = Number(values.chunk) || promptTokens;
const engine = await openEngine({
  modelDir,
  layerStart: 0,
  layerEnd: readModelConfig(modelDir).numLayers,
  embed: true,
  head: true,
  threads: Number(values.threads),
  matmulInputs,
});
const prompt = Int32Array.from({ length: promptTokens }, (_, i) => 3 + ((i * 37) % 900));
const started = performance.now();
let [out] = await engine.forward([{ seq: 1, position: 0, tokens: prompt.subarray(0, chunk), sampling: {} }]);
for (let start = chunk; start < promptTokens; start += chunk)
  [out] = await engine.forward([
    { seq: 1, position: start, tokens: prompt.subarray(start, start + chunk), sampling: {} },
  ]);
const prefilled = performance.now();
for (let i = 0; i < steps; i++)
  [out] = await engine.forward([
    { seq: 1, position: promptTokens + i, tokens: Int32Array.of(out.token ?? 0), sampling: {} },
  ]);
const done = performance.now();
await engine.close();
console.log(
  JSON.stringify({
    bench: "forward-steps",
    prefill_ms: Number((prefilled - started).toFixed(1)),
    decode_ms_per_token: Number(((done - prefilled) / Math.max(1, steps)).toFixed(2)),
    last_token: out.token,
  }),
);
