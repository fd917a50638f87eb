// The cluster key (the shared secret every gRPC call carries) and the node's own stable id, both kept in the
// studio-cluster home folder ($STUDIO_CLUSTER_HOME or ~/.studio-cluster) with owner-only permissions.
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

const KEY_FILE = "cluster.key";
const KEY_PATTERN = /^[A-Za-z0-9_-]{24,128}$/;

/** $STUDIO_CLUSTER_HOME, else ~/.studio-cluster. */
export function clusterHome(): string {
  const fromEnv = process.env.STUDIO_CLUSTER_HOME;
  return fromEnv && fromEnv.length > 0 ? fromEnv : join(homedir(), ".studio-cluster");
}

function ensureHome(home: string): void {
  mkdirSync(home, { recursive: true, mode: 0o700 });
}

/** Throws a message naming the key's problem; keys are 24-128 characters of [A-Za-z0-9_-]. */
export function validateClusterKey(key: string): string {
  const trimmed = key.trim();
  if (!KEY_PATTERN.test(trimmed))
    throw new Error(
      `cluster key is invalid: expected 24 to 128 characters of A-Z a-z 0-9 _ - (got ${trimmed.length} characters)`,
    );
  return trimmed;
}

/** 32 random bytes, base64url: 43 characters, safe on a command line. */
export function generateClusterKey(): string {
  return randomBytes(32).toString("base64url");
}

/**
 * The public cluster id published in Bonjour TXT records: a one-way digest of the key, so nodes that share a
 * key recognise each other without the secret ever leaving the machine.
 */
export function clusterIdOf(key: string): string {
  return createHash("sha256").update(`studio-cluster-id:${key}`).digest("hex").slice(0, 16);
}

/** Writes a file that only the owner can read, whatever the umask. */
function writePrivateFile(file: string, text: string): void {
  const fd = openSync(file, "w", 0o600);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  chmodSync(file, 0o600);
}

export interface ClusterKeyInfo {
  key: string;
  clusterId: string;
  /** True when this call generated the key: the caller prints it once, with the command that joins others. */
  created: boolean;
  file: string;
}

/**
 * The key given on the command line (stored for later starts), else the stored key, else a new one.
 * A given key that differs from the stored one replaces it: the node moves to that cluster.
 */
