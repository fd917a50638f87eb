// What `--model` names: a checkpoint folder, or a Hugging Face repository id with an optional revision
// (org/name, org/name@main, org/name@<commit>).
import { existsSync, statSync } from "node:fs";
import { resolve } from "node:path";

export interface HubRef {
  repo: string;
  /** Branch, tag or commit; "main" when not given. */
  revision: string;
  /** The revision was given explicitly (LM Studio copies have none, so they only match an implicit one). */
  explicitRevision: boolean;
}

export type ModelRef = { kind: "folder"; dir: string } | ({ kind: "hub" } & HubRef);

// The hub's own rule: letters, digits, "-", "_", "."; no "--" or ".." (its cache folder names rely on it).
const part = "[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?";
const hubId = new RegExp(`^(${part})/(${part})(?:@([A-Za-z0-9._/-]+))?$`);

export function parseHubRef(value: string): HubRef | undefined {
  const m = hubId.exec(value);
  if (!m || value.includes("--") || value.includes("..")) return undefined;
  return { repo: `${m[1]}/${m[2]}`, revision: m[3] ?? "main", explicitRevision: m[3] !== undefined };
}

/** A folder that exists wins over a hub id of the same spelling; anything else is a clear error. */
export function parseModelRef(value: string): ModelRef {
  if (existsSync(value)) {
    if (!statSync(value).isDirectory()) throw new Error(`--model ${value}: not a folder`);
    return { kind: "folder", dir: resolve(value) };
  }
  const hub = parseHubRef(value);
  if (hub) return { kind: "hub", ...hub };
  throw new Error(
    `--model ${value}: no such folder, and not a Hugging Face model id (org/name or org/name@revision)`,
  );
}

/** The model id the cluster compares: the repository's name (what a folder copy of it is called too). */
export function modelIdOfRepo(repo: string): string {
  return repo.split("/")[1];
}

export function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision);
}
