// `cluster bench`: measures a serving cluster through its API (cli/cluster-bench/) and prints the table and one
// JSON line, the figures bench/RESULTS.md reports, so a real multi-Mac run compares with them.
import { type Command, InvalidArgumentError } from "commander";
import { errorMessage } from "../../common/errors.js";
import { runClusterBench } from "../cluster-bench/measure.js";
import { benchJson, renderBench } from "../cluster-bench/report.js";
import { positiveInt } from "../options.js";

function sizes(value: string): number[] {
  const list = value.split(",").map((s) => Number(s.trim()));
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n <= 0))
    throw new InvalidArgumentError(
      `--prompts must be positive integers separated by commas (got "${value}")`,
    );
  return list;
}

interface BenchCliOptions {
  api: string;
  apiKey?: string;
  tokens: number;
  prompts: number[];
  agent: number;
  runs: number;
}

export function register(program: Command): void {
  program
    .command("bench")
    .description(
      "measure a serving cluster: decode tokens/s (1 and 4 streams), TTFT and prefill, a warm agent turn, hops",
    )
    .option("--api <url>", "any node's HTTP address", "http://127.0.0.1:8080")
    .option("--api-key <key>", "the API key the cluster was started with")
    .option("--tokens <n>", "tokens generated per decode run", positiveInt("--tokens"), 128)
    .option("--prompts <sizes>", "prompt sizes for prefill, comma-separated", sizes, [1024, 8192, 32768])
    .option("--agent <tokens>", "prompt size of the agent turn", positiveInt("--agent"), 8192)
    .option("--runs <n>", "runs per figure (medians are reported)", positiveInt("--runs"), 3)
    .action(async (opts: BenchCliOptions) => {
      try {
        await bench(opts);
      } catch (err) {
        process.stderr.write(`cluster bench: ${errorMessage(err)}\n`);
        process.exitCode = 1;
      }
    });
}

async function bench(opts: BenchCliOptions): Promise<void> {
  const result = await runClusterBench({
    api: opts.api,
    apiKey: opts.apiKey,
    decodeTokens: opts.tokens,
    promptSizes: opts.prompts,
    agentTokens: opts.agent,
    runs: opts.runs,
    log: (line) => process.stderr.write(`cluster bench: ${line}\n`),
  });
  process.stdout.write(`${renderBench(result)}${benchJson(result)}\n`);
}
