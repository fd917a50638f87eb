// The sampler at MiniMax's 200,064 ids: greedy, top_p by the nucleus selection the engine uses, top_k + top_p,
// and top_p by a full sort of the vocabulary (how it sampled before), on a model-like (Zipf) and a flat
// distribution. Compiles native/test/sampler_check.cpp with the engine's flags, checks the sampler first (it
// exits non-zero on any mismatch), then prints the table and one JSON line.
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../common/paths.js";

const root = packageRoot();
const out = join(root, ".cache", "bench", "sampler_check");
mkdirSync(join(root, ".cache", "bench"), { recursive: true });
const flags = ["-std=c++20", "-O3", "-ffp-contract=off", "-march=native"];
const sources = ["native/test/sampler_check.cpp", "native/src/model/sampler.cpp"].map((f) => join(root, f));
execFileSync("c++", [...flags, `-I${join(root, "native", "src")}`, ...sources, "-o", out], {
  stdio: "inherit",
});
process.stdout.write(execFileSync(out, ["--bench"], { encoding: "utf8" }));
