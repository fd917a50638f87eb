// The engine on arm64 (Apple silicon, Linux aarch64) from an x86 machine: every engine source must compile
// for aarch64 (the NEON path of backend/cpu/simd.h and kernels.cpp), with gcc and with clang (Apple clang's
// family), without warnings and link without unresolved engine symbols, and the NEON kernels, run under
// qemu-aarch64, must agree with a double-precision formula for every weight format the engine reads
// (native/test/kernels_check.cpp), with each row's bits independent of batch size and row split (the
// engine's determinism rule), and give the same bits as the portable x86 build (the NEON path is the
// portable path's 8-lane layout as two float32x4, so the arithmetic is the same). The host's own SIMD path
// (AVX-512/AVX2 here) runs the same check natively.
// Needs g++-aarch64-linux-gnu and qemu-user, and clang for the clang half (scripts/install-system-deps.sh
// installs them); says why it skips otherwise. Builds are cached under .cache/engine-arm64/ (first run about
// two minutes on two busy cores, then seconds).
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { packageRoot } from "../../common/paths.js";
import { cpuInfo } from "../../native/index.js";
import {
  Build,
  type CheckSummary,
  engineSources,
  hasCommand,
  nodeHeadersDir,
  ownDiagnostics,
  parseAttentionSummary,
  parseSummary,
} from "../helpers/engine-arm64-build.js";
import { runCommand } from "../helpers/run-command.js";

const CROSS = "aarch64-linux-gnu-g++";
const QEMU = "qemu-aarch64";
const SYSROOT = "/usr/aarch64-linux-gnu";
// Apple clang takes -mcpu=apple-m1 where -march=native may be refused (as in native/binding.gyp).
const HOST_TARGET =
  process.platform === "darwin" && process.arch === "arm64" ? ["-mcpu=apple-m1"] : ["-march=native"];
const BUILD_TIMEOUT = 600_000;
const RUN_TIMEOUT = 120_000;

const hostCompiler = ["c++", "g++", "clang++"].find(hasCommand);
const hostSkip = hostCompiler ? undefined : "no host C++ compiler (c++, g++ or clang++) on PATH";
const crossSkip =
  process.platform !== "linux" || process.arch !== "x64"
    ? `the cross check runs on Linux x86-64 hosts (this is ${process.platform}/${process.arch}; on arm64 the host check is the NEON check)`
    : !hasCommand(CROSS)
      ? `${CROSS} is not installed (apt-get install g++-aarch64-linux-gnu, or scripts/install-system-deps.sh)`
      : !hasCommand(QEMU)
        ? `${QEMU} is not installed (apt-get install qemu-user, or scripts/install-system-deps.sh)`
        : !existsSync(SYSROOT)
          ? `the aarch64 sysroot ${SYSROOT} is missing (apt-get install g++-aarch64-linux-gnu)`
          : undefined;
const portableSkip =
  hostSkip ?? (process.arch !== "x64" ? "the portable build is checked on x86-64 hosts" : undefined);
const headers = nodeHeadersDir();
if (hostSkip) console.warn(`engine-arm64.test: skipping the host kernel check: ${hostSkip}`);
if (crossSkip) console.warn(`engine-arm64.test: skipping the aarch64/NEON checks: ${crossSkip}`);
if (!headers)
  console.warn(
    "engine-arm64.test: no node headers (node_api.h) found: src/addon/ is left out of the aarch64 compile",
  );

interface ArmToolchain {
  build: Build;
  skip: string | undefined;
}

/**
 * The aarch64 compilers: gcc (Linux aarch64 installs) for what a current Arm core offers (M1 and later,
 * Neoverse; the code itself needs only baseline NEON), and clang for Apple silicon (Apple clang's family: its
 * own arm_neon.h and C++ frontend, e.g. clang before 16 cannot capture structured bindings), with the sysroot
 * and libstdc++ of the gcc cross toolchain.
 */