export function loadOrCreateClusterKey(opts: { home?: string; key?: string } = {}): ClusterKeyInfo {
  const home = opts.home ?? clusterHome();
  ensureHome(home);
  const file = join(home, KEY_FILE);
  if (opts.key !== undefined) {
    const key = validateClusterKey(opts.key);
    const stored = existsSync(file) ? readFileSync(file, "utf8").trim() : undefined;
    if (stored !== key) writePrivateFile(file, `${key}\n`);
    return { key, clusterId: clusterIdOf(key), created: false, file };
  }
  if (existsSync(file)) {
    const stored = readFileSync(file, "utf8");
    let key: string;
    try {
      key = validateClusterKey(stored);
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}; delete the file or pass --key`);
    }
    return { key, clusterId: clusterIdOf(key), created: false, file };
  }
  const key = generateClusterKey();
  writePrivateFile(file, `${key}\n`);
  return { key, clusterId: clusterIdOf(key), created: true, file };
}

/** The environment variable a node reads its cluster key from (never seen by `ps`, unlike --key). */
export const CLUSTER_KEY_ENV = "STUDIO_CLUSTER_KEY";

export interface GivenKey {
  key?: string;
  /** Where it came from, for messages: "--key", "--key-file PATH" or the environment variable. */
  from?: string;
}

/**
 * The key the operator gave, if any: --key, else --key-file PATH (its first line), else $STUDIO_CLUSTER_KEY.
 * --key and --key-file together are refused; a key file others can read is refused like ssh refuses one.
 */
export function givenClusterKey(
  opts: { key?: string; keyFile?: string },
  env: NodeJS.ProcessEnv = process.env,
): GivenKey {
  if (opts.key !== undefined && opts.keyFile !== undefined)
    throw new Error("give the cluster key once: --key or --key-file, not both");
  if (opts.key !== undefined) return { key: opts.key, from: "--key" };
  if (opts.keyFile !== undefined)
    return { key: readKeyFile(opts.keyFile), from: `--key-file ${opts.keyFile}` };
  const fromEnv = env[CLUSTER_KEY_ENV];
  if (fromEnv !== undefined && fromEnv.trim() !== "") return { key: fromEnv, from: CLUSTER_KEY_ENV };
  return {};
}

function readKeyFile(file: string): string {
  let text: string;
  try {
    if ((statSync(file).mode & 0o077) !== 0)
      throw new Error(
        `others can read it (mode ${(statSync(file).mode & 0o777).toString(8)}); chmod 600 ${file}`,
      );
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`--key-file ${file}: ${(err as Error).message}`);
  }
  try {
    return validateClusterKey(text.split("\n")[0] ?? "");
  } catch (err) {
    throw new Error(`--key-file ${file}: ${(err as Error).message}`);
  }
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * What identifies one process for its whole life: its start time as the system reports it, or "zombie" for a
 * process that has exited but was not reaped yet, or undefined when there is no such process. A pid alone is
 * not enough: after `kill -9` (or a reboot) the old pid may be a zombie, or belong to another process.
 */
export function processStamp(pid: number): string | undefined {
  if (!pidAlive(pid)) return undefined;
  if (process.platform === "linux") {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // Fields after "(comm)": state is the 3rd field of the line, starttime the 22nd.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      return fields[0] === "Z" || fields[0] === "X" ? "zombie" : `linux:${fields[19]}`;
    } catch {
      return undefined; // gone meanwhile
    }
  }
  const ps = spawnSync("ps", ["-o", "stat=,lstart=", "-p", String(pid)], { encoding: "utf8" });
  const line = ps.stdout?.trim() ?? "";
  if (ps.status !== 0 || line === "") return ps.error ? "unknown" : undefined;
  return line.startsWith("Z") ? "zombie" : `ps:${line.slice(line.indexOf(" ") + 1).trim()}`;
}

/** Whether the lock file's holder ("pid stamp", or a bare pid from older versions) is still that process. */
function holderAlive(text: string): boolean {
  const [pidText, ...stampParts] = text.trim().split(" ");
  const pid = Number.parseInt(pidText ?? "", 10);
  const now = processStamp(pid);
  if (now === undefined || now === "zombie") return false;
  const recorded = stampParts.join(" ");
  return recorded === "" || now === "unknown" || now === recorded;
}

/** Takes the lock file for an instance unless the live process that wrote it holds it. */
function tryLock(lockFile: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockFile, "wx", 0o600);
      writeSync(fd, `${process.pid} ${processStamp(process.pid) ?? ""}`.trim());
      closeSync(fd);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const text = readFileSync(lockFile, "utf8");
      if (Number.parseInt(text, 10) === process.pid || holderAlive(text)) return false;
      // A stale lock: its process died (kill -9) and its pid is gone, a zombie, or another process's now.
      rmSync(lockFile, { force: true });
    }
  }
  return false;
}

export interface NodeIdentity {
  nodeId: string;
  /** The instance slot actually used (e.g. "port-7100", "default-2"). */
  instance: string;
  /** Frees the instance slot (the id file stays, so the next start gets the same id). */
  release(): void;
}

function sanitizeInstance(instance: string): string {
  const clean = instance.replace(/[^A-Za-z0-9_.-]/g, "_");
  return clean.length > 0 ? clean : "default";
}

/**
 * The node id for one instance slot (one per gRPC port or name), stable across restarts. Two live processes
 * never share a slot: the second one on the same slot gets "<slot>-2", and so on.
 */
export function claimNodeId(opts: { home?: string; instance: string }): NodeIdentity {
  const home = opts.home ?? clusterHome();
  const dir = join(home, "nodes");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const base = sanitizeInstance(opts.instance);
  for (let n = 1; n <= 64; n++) {
    const instance = n === 1 ? base : `${base}-${n}`;
    const lockFile = join(dir, `${instance}.pid`);
    if (!tryLock(lockFile)) continue;
    const idFile = join(dir, `${instance}.id`);
    let nodeId = existsSync(idFile) ? readFileSync(idFile, "utf8").trim() : "";
    if (!/^[0-9a-f]{16}$/.test(nodeId)) {
      nodeId = randomBytes(8).toString("hex");
      writePrivateFile(idFile, `${nodeId}\n`);
    }
    let released = false;
    return {
      nodeId,
      instance,
      release() {
        if (released) return;
        released = true;
        rmSync(lockFile, { force: true });
      },
    };
  }
  throw new Error(`${dir}: more than 64 live instances named "${base}"; stop some or pass --name`);
}
