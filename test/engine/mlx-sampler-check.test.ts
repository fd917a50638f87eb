// Sampling on the MLX device (native/test/mlx_sampler_check.cpp, compiled against the MLX the addon loads)
// against the host sampler on the same logits and seeded draws, ~12,000 cases up to 200,064 ids with ties:
// greedy and top_logprobs ids always the host's, log-probabilities within 1e-4, drawn tokens the host's except
// draws measured within 1e-3 of the probability mass from a boundary (f32 sums on the device, double on the
// host), and those few. Skips, saying why, where the addon has no MLX or no C++ compiler is found.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { packageRoot } from "../../common/paths.js";
import { availableBackends, mlxInfo } from "../../native/index.js";
import { hasCommand } from "../helpers/engine-arm64-build.js";
import { runCommand } from "../helpers/run-command.js";

const addonPath = join(packageRoot(), "native", "build", "Release", "studio_engine.node");
const compiler = ["c++", "g++", "clang++"].find(hasCommand);

/** MLX's include and library folders, from the library the addon loaded. */
function mlxFolders(): { include: string; lib: string } | string {
  if (!existsSync(addonPath)) return `the studio_engine addon is not built (${addonPath})`;
  if (!availableBackends().includes("mlx")) return "studio_engine was built without MLX";
  const library = mlxInfo()?.libraryPath;
  if (!library) return "the loader does not say where libmlx was loaded from";
  const lib = dirname(library);
  const include = join(lib, "..", "include");
  if (!existsSync(join(include, "mlx", "mlx.h"))) return `no MLX headers beside ${library} (${include})`;
  return { include, lib };
}

const dir = mkdtempSync(join(tmpdir(), "mlx-sampler-check-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("mlx device sampler", () => {
  it("picks the host sampler's tokens on the same logits and draws, except at measured float ties", async () => {
    const mlx = mlxFolders();
    if (typeof mlx === "string" || !compiler) {
      console.warn(
        `skipping the mlx sampler check: ${typeof mlx === "string" ? mlx : "no C++ compiler on PATH"}`,
      );
      return;
    }
    const root = packageRoot();
    const binary = join(dir, "mlx_sampler_check");
    const sources = [
      "native/test/mlx_sampler_check.cpp",
      "native/src/backend/mlx/mlx_sampler.cpp",
      "native/src/model/sampler.cpp",
    ].map((f) => join(root, f));
    const build = await runCommand(
      compiler,
      [
        "-std=c++20",
        "-O2",
        "-ffp-contract=off",
        "-Wall",
        "-Wextra",
        "-Werror",
        `-I${join(root, "native", "src")}`,
        "-isystem",
        mlx.include,
        ...sources,
        `-L${mlx.lib}`,
        "-lmlx",
        `-Wl,-rpath,${mlx.lib}`,
        "-o",
        binary,
      ],
      { timeoutMs: 300_000 },
    );
    expect(build.code, build.stderr).toBe(0);
    const run = await runCommand(binary, [], { timeoutMs: 300_000 });
    console.log(run.stdout.trim());
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const tally = /mlx_sampler_check: cases=(\d+) exact=(\d+) ties=(\d+) mismatches=0/.exec(run.stdout);
    expect(tally, run.stdout).not.toBeNull();
    const [cases, exact] = [Number(tally![1]), Number(tally![2])];
    expect(cases).toBeGreaterThan(10_000);
    // Ties are rare: at most 1 case in 200 may land on another token than the host's.
    expect(exact / cases).toBeGreaterThan(0.995);
  }, 600_000);
});
