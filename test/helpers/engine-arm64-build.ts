// Compiles native/ sources outside node-gyp, for the host or for aarch64 (cross), with the flags of
// native/binding.gyp, and runs the standalone kernel check (native/test/kernels_check.cpp). Objects are cached
// under .cache/engine-arm64/ by a hash of compiler, flags, the source and every header of native/src, so a
// second run compiles only what changed.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism, homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { packageRoot } from "../../common/paths.js";
import { runCommand } from "./run-command.js";

const root = packageRoot();
const nativeDir = join(root, "native");
const cacheDir = join(root, ".cache", "engine-arm64");

/** The compile flags of native/binding.gyp except the target choice (-march / -mcpu), which a Build names. */
const GYP_FLAGS = [
  "-std=c++20",
  "-O3",
  "-ffp-contract=off",
  "-fexceptions",
  "-fPIC",
  "-Wall",
  "-Wextra",
  "-Wno-unused-parameter",
  "-Wno-maybe-uninitialized",
  "-DNAPI_VERSION=8",
  "-DNAPI_CPP_EXCEPTIONS",
];

export function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** The engine's sources as binding.gyp lists them, without the MLX backend (it builds only against MLX). */
export function engineSources(): string[] {
  const gyp = readFileSync(join(nativeDir, "binding.gyp"), "utf8");
  const sources = [...gyp.matchAll(/"(src\/[^"]+\.cpp)"/g)].map((m) => m[1]);
  return [...new Set(sources)].filter((s) => !s.startsWith("src/backend/mlx/"));
}

/** A folder holding node_api.h for the addon's sources, or undefined when this machine has none. */
export function nodeHeadersDir(): string | undefined {
  const candidates = [
    join(dirname(process.execPath), "..", "include", "node"),
    "/usr/include/node",
    "/usr/local/include/node",
    join(homedir(), ".cache", "node-gyp", process.versions.node, "include", "node"),
  ];
  return candidates.find((dir) => existsSync(join(dir, "node_api.h")));
}

function nodeAddonApiDir(): string {
  const require = createRequire(join(root, "package.json"));
  return (require("node-addon-api") as { include_dir: string }).include_dir;
}

function headerFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...headerFiles(path));
    else if (entry.name.endsWith(".h")) out.push(path);
  }
  return out.sort();
}

/** Runs at most `limit` jobs at a time (the machine's cores); jobs queue in the order they arrive. */
class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}
  async run<T>(job: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resume) => this.waiting.push(resume));
    this.active += 1;
    try {
      return await job();
    } finally {
      this.active -= 1;
      this.waiting.shift()?.();
    }
  }
}

const limiter = new Limiter(Math.max(1, availableParallelism()));

export interface CompiledObject {
  object: string;
  /** The compiler's warnings and errors for this source (cached with the object). */
  diagnostics: string;
  ok: boolean;
}

/** One toolchain and target: compiles native/ sources (cached) and links programs from them. */
export class Build {
  private readonly objects = new Map<string, Promise<CompiledObject>>();
  private readonly headersHash: string;
  private readonly includes: string[];

  constructor(
    readonly name: string,
    readonly compiler: string,
    readonly targetFlags: string[],
  ) {
    const hash = createHash("sha256");
    for (const file of headerFiles(join(nativeDir, "src"))) hash.update(file).update(readFileSync(file));
    this.headersHash = hash.digest("hex");
    const nodeHeaders = nodeHeadersDir();
    this.includes = [
      ...(nodeHeaders ? ["-I", nodeHeaders] : []),
      "-I",
      nodeAddonApiDir(),
      "-I",
      join(nativeDir, "src"),
    ];
  }

  /** Compiles native/<source> once per run (and once per content while the cache holds it). */
  compile(source: string): Promise<CompiledObject> {
    let pending = this.objects.get(source);
    if (!pending) {
      pending = this.compileUncached(source);
      this.objects.set(source, pending);
    }
    return pending;
  }

