// The partial checkpoint a node keeps for a hub model it does not hold whole (docs/weights.md):
//   <home>/weights/models--org--name/<commit>/
//     config.json, tokenizer*.json, chat_template.jinja, ...     the model's small files
//     manifest.json                                             the whole model's tensor table (planning needs it)
//     model.safetensors.index.json                              the tensors held here -> their file
//     model-layer-007.safetensors, model-embed.safetensors ...  tensors received from peers or hub ranges
//     model-00003-of-00009.safetensors -> hub cache blob        whole shards downloaded into the HF cache
// It is an ordinary checkpoint folder for the engine (which maps only what its layers need) and for a peer
// fetching from this node; it survives restarts, so a node fetches each byte once.
import {
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { rename, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import {
  type ManifestTable,
  type ModelTable,
  manifestFormat,
  manifestName,
  readManifest,
  type TableTensor,
  tableOfManifest,
} from "../common/model-table.js";
import { readIndex } from "../common/safetensors.js";

const indexName = "model.safetensors.index.json";

export function storeRoot(home: string, repo: string): string {
  return join(home, "weights", `models--${repo.replace("/", "--")}`);
}

/** The commit a revision was last resolved to here (for an offline start), or undefined. */
export function storeCommit(home: string, repo: string, revision: string): string | undefined {
  if (/^[0-9a-f]{40}$/.test(revision)) return revision;
  const refs = join(storeRoot(home, repo), "refs.json");
  if (!existsSync(refs)) return undefined;
  const commit = (JSON.parse(readFileSync(refs, "utf8")) as Record<string, unknown>)[revision];
  return typeof commit === "string" ? commit : undefined;
}

export function recordStoreCommit(home: string, repo: string, revision: string, commit: string): void {
  const file = join(storeRoot(home, repo), "refs.json");
  const refs = existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Record<string, string>) : {};
  refs[revision] = commit;
  writeAtomic(file, JSON.stringify(refs, null, 2));
}

export interface NewStore {
  dir: string;
  manifest: Omit<ManifestTable, "format">;
  /** The model's small files (config, tokenizer, template): path in the repo -> contents. */
  files: Map<string, Buffer>;
}

/** Writes a store that holds no tensors yet; the manifest last, so a store with a manifest is usable. */
export function createStore(store: NewStore): void {
  mkdirSync(store.dir, { recursive: true });
  for (const [path, bytes] of store.files) {
    if (path.includes("/") || path === manifestName || path === indexName) continue;
    writeAtomic(join(store.dir, path), bytes);
  }
  if (!existsSync(join(store.dir, indexName))) writeIndex(store.dir, {});
  writeAtomic(join(store.dir, manifestName), JSON.stringify({ format: manifestFormat, ...store.manifest }));
}

export class PartialStore {
  readonly manifest: ManifestTable;
  readonly table: ModelTable;

  constructor(readonly dir: string) {
    const manifest = readManifest(dir);
    if (!manifest) throw new Error(`${dir}: no ${manifestName}: not a partial checkpoint`);
    this.manifest = manifest;
    this.table = tableOfManifest(manifest);
  }

  /** Tensor name -> the file here that holds it. */
  held(): Record<string, string> {
    return readIndex(this.dir).weightMap;
  }

  missing(tensors: TableTensor[]): TableTensor[] {
    const held = this.held();
    return tensors.filter((t) => !held[t.name]);
  }

  /** Records that file (in this folder) now holds these tensors; the index is replaced atomically. */
  addFile(file: string, names: string[]): void {
    const map = this.held();
    for (const name of names) map[name] = file;
    writeIndex(this.dir, map);
  }

  /** Puts a whole published shard (already verified in the hub cache) here as a link and indexes its tensors. */
  linkShard(file: string, target: string): void {
    const link = join(this.dir, file);
    rmSync(link, { force: true });
    symlinkSync(relative(this.dir, target), link);
    const names = [...this.table.tensors.values()].filter((t) => t.file === file).map((t) => t.name);
    this.addFile(file, names);
  }

  /** A file name here that no held tensor uses yet, for a new group file. */
  freshName(base: string): string {
    const used = new Set(Object.values(this.held()));
    for (let i = 0; ; i++) {
      const name = `${base}${i ? `-${i}` : ""}.safetensors`;
      if (!used.has(name)) return name;
    }
  }
}

function writeIndex(dir: string, weightMap: Record<string, string>): void {
  const sorted = Object.fromEntries(
    Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
  );
  writeAtomic(
    join(dir, indexName),
    JSON.stringify({ metadata: { format: "partial" }, weight_map: sorted }, null, 1),
  );
}

export function writeAtomic(file: string, data: string | Buffer): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, file);
}

let atomicWrites = 0;

/** writeAtomic without blocking the event loop; concurrent writes of one file each use a temporary of their own. */
export async function writeAtomicAsync(file: string, data: string | Buffer): Promise<void> {
  const tmp = `${file}.${process.pid}.${++atomicWrites}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, file);
}

/** Refuses a transfer that would not fit, naming the bytes needed and free. */
export function checkDiskSpace(dir: string, needBytes: number, what: string): void {
  mkdirSync(dir, { recursive: true });
  const fs = statfsSync(dir);
  const free = Number(fs.bavail) * Number(fs.bsize);
  if (needBytes > free)
    throw new Error(
      `not enough disk space for ${what}: ${humanBytes(needBytes)} (${needBytes} bytes) needed in ${dir}, ${humanBytes(free)} (${free} bytes) free`,
    );
}

function humanBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e3).toFixed(1)} KB`;
}
