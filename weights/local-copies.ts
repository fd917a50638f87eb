// Local copies of a hub model that other tools left: the Hugging Face cache (hf download, huggingface_hub,
// mlx-lm, transformers, exo's HF mode) and LM Studio's models folder. Only a complete checkpoint counts.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { checkpointProblem } from "./checkpoint-check.js";
import { readRef, repoFolder, snapshotDir } from "./hf-cache.js";
import type { HubEnv } from "./hub-env.js";
import type { HubRef } from "./model-ref.js";

export interface LocalCopy {
  dir: string;
  where: "hf-cache" | "lmstudio";
  commit?: string;
}

/** The first complete local copy, in the documented order; log says why each candidate was passed over. */
export function findLocalCopy(
  ref: HubRef,
  env: HubEnv,
  log: (line: string) => void = () => {},
): LocalCopy | undefined {
  for (const cacheDir of env.lookupDirs) {
    const repoDir = repoFolder(cacheDir, ref.repo);
    if (!existsSync(repoDir)) continue;
    const commit = readRef(repoDir, ref.revision);
    if (!commit) {
      log(`${repoDir}: no ${ref.revision} revision recorded`);
      continue;
    }
    const dir = snapshotDir(repoDir, commit);
    const problem = checkpointProblem(dir);
    if (!problem) return { dir, where: "hf-cache", commit };
    log(`not using ${dir}: ${problem}`);
  }
  // LM Studio keeps plain copies without revisions: only a request for the default revision may use one.
  if (ref.explicitRevision && ref.revision !== "main") return undefined;
  for (const models of lmStudioModelsDirs(env)) {
    const dir = join(models, ...ref.repo.split("/"));
    if (!existsSync(dir)) continue;
    const problem = checkpointProblem(dir);
    if (!problem) return { dir, where: "lmstudio" };
    log(`not using ${dir}: ${problem}`);
  }
  return undefined;
}

/**
 * LM Studio's models folders: its home is named by ~/.lmstudio-home-pointer when that exists, else
 * ~/.cache/lm-studio (older installs) or ~/.lmstudio; a moved models folder is its settings' downloadsFolder.
 */
export function lmStudioModelsDirs(env: HubEnv): string[] {
  const pointer = join(env.home, ".lmstudio-home-pointer");
  let home: string;
  if (existsSync(pointer)) home = readFileSync(pointer, "utf8").trim();
  else if (existsSync(join(env.home, ".cache", "lm-studio"))) home = join(env.home, ".cache", "lm-studio");
  else home = join(env.home, ".lmstudio");
  const dirs = [join(home, "models")];
  const settings = join(home, "settings.json");
  if (existsSync(settings)) {
    try {
      const moved = (JSON.parse(readFileSync(settings, "utf8")) as { downloadsFolder?: unknown })
        .downloadsFolder;
      if (typeof moved === "string" && moved) dirs.unshift(moved);
    } catch {
      // An unreadable settings file only means no moved folder.
    }
  }
  return dirs;
}
