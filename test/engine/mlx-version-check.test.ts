// The run-time MLX version check, on the real code: a copy of the addon is built against a copy of MLX's headers
// whose version macros name another release (the library folder is the real one), then loaded in a child process
// with the real libmlx. mlxInfo() must report the mismatch, and an mlx engine must be refused with a message that
// names both versions and the library's path, before anything is loaded. Skips, saying why, where the addon has
// no MLX, where MLX's headers are not beside the library, or off Linux/macOS.
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { makeModel } from "../../cli/make-model/index.js";
import { packageRoot } from "../../common/paths.js";
import { availableBackends, type MlxInfo, mlxInfo } from "../../native/index.js";
import { runCommand } from "../helpers/run-command.js";

const addonPath = join(packageRoot(), "native", "build", "Release", "studio_engine.node");

function skipReason(): string | undefined {
  if (!existsSync(addonPath)) return `the studio_engine addon is not built (${addonPath})`;
  if (!availableBackends().includes("mlx")) return "studio_engine was built without MLX";
  const library = mlxInfo()?.libraryPath;
  if (!library) return "the loader does not say where libmlx was loaded from";
  if (!existsSync(join(dirname(library), "..", "include", "mlx", "version.h")))
    return `no MLX headers beside ${library}`;
  if (!existsSync(join(packageRoot(), "dist", "test", "helpers", "mlx-version-child.js")))
    return "dist/ is not built (npm run build)";
  return undefined;
}

/** A version the headers can claim without changing which MLX API the backend compiles against. */
function otherVersion(major: number, minor: number, patch: number): [number, number, number] {
  // The backend switches API at 0.32.2 (MLX_VERSION_NUMERIC >= 32002): stay on the real version's side of it.
  const numeric = 100000 * major + 1000 * minor + patch;
  return numeric < 32002 && patch > 0 ? [major, minor, patch - 1] : [major, minor, patch + 1];
}

// Under the package (not the system's temp folder) so the copy's build finds node-addon-api in node_modules.
mkdirSync(join(packageRoot(), ".cache"), { recursive: true });
const root = mkdtempSync(join(packageRoot(), ".cache", "mlx-version-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("mlx version check", () => {
  it("an addon built against other MLX headers refuses the loaded MLX, naming both versions and the library", async () => {
    const reason = skipReason();
    if (reason) {
      console.warn(`skipping the mlx version check: ${reason}`);
      return;
    }
    const real = mlxInfo() as MlxInfo & { libraryPath: string };
    expect(real.versionError).toBeUndefined();
    const libDir = dirname(real.libraryPath);

    // An MLX prefix: headers copied with other version macros, the real library folder linked in.
    const prefix = join(root, "mlx");
    cpSync(join(libDir, "..", "include"), join(prefix, "include"), { recursive: true });
    symlinkSync(libDir, join(prefix, "lib"));
    const versionFile = join(prefix, "include", "mlx", "version.h");
    const header = readFileSync(versionFile, "utf8");
    const part = (name: string) => Number(new RegExp(`#define MLX_VERSION_${name} (\\d+)`).exec(header)![1]);
    const [major, minor, patch] = otherVersion(part("MAJOR"), part("MINOR"), part("PATCH"));
    const fake = `${major}.${minor}.${patch}`;
    writeFileSync(
      versionFile,
      header.replace(/#define MLX_VERSION_PATCH \d+/, `#define MLX_VERSION_PATCH ${patch}`),
    );

    // A copy of native/ built against it, unoptimised (only loading is exercised).
    const native = join(root, "native");
    mkdirSync(native);
    cpSync(join(packageRoot(), "native", "src"), join(native, "src"), { recursive: true });
    cpSync(join(packageRoot(), "native", "find-mlx.js"), join(native, "find-mlx.js"));
    const gyp = JSON.parse(readFileSync(join(packageRoot(), "native", "binding.gyp"), "utf8")) as {
      targets: Array<{ cflags_cc: string[] }>;
    };
    gyp.targets[0].cflags_cc = [...gyp.targets[0].cflags_cc.filter((f) => !/^-O|^-march/.test(f)), "-O0"];
    writeFileSync(join(native, "binding.gyp"), JSON.stringify(gyp, null, 2));
    const nodeGyp = join(packageRoot(), "node_modules", "node-gyp", "bin", "node-gyp.js");
    const built = await runCommand(
      "nice",
      ["-n", "10", process.execPath, nodeGyp, "rebuild", "--directory", native],
      {
        cwd: root,
        env: { ...process.env, MLX_DIR: prefix, JOBS: "2" },
        timeoutMs: 900_000,
      },
    );
    const addon = join(native, "build", "Release", "studio_engine.node");
    expect(built.code, `${built.stderr}${built.stdout}`.slice(-3000)).toBe(0);
    expect(existsSync(addon)).toBe(true);

    const model = join(root, "model");
    await makeModel({ dir: model, preset: "tiny", bits: 4, groupSize: 64, seed: 3 });
    const child = await runCommand(
      process.execPath,
      [join(packageRoot(), "dist", "test", "helpers", "mlx-version-child.js"), model],
      { env: { ...process.env, STUDIO_ENGINE_ADDON: addon }, timeoutMs: 120_000 },
    );
    expect(child.code, child.stderr.slice(-3000)).toBe(0);
    const { info, error } = JSON.parse(child.stdout.trim().split("\n").at(-1)!) as {
      info: MlxInfo;
      error: string;
    };
    expect(info.builtWith).toBe(fake);
    expect(info.version).toBe(real.version);
    // The library the copy loaded is the real one, reached through the prefix's link.
    expect(realpathSync(info.libraryPath!)).toBe(realpathSync(real.libraryPath));
    const message = `MLX version mismatch: studio_engine was built against MLX ${fake} but loaded MLX ${real.version} from ${info.libraryPath}`;
    expect(info.versionError).toContain(message);
    expect(error).toContain(message);
    expect(error).toContain(`install MLX ${fake}`);
  }, 1_200_000);
});
