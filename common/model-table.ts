// The model as a table of tensors (name -> source file, dtype, shape, byte range), which is all that planning,
// a node's capabilities and a weight transfer need: never the bytes. It is read from a full checkpoint (its index
// and safetensors headers) or from a partial checkpoint's manifest, which keeps the whole model's table beside the
// tensors the node holds (docs/weights.md).
import { createHash } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  readIndex,
  readSafetensorsHeader,
  type SafetensorsDtype,
  type SafetensorsHeader,
} from "./safetensors.js";

/** One tensor of the whole model, where it lives in the published checkpoint. */
export interface TableTensor {
  name: string;
  /** Shard file of the published checkpoint (e.g. model-00001-of-00002.safetensors). */
  file: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset in that file. */
  start: number;
  byteLength: number;
}

/** One shard file of the published checkpoint. */
export interface TableShard {
  file: string;
  size: number;
  /** 8 + header length: where its data begins. */
  dataStart: number;
  metadata: Record<string, string>;
  /** sha256 of the whole file when known (the hub's LFS oid). */
  sha256?: string;
}

export interface ModelTable {
  tensors: Map<string, TableTensor>;
  shards: Map<string, TableShard>;
}

/** The partial checkpoint's manifest (weights/store.ts writes it). */
export const manifestName = "manifest.json";
export const manifestFormat = "studio-cluster-partial/1";

export interface ManifestTable {
  format: string;
  modelId: string;
  /** Hub repository and commit it came from, when it came from the hub. */
  repo?: string;
  commit?: string;
  shards: Record<string, Omit<TableShard, "file">>;
  tensors: Record<string, Omit<TableTensor, "name">>;
}

/** The whole-model table of a checkpoint folder: its manifest when it is partial, else its index and headers. */
export function readModelTable(dir: string): ModelTable {
  const manifest = readManifest(dir);
  if (manifest) return tableOfManifest(manifest);
  const index = readIndex(dir);
  const tensors = new Map<string, TableTensor>();
  const shards = new Map<string, TableShard>();
  const headers = new Map<string, SafetensorsHeader>();
  for (const [name, file] of Object.entries(index.weightMap)) {
    let header = headers.get(file);
    if (!header) {
      header = readSafetensorsHeader(join(dir, file));
      headers.set(file, header);
      shards.set(file, {
        file,
        size: statSync(header.file).size,
        dataStart: header.dataStart,
        metadata: header.metadata,
      });
    }
    const info = header.tensors.get(name);
    if (!info)
      throw new Error(`${header.file}: index says it holds tensor "${name}" but its header does not`);
    tensors.set(name, {
      name,
      file,
      dtype: info.dtype,
      shape: info.shape,
      start: info.byteOffset,
      byteLength: info.byteLength,
    });
  }
  return { tensors, shards };
}

/** The manifest of a partial checkpoint folder, or undefined for an ordinary checkpoint. */
export function readManifest(dir: string): ManifestTable | undefined {
  const file = join(dir, manifestName);
  if (!existsSync(file)) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new Error(`${file}: cannot read as JSON (${(err as Error).message})`);
  }
  const m = raw as ManifestTable;
  if (m?.format !== manifestFormat || typeof m.tensors !== "object" || typeof m.shards !== "object")
    throw new Error(`${file}: not a ${manifestFormat} manifest`);
  return m;
}

export function tableOfManifest(m: ManifestTable): ModelTable {
  const tensors = new Map<string, TableTensor>();
  const shards = new Map<string, TableShard>();
  for (const [file, s] of Object.entries(m.shards)) shards.set(file, { file, ...s });
  for (const [name, t] of Object.entries(m.tensors)) {
    if (!shards.has(t.file))
      throw new Error(`${manifestName}: tensor "${name}" names unknown shard ${t.file}`);
    tensors.set(name, { name, ...t });
  }
  return { tensors, shards };
}

/**
 * What identifies the model's weights across nodes: the names, dtypes and shapes of every tensor (two copies of
 * one checkpoint agree; a different quantization or architecture does not).
 */
export function modelFingerprint(table: ModelTable): string {
  const rows = [...table.tensors.values()].map((t) => `${t.name}\t${t.dtype}\t${t.shape.join("x")}`).sort();
  return createHash("sha256").update(rows.join("\n")).digest("hex").slice(0, 32);
}

const layerTensor = /^model\.layers\.(\d+)\./;

/** The part of the model a tensor belongs to: a layer number, "embed", "head", or undefined (never loaded). */
export function partOf(name: string): number | "embed" | "head" | undefined {
  const layer = layerTensor.exec(name);
  if (layer) return Number(layer[1]);
  if (name.startsWith("model.embed_tokens.")) return "embed";
  if (name.startsWith("model.norm.") || name.startsWith("lm_head.")) return "head";
  return undefined;
}

/** The tensors a stage needs: its layers, the embedding on the first stage, norm and lm_head on the last. */
export function stageTensors(
  table: ModelTable,
  stage: { layerStart: number; layerEnd: number; embed: boolean; head: boolean },
): TableTensor[] {
  const out: TableTensor[] = [];
  for (const t of table.tensors.values()) {
    const part = partOf(t.name);
    if (part === undefined) continue;
    if (
      part === "embed"
        ? stage.embed
        : part === "head"
          ? stage.head
          : part >= stage.layerStart && part < stage.layerEnd
    )
      out.push(t);
  }
  return out;
}

export interface HeldParts {
  /** Every tensor of the model is here. */
  complete: boolean;
  layers: number[];
  embed: boolean;
  head: boolean;
}

/** Which parts of the model a checkpoint folder holds whole: all of them unless it is a partial checkpoint. */
export function heldParts(dir: string, table: ModelTable): HeldParts {
  const partial = existsSync(join(dir, manifestName));
  const held = partial ? new Set(Object.keys(readIndex(dir).weightMap)) : undefined;
  const whole = new Map<number | "embed" | "head", boolean>();
  for (const t of table.tensors.values()) {
    const part = partOf(t.name);
    if (part === undefined) continue;
    whole.set(part, (whole.get(part) ?? true) && (!held || held.has(t.name)));
  }
  const layers = [...whole.entries()]
    .filter(([part, all]) => typeof part === "number" && all)
    .map(([part]) => part as number)
    .sort((a, b) => a - b);
  const complete = !held || [...table.tensors.keys()].every((name) => held.has(name));
  return { complete, layers, embed: whole.get("embed") === true, head: whole.get("head") === true };
}
