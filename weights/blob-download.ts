// One file of a hub repository into the cache's blobs/ folder: resumed from what an earlier attempt left in
// blobs/<hash>.incomplete (a Range request from its last byte), hashed as it streams (sha256 for LFS files, the
// git blob sha1 for the rest), checked for its exact size and hash, and only then renamed to blobs/<hash>.
// A connection that drops mid-file is retried from where it stopped; bytes that fail the hash are thrown away.
import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { blobPath } from "./hf-cache.js";
import { etagOf, type HubClient, type HubFile, HubHttpError } from "./hub-client.js";

export interface BlobJob {
  repo: string;
  commit: string;
  file: HubFile;
  /** The repository's folder in the cache (models--org--name). */
  repoDir: string;
}

export interface BlobOptions {
  /** Bytes added to (or, when a download starts over, taken from) this file's progress. */
  onBytes?: (delta: number) => void;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Tries before giving up (default 5); a corrupted file gets two. */
  attempts?: number;
  /** First delay between tries (doubles each time; default 1 s). */
  retryDelayMs?: number;
}

export class ChecksumError extends Error {}

/** Downloads (or finds) the file's blob; resolves with its path once it is complete and verified. */
export async function downloadBlob(client: HubClient, job: BlobJob, opts: BlobOptions = {}): Promise<string> {
  const blob = blobPath(job.repoDir, etagOf(job.file));
  if (existsSync(blob) && statSync(blob).size === job.file.size) return blob;
  mkdirSync(dirname(blob), { recursive: true });
  const attempts = opts.attempts ?? 5;
  let corrupt = 0;
  let delay = opts.retryDelayMs ?? 1000;
  for (let attempt = 1; ; attempt++) {
    try {
      await fetchOnce(client, job, blob, opts);
      return blob;
    } catch (err) {
      if (err instanceof ChecksumError) corrupt++;
      const permanent =
        (err instanceof HubHttpError && err.permanent) || corrupt >= 2 || opts.signal?.aborted;
      if (permanent || attempt >= attempts) throw err;
      const message = (err as Error).message;
      opts.log?.(
        `${message.startsWith(job.file.path) ? "" : `${job.file.path}: `}${message}; trying again in ${delay / 1000} s`,
      );
      await sleep(delay, undefined, { signal: opts.signal });
      delay *= 2;
    }
  }
}

function newHash(file: HubFile): Hash {
  if (file.sha256) return createHash("sha256");
  // A regular git file is named by its blob sha1: sha1("blob <size>\0" + content).
  return createHash("sha1").update(`blob ${file.size}\0`);
}

async function fetchOnce(client: HubClient, job: BlobJob, blob: string, opts: BlobOptions): Promise<void> {
  const { file } = job;
  const incomplete = `${blob}.incomplete`;
  let have = existsSync(incomplete) ? statSync(incomplete).size : 0;
  if (have > file.size) {
    rmSync(incomplete);
    have = 0;
  }
  const hash = newHash(file);
  if (have < file.size) {
    const response = await getFrom(client, job, have, incomplete, opts.signal);
    if (have > 0 && response.status !== 206) {
      // The server sent the whole file: start over.
      opts.onBytes?.(-have);
      have = 0;
    } else if (have > 0 && !response.headers.get("content-range")?.startsWith(`bytes ${have}-`)) {
      await response.body?.cancel();
      throw new Error(
        `asked for bytes ${have}- but the answer covers ${response.headers.get("content-range")}`,
      );
    }
    if (have > 0) {
      opts.log?.(`${file.path}: resuming at byte ${have} of ${file.size}`);
      for await (const chunk of createReadStream(incomplete, { end: have - 1 })) hash.update(chunk);
    }
    await appendBody(response, incomplete, have, hash, opts.onBytes);
  } else {
    for await (const chunk of createReadStream(incomplete)) hash.update(chunk);
  }
  const size = statSync(incomplete).size;
  if (size < file.size) throw new Error(`the connection ended after ${size} of ${file.size} bytes`);
  if (size > file.size) {
    rmSync(incomplete);
    throw new ChecksumError(`received ${size} bytes, the hub lists ${file.size}`);
  }
  const digest = hash.digest("hex");
  const expected = file.sha256 ?? file.oid;
  if (expected && digest !== expected) {
    rmSync(incomplete);
    opts.onBytes?.(-size);
    throw new ChecksumError(
      `${file.path}: the downloaded bytes have ${file.sha256 ? "sha256" : "git sha1"} ${digest}, the hub lists ${expected} (corrupted in transit; discarded)`,
    );
  }
  renameSync(incomplete, blob);
}

/** GET from byte `have`; a 416 (the kept prefix does not fit the file) discards it and fails retryably. */
async function getFrom(
  client: HubClient,
  job: BlobJob,
  have: number,
  incomplete: string,
  signal: AbortSignal | undefined,
): Promise<Response> {
  try {
    return await client.get(
      job.repo,
      job.commit,
      job.file.path,
      have > 0 ? `bytes=${have}-` : undefined,
      signal,
    );
  } catch (err) {
    if (!(err instanceof HubHttpError) || err.status !== 416) throw err;
    rmSync(incomplete, { force: true });
    throw new Error(`the hub refused to resume at byte ${have}; starting the file over`);
  }
}

async function appendBody(
  response: Response,
  incomplete: string,
  have: number,
  hash: Hash,
  onBytes: ((delta: number) => void) | undefined,
): Promise<void> {
  const out = await open(incomplete, have > 0 ? "a" : "w");
  try {
    if (!response.body) return;
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      await out.write(chunk);
      onBytes?.(chunk.byteLength);
    }
  } finally {
    await out.close();
  }
}
