// A second build of the studio_engine addon with AddressSanitizer, for the checkpoint fuzz test. It is built
// from a copy of native/ under .cache/asan/<hash of the sources>/ (the normal build is never touched) and
// reused while the sources stay the same. Node itself is not instrumented, so a process that loads it needs
// LD_PRELOAD of the compiler's libasan (asanEnv() gives the environment).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { packageRoot } from "../../common/paths.js";
import { runCommand } from "./run-command.js";

export type AsanBuild = { ok: true; addon: string; libasan: string } | { ok: false; reason: string };

function sourceFiles(dir: string): string[] {
  const files: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...sourceFiles(path));
    else if (/\.(cpp|h|hpp|cc)$/.test(entry.name)) files.push(path);
  }
  return files.sort();
}

/** A hash of everything the build reads, so an edited kernel gets a fresh build. */
function sourceHash(nativeDir: string): string {
  const hash = createHash("sha256");
  for (const file of [join(nativeDir, "binding.gyp"), ...sourceFiles(join(nativeDir, "src"))]) {
    hash.update(relative(nativeDir, file));
    hash.update(readFileSync(file));
  }
  return hash.digest("hex").slice(0, 16);
}

function findLibasan(): string | undefined {
  try {
    const path = execFileSync("g++", ["-print-file-name=libasan.so"], { encoding: "utf8" }).trim();
    return path.startsWith("/") && existsSync(path) ? path : undefined;
  } catch {
    return undefined;
  }
}

/** binding.gyp with the sanitizer on: no -O3/-march tuning (faster to build), frame pointers for reports. */
function sanitizedGyp(text: string): string {
  const gyp = JSON.parse(text) as { targets: Array<Record<string, unknown>> };
  const target = gyp.targets[0];
  const flags = ((target.cflags_cc as string[]) ?? []).filter((f) => f !== "-O3" && f !== "-march=native");
  target.cflags_cc = [...flags, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"];
  target.cflags = ["-fsanitize=address", "-fno-omit-frame-pointer"];
  target.ldflags = ["-fsanitize=address"];
  return JSON.stringify(gyp, null, 2);
}

/**
 * Builds (or finds in the cache) the ASan addon. Linux with g++ only: elsewhere, or when the build fails, the
 * reason says why, for a test that skips.
 */
export async function buildAsanAddon(log: (line: string) => void = () => undefined): Promise<AsanBuild> {
  if (process.platform !== "linux")
    return { ok: false, reason: "the ASan build is set up for Linux/g++ only" };
  const libasan = findLibasan();
  if (!libasan) return { ok: false, reason: "g++ has no libasan.so (install the compiler's ASan runtime)" };
  const nativeDir = join(packageRoot(), "native");
  const dir = join(packageRoot(), ".cache", "asan", sourceHash(nativeDir));
  const addon = join(dir, "native", "build", "Release", "studio_engine.node");
  if (existsSync(addon)) return { ok: true, addon, libasan };
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "native"), { recursive: true });
  cpSync(join(nativeDir, "src"), join(dir, "native", "src"), { recursive: true });
  cpSync(join(nativeDir, "find-mlx.js"), join(dir, "native", "find-mlx.js"));
  try {
    writeFileSync(
      join(dir, "native", "binding.gyp"),
      sanitizedGyp(readFileSync(join(nativeDir, "binding.gyp"), "utf8")),
    );
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return {
      ok: false,
      reason: `native/binding.gyp could not be given the sanitizer flags: ${(err as Error).message}`,
    };
  }
  log(`building the ASan addon in ${dir} (minutes; cached afterwards)`);
  const nodeGyp = join(packageRoot(), "node_modules", "node-gyp", "bin", "node-gyp.js");
  const built = await runCommand(
    "nice",
    ["-n", "10", process.execPath, nodeGyp, "rebuild", "--directory", "native"],
    {
      cwd: dir,
      // MLX (if found) is left out: the fuzz runs on the cpu backend, and an uninstrumented GPU stack adds noise.
      env: { ...process.env, STUDIO_CLUSTER_MLX: "off", JOBS: "2" },
      timeoutMs: 900_000,
    },
  );
  if (built.code !== 0 || !existsSync(addon)) {
    const tail = `${built.stderr}${built.stdout}`.slice(-1500);
    rmSync(dir, { recursive: true, force: true });
    return { ok: false, reason: `the ASan build failed (status ${built.code}): ${tail}` };
  }
  return { ok: true, addon, libasan };
}

/** The environment a child node process needs to load the ASan addon (through native/index.ts). */
export function asanEnv(build: { addon: string; libasan: string }): NodeJS.ProcessEnv {
  return {
    ...process.env,
    LD_PRELOAD: build.libasan,
    // Leaks: node and V8 keep memory to exit; the check is for out-of-bounds reads and use-after-free.
    ASAN_OPTIONS: "detect_leaks=0:abort_on_error=0:exitcode=66",
    STUDIO_ENGINE_ADDON: build.addon,
  };
}
