// What a node needs of a hub model before it holds any weights (a few MB, fetched first): the small files
// (config, tokenizer, chat template, index; downloaded whole into the HF cache and verified) and every shard's
// safetensors header, read with range requests. From them it writes its partial checkpoint's store
// (store.ts): the coordinator plans from that, and the node then fetches only its own layers.
import { readFileSync } from "node:fs";
import { type ManifestTable, modelFingerprint, tableOfManifest } from "../common/model-table.js";
import { headerLengthOf, parseSafetensorsHeader, type SafetensorsHeader } from "../common/safetensors.js";
import { downloadBlob } from "./blob-download.js";
import { linkIntoSnapshot, repoFolder } from "./hf-cache.js";
import { HubClient, type HubFile } from "./hub-client.js";
import type { HubEnv } from "./hub-env.js";
import { type HubRef, modelIdOfRepo } from "./model-ref.js";
import { wantedFile } from "./pull.js";
import { createStore, recordStoreCommit, storeRoot } from "./store.js";

/** One request reads a typical header whole; a longer one costs one more. */
const headerProbeBytes = 256 * 1024;

export interface PreparedStore {
  dir: string;
  commit: string;
  fingerprint: string;
  /** Bytes of metadata read from the hub. */
  metadataBytes: number;
}

/** Writes the store for ref at its current commit from the hub's metadata; resolves with its folder. */
export async function prepareStoreFromHub(
  ref: HubRef,
  env: HubEnv,
  home: string,
  log: (line: string) => void = () => {},
): Promise<PreparedStore> {
  const client = new HubClient(env);
  const commit = await client.commitOf(ref.repo, ref.revision);
  const files = (await client.files(ref.repo, commit)).filter((f) => wantedFile(f.path));
  const shardFiles = new Map(files.filter((f) => f.path.endsWith(".safetensors")).map((f) => [f.path, f]));
  if (shardFiles.size === 0)
    throw new Error(
      `${ref.repo}@${commit} has no model*.safetensors files: not an MLX/safetensors checkpoint`,
    );
  const repoDir = repoFolder(env.cacheDir, ref.repo);
  const small = new Map<string, Buffer>();
  let metadataBytes = 0;
  for (const file of files.filter((f) => !shardFiles.has(f.path) && !f.path.includes("/"))) {
    const blob = await downloadBlob(client, { repo: ref.repo, commit, file, repoDir }, { log });
    linkIntoSnapshot(repoDir, commit, file.path, blob);
    small.set(file.path, readFileSync(blob));
    metadataBytes += file.size;
  }
  const weightMap = indexOf(small, shardFiles);
  const manifest: Omit<ManifestTable, "format"> = {
    modelId: modelIdOfRepo(ref.repo),
    repo: ref.repo,
    commit,
    shards: {},
    tensors: {},
  };
  for (const file of new Set(Object.values(weightMap))) {
    const shard = shardFiles.get(file);
    if (!shard)
      throw new Error(`${ref.repo}@${commit}: the index names ${file}, which the repository does not have`);
    const { header, bytes } = await remoteHeader(client, ref.repo, commit, shard);
    metadataBytes += bytes;
    manifest.shards[file] = {
      size: shard.size,
      dataStart: header.dataStart,
      metadata: header.metadata,
      sha256: shard.sha256,
    };
    for (const [name, info] of header.tensors) {
      if (weightMap[name] !== file && weightMap["*"] !== file) continue;
      manifest.tensors[name] = {
        file,
        dtype: info.dtype,
        shape: info.shape,
        start: info.byteOffset,
        byteLength: info.byteLength,
      };
    }
  }
  const missing = Object.keys(weightMap).find((name) => name !== "*" && !manifest.tensors[name]);
  if (missing)
    throw new Error(
      `${ref.repo}@${commit}: the index names tensor "${missing}" but its shard's header lacks it`,
    );
  const dir = `${storeRoot(home, ref.repo)}/${commit}`;
  createStore({ dir, manifest, files: small });
  recordStoreCommit(home, ref.repo, ref.revision, commit);
  log(
    `${ref.repo}@${commit}: ${Object.keys(manifest.tensors).length} tensors in ${shardFiles.size} shard(s) described from ${metadataBytes} bytes of metadata`,
  );
  const fingerprint = modelFingerprint(tableOfManifest({ format: "", ...manifest }));
  return { dir, commit, fingerprint, metadataBytes };
}

/** The index's weight map; a single-file checkpoint's comes from its header later. */
function indexOf(small: Map<string, Buffer>, shards: Map<string, HubFile>): Record<string, string> {
  const index = small.get("model.safetensors.index.json");
  if (index) {
    const map = (JSON.parse(index.toString("utf8")) as { weight_map?: Record<string, string> }).weight_map;
    if (!map || typeof map !== "object") throw new Error("model.safetensors.index.json has no weight_map");
    return map;
  }
  if (shards.has("model.safetensors")) return { "*": "model.safetensors" };
  throw new Error("the repository has neither model.safetensors.index.json nor model.safetensors");
}

/** A shard's header over range requests: one probe, and one more when the header is longer than it. */
export async function remoteHeader(
  client: HubClient,
  repo: string,
  commit: string,
  shard: HubFile,
): Promise<{ header: SafetensorsHeader; bytes: number }> {
  const where = `${repo}/${shard.path}`;
  const probe = await readRange(client, repo, commit, shard.path, 0, Math.min(shard.size, headerProbeBytes));
  if (probe.length < 8) throw new Error(`${where}: too short for a safetensors file`);
  const length = headerLengthOf(where, probe.subarray(0, 8), shard.size);
  let headerBytes = probe.subarray(8, 8 + length);
  let bytes = probe.length;
  if (probe.length < 8 + length) {
    const rest = await readRange(client, repo, commit, shard.path, probe.length, 8 + length);
    headerBytes = Buffer.concat([probe.subarray(8), rest]);
    bytes += rest.length;
  }
  return { header: parseSafetensorsHeader(where, headerBytes, shard.size), bytes };
}

/** Bytes [start, end) of a file, checked to be exactly those. */
export async function readRange(
  client: HubClient,
  repo: string,
  commit: string,
  path: string,
  start: number,
  end: number,
): Promise<Buffer> {
  const response = await client.get(repo, commit, path, `bytes=${start}-${end - 1}`);
  const body = Buffer.from(await response.arrayBuffer());
  if (response.status === 200) return body.subarray(start, end);
  if (response.status !== 206 || body.length !== end - start)
    throw new Error(
      `${repo}/${path}: asked for bytes ${start}-${end - 1}, got ${response.status} with ${body.length} bytes`,
    );
  return body;
}
