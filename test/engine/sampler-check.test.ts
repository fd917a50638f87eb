// The engine's sampler on its own (native/test/sampler_check.cpp, compiled here with the engine's flags): the
// top_p nucleus it selects without sorting the vocabulary is exactly the set a full sort keeps, at vocabulary
// sizes up to MiniMax's 200,064 with ties, every temperature/top_p/top_k mix; top_k draws are the full sort's
// very tokens; and over 200,000 seeds each nucleus token is drawn at its renormalised probability.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { packageRoot } from "../../common/paths.js";
import { hasCommand } from "../helpers/engine-arm64-build.js";
import { runCommand } from "../helpers/run-command.js";

const compiler = ["c++", "g++", "clang++"].find(hasCommand);
const dir = mkdtempSync(join(tmpdir(), "sampler-check-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("sampler", () => {
  it("selects the top_p nucleus a full sort keeps and draws by its probabilities", async () => {
    if (!compiler) {
      console.warn("skipping the sampler check: no C++ compiler (c++, g++ or clang++) on PATH");
      return;
    }
    const root = packageRoot();
    const binary = join(dir, "sampler_check");
    const sources = ["native/test/sampler_check.cpp", "native/src/model/sampler.cpp"].map((f) =>
      join(root, f),
    );
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
        ...sources,
        "-o",
        binary,
      ],
      { timeoutMs: 300_000 },
    );
    expect(build.code, build.stderr).toBe(0);
    const run = await runCommand(binary, [], { timeoutMs: 300_000 });
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    expect(run.stdout).toMatch(/sampler_check: cases=\d+ mismatches=0/);
    expect(run.stdout).toMatch(/frequencies: \d+ tokens in the nucleus/);
  }, 600_000);
});
