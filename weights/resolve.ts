// `--model` to a checkpoint folder, in the documented order (docs/weights.md): a folder as given; for a hub id,
// a complete copy in the Hugging Face cache, then LM Studio's folder, then this node's partial checkpoint of it,
// and otherwise the hub's metadata, from which a new partial checkpoint is started (its layers come later, from
// peers or the hub, once the plan says which). HF_HUB_OFFLINE=1 stops before the hub.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { manifestName, readManifest } from "../common/model-table.js";
import type { HubEnv } from "./hub-env.js";
import { prepareStoreFromHub } from "./hub-meta.js";
import { findLocalCopy } from "./local-copies.js";
import { type HubRef, modelIdOfRepo, parseModelRef } from "./model-ref.js";
import { storeCommit, storeRoot } from "./store.js";

export interface ResolvedModel {
  dir: string;
  modelId?: string;
  how: "folder" | "hf-cache" | "lmstudio" | "partial" | "hub-metadata";
  /** The hub model behind it, when there is one: where missing layers can come from. */
  hub?: { repo: string; commit: string };
}

export interface ResolveOptions {
  env: HubEnv;
  /** The studio-cluster home (the partial checkpoints live under it). */
  home: string;
  log?: (line: string) => void;
}

export async function resolveModel(value: string, opts: ResolveOptions): Promise<ResolvedModel> {
  const ref = parseModelRef(value);
  if (ref.kind === "folder") return { dir: ref.dir, how: "folder" };
  return resolveHubModel(ref, opts);
}

export async function resolveHubModel(ref: HubRef, opts: ResolveOptions): Promise<ResolvedModel> {
  const log = opts.log ?? (() => {});
  const modelId = modelIdOfRepo(ref.repo);
  const local = findLocalCopy(ref, opts.env, log);
  if (local)
    return {
      dir: local.dir,
      modelId,
      how: local.where,
      hub: local.commit ? { repo: ref.repo, commit: local.commit } : undefined,
    };
  const commit = storeCommit(opts.home, ref.repo, ref.revision);
  const dir = commit && join(storeRoot(opts.home, ref.repo), commit);
  if (dir && existsSync(join(dir, manifestName))) {
    const manifest = readManifest(dir)!;
    return { dir, modelId, how: "partial", hub: { repo: ref.repo, commit: manifest.commit ?? commit } };
  }
  if (opts.env.offline)
    throw new Error(
      `HF_HUB_OFFLINE is set and ${ref.repo}@${ref.revision} is neither complete in the Hugging Face cache (${opts.env.lookupDirs.join(", ")}), nor in LM Studio's models folder, nor started as a partial checkpoint under ${storeRoot(opts.home, ref.repo)}`,
    );
  const prepared = await prepareStoreFromHub(ref, opts.env, opts.home, log);
  return {
    dir: prepared.dir,
    modelId,
    how: "hub-metadata",
    hub: { repo: ref.repo, commit: prepared.commit },
  };
}