const armToolchains: ArmToolchain[] = [
  { build: new Build("aarch64-gcc", CROSS, ["-march=armv8.2-a+fp16+dotprod"]), skip: crossSkip },
  {
    build: new Build("aarch64-clang", "clang++", [
      "--target=aarch64-linux-gnu",
      "-mcpu=apple-m1",
      "-Wno-unknown-warning-option",
    ]),
    skip:
      crossSkip ??
      (hasCommand("clang++")
        ? undefined
        : "clang++ is not installed (apt-get install clang, or scripts/install-system-deps.sh)"),
  },
];
for (const t of armToolchains)
  if (t.skip && !crossSkip) console.warn(`engine-arm64.test: skipping the ${t.build.name} checks: ${t.skip}`);

const builds = {
  host: hostCompiler ? new Build(`host-${process.arch}`, hostCompiler, HOST_TARGET) : undefined,
  portable: hostCompiler ? new Build("portable-x86-64", hostCompiler, ["-march=x86-64"]) : undefined,
};

/** Runs a built kernel check and returns its summary, asserting it printed one and exited as it says. */
async function runCheck(program: string, runner?: string[]): Promise<CheckSummary> {
  const [cmd, ...args] = runner ? [...runner, program] : [program];
  const result = await runCommand(cmd, args, { timeoutMs: RUN_TIMEOUT });
  const summary = parseSummary(result.stdout);
  expect(summary, `kernels_check printed no summary:\n${result.stdout}\n${result.stderr}`).toBeDefined();
  const s = summary!;
  expect(s.failures, result.stdout).toBe(0);
  expect(result.code, result.stdout).toBe(0);
  // 18 packed formats x 4 scale/bias dtypes, 4- and 8-bit again with f32 inputs, 4-bit again with int8 inputs,
  // and 6 plain matrices.
  expect(s.cases).toBe(114);
  return s;
}

const qemu = [QEMU, "-L", SYSROOT];

/**
 * Runs a built attention check (native/test/attention_check.cpp): blocked online-softmax attention against a
 * double-precision softmax on several head layouts, and the same bits across prefill chunkings, thread counts
 * and shared batches.
 */
async function runAttentionCheck(
  program: string,
  simd: (s: string) => void,
  runner?: string[],
): Promise<void> {
  const [cmd, ...args] = runner ? [...runner, program] : [program];
  const result = await runCommand(cmd, args, { timeoutMs: RUN_TIMEOUT });
  const summary = parseAttentionSummary(result.stdout);
  expect(summary, `attention_check printed no summary:\n${result.stdout}\n${result.stderr}`).toBeDefined();
  expect(summary!.failures, result.stdout).toBe(0);
  expect(result.code, result.stdout).toBe(0);
  expect(summary!.cases).toBeGreaterThan(100);
  simd(summary!.simd);
}

describe.skipIf(hostSkip)("cpu kernels on the host's SIMD path", () => {
  it(
    "match the formula for every weight format, with per-row bits independent of batch size and row split",
    async () => {
      const s = await runCheck(await builds.host!.kernelsCheck());
      if (process.arch === "arm64") expect(s.simd).toBe("neon");
      else expect(s.simd).not.toBe("neon");
      // x86 hosts with AVX2 or AVX-512 take the int16 path for 4- and 8-bit weights (kernels_int16.cpp).
      // and have the int8 precision mode's kernels for 4-bit weights (kernels_int8.cpp).
      if (s.simd === "avx2" || s.simd === "avx512") expect(s.int16 && s.int8).toBe(true);
      // The addon is built for this host the same way (-march=native): it reports the kernels checked here.
      if (!process.env.STUDIO_ENGINE_ADDON)
        expect(cpuInfo()).toEqual({ simd: s.simd, int16: s.int16, int8: s.int8 });
      console.log(
        `host ${process.arch}: ${s.simd} int16=${s.int16} int8=${s.int8} worst error/bound ${s.worst}`,
      );
    },
    BUILD_TIMEOUT,
  );

  it(
    "attention matches a double-precision softmax, with the same bits across chunkings, threads and batches",
    async () => {
      await runAttentionCheck(await builds.host!.attentionCheck(), (simd) => expect(simd).toBeTruthy());
    },
    BUILD_TIMEOUT,
  );
});

