// The Hugging Face settings a user already has, read the way the hub's own tools read them: HF_ENDPOINT,
// HF_TOKEN (or the file `hf auth login` writes), HF_HUB_OFFLINE, and the cache folder (HF_HUB_CACHE, HF_HOME).
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

export interface HubEnv {
  /** Base URL of the hub, without a trailing slash. */
  endpoint: string;
  token?: string;
  /** HF_HUB_OFFLINE: never touch the network, use only local copies. */
  offline: boolean;
  /** Where downloads go: the Hugging Face hub cache. */
  cacheDir: string;
  /** Every hub cache folder to look in for a local copy, the download folder first. */
  lookupDirs: string[];
  /** The home folder (LM Studio's models are found from it). */
  home: string;
}

const truthy = new Set(["1", "ON", "YES", "TRUE"]);

function hfHome(env: NodeJS.ProcessEnv, home: string): string {
  return env.HF_HOME || join(env.XDG_CACHE_HOME || join(home, ".cache"), "huggingface");
}

function readTokenFile(env: NodeJS.ProcessEnv, home: string): string | undefined {
  const file = env.HF_TOKEN_PATH || join(hfHome(env, home), "token");
  if (!existsSync(file)) return undefined;
  const token = readFileSync(file, "utf8").trim();
  return token || undefined;
}

export function hubEnv(env: NodeJS.ProcessEnv = process.env): HubEnv {
  const home = env.HOME || homedir();
  const endpoint = (env.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, "");
  const token = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || readTokenFile(env, home);
  const offline = truthy.has((env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE ?? "").toUpperCase());
  const cacheDir = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE || join(hfHome(env, home), "hub");
  const candidates = [
    cacheDir,
    env.HUGGINGFACE_HUB_CACHE,
    env.HF_HOME && join(env.HF_HOME, "hub"),
    join(env.XDG_CACHE_HOME || join(home, ".cache"), "huggingface", "hub"),
  ].filter((d): d is string => Boolean(d));
  return { endpoint, token, offline, cacheDir, lookupDirs: [...new Set(candidates)], home };
}
