// A whole model from the hub into the Hugging Face cache (`cluster pull`, and what other tools then reuse): the
// files a checkpoint needs (mlx-lm's allow-list), two at a time, each resumable and verified (blob-download.ts),
// linked into snapshots/<commit>/, and the revision's ref written last, so a half-done snapshot is never what a
// revision names.
import { existsSync, statSync } from "node:fs";
import { type BlobOptions, downloadBlob } from "./blob-download.js";
import { checkpointProblem } from "./checkpoint-check.js";
import { blobPath, linkIntoSnapshot, repoFolder, snapshotDir, writeRef } from "./hf-cache.js";
import { etagOf, HubClient, type HubFile } from "./hub-client.js";
import type { HubEnv } from "./hub-env.js";
import { findLocalCopy } from "./local-copies.js";
import type { HubRef } from "./model-ref.js";

export interface TransferProgress {
  done: number;
  total: number;
  /** The file being worked on, when there is one. */
  file?: string;
}

export interface PullOptions {
  env: HubEnv;
  onProgress?: (p: TransferProgress) => void;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Files downloaded at once (default 2). */
  concurrency?: number;
  /** Test hook for retry pacing (default 1 s). */
  retryDelayMs?: number;
}

export interface PulledSnapshot {
  repo: string;
  commit: string;
  dir: string;
  /** Bytes this pull downloaded (0 when everything was cached). */
  downloaded: number;
  fromCache: boolean;
}

// What mlx-lm downloads for a model: enough to load it, nothing else (no README, no other formats).
const allowed = [
  /\.json$/,
  /^model.*\.safetensors$/,
  /\.py$/,
  /^tokenizer\.model$/,
  /\.tiktoken$/,
  /\.txt$/,
  /\.jsonl$/,
  /\.jinja$/,
];

export function wantedFile(path: string): boolean {
  const segments = path.split("/");
  if (path.startsWith("/") || segments.some((s) => s === "" || s === "." || s === "..")) return false;
  const name = segments[segments.length - 1];
  return allowed.some((re) => re.test(name));
}

export async function pullSnapshot(ref: HubRef, opts: PullOptions): Promise<PulledSnapshot> {
  const { env } = opts;
  const log = opts.log ?? (() => {});
  const local = findLocalCopy(ref, env, log);
  if (local?.where === "hf-cache" && (env.offline || local.commit === ref.revision))
    return { repo: ref.repo, commit: local.commit!, dir: local.dir, downloaded: 0, fromCache: true };
  if (env.offline)
    throw new Error(
      `HF_HUB_OFFLINE is set and ${ref.repo}@${ref.revision} is not complete in the Hugging Face cache (${env.lookupDirs.join(", ")})`,
    );
  const client = new HubClient(env);
  const commit = await client.commitOf(ref.repo, ref.revision);
  const files = (await client.files(ref.repo, commit)).filter((f) => wantedFile(f.path));
  if (!files.some((f) => f.path.endsWith(".safetensors")))
    throw new Error(
      `${ref.repo}@${commit} has no model*.safetensors files: not an MLX/safetensors checkpoint`,
    );
  const repoDir = repoFolder(env.cacheDir, ref.repo);
  const total = files.reduce((sum, f) => sum + f.size, 0);
  let done = files.reduce((sum, f) => sum + bytesAlreadyHere(repoDir, f), 0);
  const already = done;
  let downloadedBytes = 0;
  opts.onProgress?.({ done, total });
  const blobOptions = (file: HubFile): BlobOptions => ({
    log,
    signal: opts.signal,
    retryDelayMs: opts.retryDelayMs,
    onBytes: (delta) => {
      done += delta;
      downloadedBytes += Math.max(0, delta);
      opts.onProgress?.({ done, total, file: file.path });
    },
  });
  await forEachLimited(files, opts.concurrency ?? 2, async (file) => {
    const blob = await downloadBlob(client, { repo: ref.repo, commit, file, repoDir }, blobOptions(file));
    linkIntoSnapshot(repoDir, commit, file.path, blob);
  });
  writeRef(repoDir, ref.revision, commit);
  const dir = snapshotDir(repoDir, commit);
  const problem = checkpointProblem(dir);
  if (problem)
    throw new Error(`${ref.repo}@${commit} was downloaded but is not a usable checkpoint: ${problem}`);
  opts.onProgress?.({ done: total, total });
  return { repo: ref.repo, commit, dir, downloaded: downloadedBytes, fromCache: already === total };
}

/** Bytes of the file the cache already holds: the whole blob, or what an interrupted download left. */
function bytesAlreadyHere(repoDir: string, file: HubFile): number {
  const blob = blobPath(repoDir, etagOf(file));
  if (existsSync(blob)) return statSync(blob).size === file.size ? file.size : 0;
  const partial = `${blob}.incomplete`;
  return existsSync(partial) ? Math.min(file.size, statSync(partial).size) : 0;
}

async function forEachLimited<T>(items: T[], limit: number, run: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await run(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
