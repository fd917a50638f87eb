// The Hugging Face hub cache layout, exactly as the hub's own tools (hf, huggingface_hub, mlx-lm, transformers)
// write and read it, so a download here is reused there and theirs here:
//   <cache>/models--org--name/blobs/<sha256 or git sha1>       file contents, named by their hash
//   <cache>/models--org--name/snapshots/<commit>/<path>       relative symlinks to ../../blobs/<hash>
//   <cache>/models--org--name/refs/<revision>                 the commit, no trailing newline; written last
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, relative } from "node:path";
import { isCommitHash } from "./model-ref.js";

export function repoFolder(cacheDir: string, repo: string): string {
  return join(cacheDir, `models--${repo.replace("/", "--")}`);
}

export function blobPath(repoDir: string, etag: string): string {
  return join(repoDir, "blobs", etag);
}

export function snapshotDir(repoDir: string, commit: string): string {
  return join(repoDir, "snapshots", commit);
}

/** The commit a revision names in this cache (a commit names itself), or undefined. */
export function readRef(repoDir: string, revision: string): string | undefined {
  if (isCommitHash(revision)) return revision;
  const file = join(repoDir, "refs", revision);
  if (!existsSync(file)) return undefined;
  const commit = readFileSync(file, "utf8").trim();
  return isCommitHash(commit) ? commit : undefined;
}

/** Atomically, and only when it changes (as the hub's tools do). */
export function writeRef(repoDir: string, revision: string, commit: string): void {
  if (isCommitHash(revision) || readRef(repoDir, revision) === commit) return;
  const file = join(repoDir, "refs", revision);
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, commit);
  renameSync(tmp, file);
}

/** snapshots/<commit>/<path> -> the blob, as a relative link (the cache folder can move). */
export function linkIntoSnapshot(repoDir: string, commit: string, path: string, blob: string): string {
  const pointer = join(snapshotDir(repoDir, commit), path);
  mkdirSync(dirname(pointer), { recursive: true });
  const target = relative(dirname(pointer), blob);
  if (isLink(pointer)) rmSync(pointer);
  symlinkSync(target, pointer);
  return pointer;
}

function isLink(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