  private async compileUncached(source: string): Promise<CompiledObject> {
    const flags = [...GYP_FLAGS, ...this.targetFlags, ...this.includes];
    const key = createHash("sha256")
      .update([this.compiler, ...flags, source, this.headersHash].join("\0"))
      .update(readFileSync(join(nativeDir, source)))
      .digest("hex")
      .slice(0, 24);
    const dir = join(cacheDir, this.name);
    const object = join(dir, `${key}.o`);
    const log = join(dir, `${key}.log`);
    if (existsSync(object) && existsSync(log))
      return { object, diagnostics: readFileSync(log, "utf8"), ok: true };
    mkdirSync(dir, { recursive: true });
    const partial = `${object}.${process.pid}.tmp`;
    const result = await limiter.run(() =>
      runCommand(
        niceCommand(),
        [...niceArgs(), this.compiler, ...flags, "-c", join(nativeDir, source), "-o", partial],
        { timeoutMs: 300_000 },
      ),
    );
    const diagnostics = result.stderr.replaceAll(`${root}/`, "");
    if (result.code !== 0) {
      rmSync(partial, { force: true });
      return { object, diagnostics: diagnostics || `exit code ${result.code}`, ok: false };
    }
    writeFileSync(log, diagnostics);
    renameSync(partial, object);
    return { object, diagnostics, ok: true };
  }

  /** Links the kernel check (native/test/kernels_check.cpp + the kernels it tests); throws on a compile error. */
  kernelsCheck(): Promise<string> {
    return this.checkProgram("kernels_check", [
      "test/kernels_check.cpp",
      "src/backend/cpu/kernels.cpp",
      "src/backend/cpu/kernels_int16.cpp",
      "src/backend/cpu/kernels_int8.cpp",
      "src/backend/cpu/workspace.cpp",
      "src/io/tensor.cpp",
    ]);
  }

  /** Links the attention check (native/test/attention_check.cpp + the attention and its thread pool). */
  attentionCheck(): Promise<string> {
    return this.checkProgram("attention_check", [
      "test/attention_check.cpp",
      "src/backend/cpu/attention.cpp",
      "src/backend/cpu/thread_pool.cpp",
    ]);
  }

  private async checkProgram(name: string, sources: string[]): Promise<string> {
    const parts = await Promise.all(sources.map((s) => this.compile(s)));
    const failed = parts.filter((p) => !p.ok);
    if (failed.length > 0)
      throw new Error(`${this.name}: compile failed:\n${failed.map((p) => p.diagnostics).join("\n")}`);
    const program = join(cacheDir, this.name, name);
    const link = await runCommand(
      this.compiler,
      [...this.targetFlags, ...parts.map((p) => p.object), "-o", program, "-lpthread"],
      { timeoutMs: 120_000 },
    );
    if (link.code !== 0) throw new Error(`${this.name}: link failed:\n${link.stderr}`);
    return program;
  }
}

function niceCommand(): string {
  return hasCommand("nice") ? "nice" : "env";
}

function niceArgs(): string[] {
  return hasCommand("nice") ? ["-n", "10"] : [];
}

/** What kernels_check printed last: its SIMD path, case and failure counts, worst error/bound and digest. */
export interface CheckSummary {
  simd: string;
  int16: boolean;
  int8: boolean;
  cases: number;
  failures: number;
  worst: number;
  digest: string;
  /** The int8 mode's outputs (kept apart: only builds with the int8 kernels compute them). */
  int8Digest: string;
}

/** What attention_check printed: its SIMD path, case and failure counts and worst error/bound. */
export interface AttentionSummary {
  simd: string;
  cases: number;
  failures: number;
  worst: number;
}

export function parseAttentionSummary(stdout: string): AttentionSummary | undefined {
  const m = /attention_check: (\w+) cases=(\d+) failures=(\d+) worst=([\d.]+)/.exec(stdout);
  if (!m) return undefined;
  return { simd: m[1], cases: Number(m[2]), failures: Number(m[3]), worst: Number(m[4]) };
}

export function parseSummary(stdout: string): CheckSummary | undefined {
  const m =
    /kernels_check: (\w+) int16=(\d) int8=(\d) cases=(\d+) failures=(\d+) worst=([\d.]+) digest=([0-9a-f]+) int8_digest=([0-9a-f]+)/.exec(
      stdout,
    );
  if (!m) return undefined;
  return {
    simd: m[1],
    int16: m[2] === "1",
    int8: m[3] === "1",
    cases: Number(m[4]),
    failures: Number(m[5]),
    worst: Number(m[6]),
    digest: m[7],
    int8Digest: m[8],
  };
}

/** Diagnostic lines (warnings, errors) that point into native/ sources, for a readable assertion. */
export function ownDiagnostics(diagnostics: string): string[] {
  return diagnostics
    .split("\n")
    .filter((line) => /(warning|error):/.test(line) && line.startsWith(relative(root, nativeDir)));
}