describe.skipIf(portableSkip)("cpu kernels on the portable (scalar) path", () => {
  it(
    "match the formula for every weight format",
    async () => {
      const s = await runCheck(await builds.portable!.kernelsCheck());
      expect(s.simd).toBe("portable");
    },
    BUILD_TIMEOUT,
  );

  it(
    "attention matches a double-precision softmax, with the same bits across chunkings, threads and batches",
    async () => {
      await runAttentionCheck(await builds.portable!.attentionCheck(), (simd) =>
        expect(simd).toBe("portable"),
      );
    },
    BUILD_TIMEOUT,
  );
});

for (const { build, skip } of armToolchains) {
  describe.skipIf(skip)(`the engine on aarch64 (NEON) with ${build.name}, run under qemu`, () => {
    it(
      "every engine source compiles without warnings and links without unresolved engine symbols",
      async () => {
        const sources = engineSources().filter((s) => headers || !s.startsWith("src/addon/"));
        expect(sources).toContain("src/backend/cpu/kernels.cpp");
        const compiled = await Promise.all(sources.map((s) => build.compile(s)));
        const failed = compiled.filter((c) => !c.ok).map((c) => c.diagnostics);
        expect(failed, failed.join("\n")).toEqual([]);
        expect(compiled.flatMap((c) => ownDiagnostics(c.diagnostics))).toEqual([]);
        // N-API and libuv come from the node process at load time; anything else unresolved is a missing
        // definition (e.g. a function defined only under an x86 #if).
        const out = join(packageRoot(), ".cache", "engine-arm64", build.name, "studio_engine.node");
        const link = await runCommand(
          build.compiler,
          [
            ...build.targetFlags,
            "-shared",
            "-Wl,-z,defs",
            "-Wl,--warn-unresolved-symbols",
            ...compiled.map((c) => c.object),
            "-o",
            out,
            "-lpthread",
          ],
          { timeoutMs: RUN_TIMEOUT },
        );
        expect(link.code, link.stderr).toBe(0);
        const unresolved = [...link.stderr.matchAll(/undefined reference to `([^']+)'/g)]
          .map((m) => m[1])
          .filter((name) => !/^(napi_|node_api_|uv_)/.test(name));
        expect([...new Set(unresolved)]).toEqual([]);
      },
      BUILD_TIMEOUT,
    );

    it(
      "the NEON kernels match the formula for every weight format, per-row bits independent of batch size",
      async () => {
        const s = await runCheck(await build.kernelsCheck(), qemu);
        expect(s.simd).toBe("neon");
        // Both targets have the dot-product extension, so the int8 mode has its sdot kernels (kernels_int8.cpp).
        expect(s.int8).toBe(true);
        console.log(`${build.name} under qemu: ${s.simd} int8=${s.int8} worst error/bound ${s.worst}`);
      },
      BUILD_TIMEOUT,
    );

    it(
      "NEON attention matches a double-precision softmax, with the same bits across chunkings and threads",
      async () => {
        await runAttentionCheck(await build.attentionCheck(), (simd) => expect(simd).toBe("neon"), qemu);
      },
      BUILD_TIMEOUT,
    );

    it.skipIf(portableSkip)(
      "the NEON kernels give the same bits as the portable x86 build",
      async () => {
        const [neon, portable] = await Promise.all([
          build.kernelsCheck().then((p) => runCheck(p, qemu)),
          builds.portable!.kernelsCheck().then((p) => runCheck(p)),
        ]);
        expect(neon.digest).toBe(portable.digest);
      },
      BUILD_TIMEOUT,
    );
  });
}
