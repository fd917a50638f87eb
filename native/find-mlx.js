// Finds an installed MLX (headers + shared library) for binding.gyp, which calls it as
//   node find-mlx.js prefix|include|lib
// and gets one line: the path (or library name), or an empty line when MLX is absent, in which case the addon
// builds with the cpu backend only. Only the "prefix" query prints a human line (on stderr, so gyp's captured
// stdout stays a bare path) saying which build it will be, because gyp asks each query once.
//
// Search order, first match wins:
//   STUDIO_CLUSTER_MLX=off            build without MLX even when it is installed
//   MLX_DIR, MLX_ROOT                 an install prefix, or its share/cmake/MLX folder
//   brew --prefix mlx                 Homebrew (macOS)
//   python3 -m mlx --cmake-dir        pip install mlx (the wheel carries headers and libmlx)
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";

// The oldest MLX whose C++ API the backend uses (dequantize with a global scale and an output dtype: 0.31.0).
const MINIMUM_VERSION = [0, 31];

// A shared libmlx only: a static one would also need its BLAS/Metal link lines, which vary by build.
const LIBRARY_FILES = ["libmlx.dylib", "libmlx.so"];

/** The library folder of a prefix that holds MLX's headers and a libmlx, or undefined. */
function libraryDirOf(prefix) {
  if (!existsSync(join(prefix, "include", "mlx", "mlx.h"))) return undefined;
  for (const libDir of [join(prefix, "lib"), join(prefix, "lib64")]) {
    if (LIBRARY_FILES.some((file) => existsSync(join(libDir, file)))) return libDir;
  }
  return undefined;
}

/** Accepts a prefix or a CMake package folder (<prefix>/share/cmake/MLX) and returns the prefix. */
function prefixFrom(path) {
  const candidates = [resolve(path), resolve(path, "..", "..", "..")];
  return candidates.find((candidate) => libraryDirOf(candidate) !== undefined);
}

/** [major, minor, patch] from <prefix>/include/mlx/version.h, or undefined when it cannot be read. */
function versionOf(prefix) {
  try {
    const text = readFileSync(join(prefix, "include", "mlx", "version.h"), "utf8");
    const part = (name) => Number(new RegExp(`#define MLX_VERSION_${name} (\\d+)`).exec(text)?.[1]);
    const version = [part("MAJOR"), part("MINOR"), part("PATCH")];
    return version.every(Number.isInteger) ? version : undefined;
  } catch {
    return undefined;
  }
}

function isRecentEnough(version) {
  const [major, minor] = version;
  return major > MINIMUM_VERSION[0] || (major === MINIMUM_VERSION[0] && minor >= MINIMUM_VERSION[1]);
}

/** Runs a probe command; a missing tool or a failing command just means "not found here". */
function probe(command, args) {
  try {
    const out = execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    return out.trim() || undefined;
  } catch {
    return undefined;
  }
}

function findMlx() {
  const switchValue = (process.env.STUDIO_CLUSTER_MLX ?? "").toLowerCase();
  if (["0", "off", "no", "false"].includes(switchValue)) {
    return { why: "STUDIO_CLUSTER_MLX=" + process.env.STUDIO_CLUSTER_MLX };
  }
  const tried = [];
  const sources = [
    ["MLX_DIR", () => process.env.MLX_DIR],
    ["MLX_ROOT", () => process.env.MLX_ROOT],
    ["brew --prefix mlx", () => probe("brew", ["--prefix", "mlx"])],
    ["python3 -m mlx --cmake-dir", () => probe("python3", ["-m", "mlx", "--cmake-dir"])],
  ];
  for (const [label, lookup] of sources) {
    const path = lookup();
    if (path === undefined || path === "") continue;
    const prefix = prefixFrom(path);
    if (prefix === undefined) {
      tried.push(`${label} gave ${path} (no include/mlx/mlx.h beside a shared lib/libmlx)`);
      continue;
    }
    const version = versionOf(prefix);
    if (version !== undefined && !isRecentEnough(version)) {
      tried.push(
        `${label} gave MLX ${version.join(".")} at ${prefix}, older than ${MINIMUM_VERSION.join(".")} (upgrade it)`,
      );
      continue;
    }
    return { prefix, source: label, version: version?.join(".") ?? "of unknown version" };
  }
  return { why: tried.length > 0 ? tried.join("; ") : "no MLX_DIR/MLX_ROOT, brew or pip mlx" };
}

function main() {
  const query = process.argv[2] ?? "prefix";
  const found = findMlx();
  if (query === "prefix") {
    const line =
      found.prefix !== undefined
        ? `studio-cluster: building the engine WITH the mlx backend (MLX ${found.version} at ${found.prefix}, from ${found.source})`
        : `studio-cluster: building the engine WITHOUT the mlx backend (cpu only): ${found.why}`;
    process.stderr.write(line + "\n");
  }
  if (found.prefix === undefined) {
    process.stdout.write("\n");
    return;
  }
  const libDir = libraryDirOf(found.prefix);
  const answers = {
    prefix: found.prefix,
    include: join(found.prefix, "include"),
    lib: libDir,
  };
  if (!(query in answers)) {
    process.stderr.write(`find-mlx.js: unknown query "${query}" (prefix, include, lib)\n`);
    process.exit(2);
  }
  process.stdout.write(answers[query] + "\n");
}

main();
