// The hub over HTTP. Metadata (the commit a revision names, the file list with sizes and hashes) goes through the
// official client, @huggingface/hub; file bytes through resolve URLs that we fetch ourselves, because its
// downloads cannot resume, verify or report progress (docs/weights.md). Redirects are followed by hand so the
// token only ever goes to the hub's own origin (the CDN's URLs are pre-signed).
import { HubApiError, listFiles, modelInfo } from "@huggingface/hub";
import type { HubEnv } from "./hub-env.js";

export interface HubFile {
  path: string;
  size: number;
  /** Git blob sha1: the cache's blob name for a regular file. */
  oid: string;
  /** sha256 of an LFS file: its blob name and its checksum. */
  sha256?: string;
}

/** The blob name (and checksum) the cache uses for a file. */
export function etagOf(file: HubFile): string {
  return file.sha256 ?? file.oid;
}

const maxRedirects = 5;

export class HubClient {
  private readonly origin: string;

  constructor(readonly env: HubEnv) {
    if (env.token && !env.token.startsWith("hf_"))
      throw new Error("HF_TOKEN does not look like a Hugging Face access token (they start with hf_)");
    this.origin = new URL(env.endpoint).origin;
  }

  private credentials(): { hubUrl: string; accessToken?: string } {
    return { hubUrl: this.env.endpoint, ...(this.env.token ? { accessToken: this.env.token } : {}) };
  }

  /** The commit a branch, tag or commit names on the hub. */
  async commitOf(repo: string, revision: string): Promise<string> {
    try {
      const info = await modelInfo({
        name: repo,
        revision,
        additionalFields: ["sha"],
        ...this.credentials(),
      });
      if (!info.sha) throw new Error(`the hub did not say which commit ${repo}@${revision} is`);
      return info.sha;
    } catch (err) {
      throw this.explain(err, `${repo}@${revision}`);
    }
  }

  /** Every file of the repository at a commit, with sizes and hashes. */
  async files(repo: string, commit: string): Promise<HubFile[]> {
    const out: HubFile[] = [];
    try {
      for await (const entry of listFiles({
        repo,
        revision: commit,
        recursive: true,
        ...this.credentials(),
      })) {
        if (entry.type !== "file") continue;
        out.push({ path: entry.path, size: entry.size, oid: entry.oid ?? "", sha256: entry.lfs?.oid });
      }
    } catch (err) {
      throw this.explain(err, `${repo}@${commit}`);
    }
    return out;
  }

  resolveUrl(repo: string, commit: string, path: string): string {
    const encoded = path.split("/").map(encodeURIComponent).join("/");
    return `${this.env.endpoint}/${repo}/resolve/${encodeURIComponent(commit)}/${encoded}`;
  }

  /** GET a file's bytes (a range of them when asked), following redirects; errors name the file. */
  async get(
    repo: string,
    commit: string,
    path: string,
    range?: string,
    signal?: AbortSignal,
  ): Promise<Response> {
    let url = this.resolveUrl(repo, commit, path);
    for (let hop = 0; hop <= maxRedirects; hop++) {
      const headers: Record<string, string> = { "accept-encoding": "identity" };
      if (range) headers.range = range;
      if (this.env.token && new URL(url).origin === this.origin)
        headers.authorization = `Bearer ${this.env.token}`;
      const response = await fetch(url, { redirect: "manual", headers, signal });
      const location = response.headers.get("location");
      if (response.status >= 300 && response.status < 400 && location) {
        await response.body?.cancel();
        url = new URL(location, url).href;
        continue;
      }
      if (response.status >= 400) {
        const code = response.headers.get("x-error-code");
        await response.body?.cancel();
        throw new HubHttpError(
          response.status,
          `${repo}/${path}: the hub answered ${response.status}${code ? ` (${code})` : ""}${authHint(response.status, this.env)}`,
        );
      }
      return response;
    }
    throw new Error(`${repo}/${path}: more than ${maxRedirects} redirects`);
  }

  private explain(err: unknown, what: string): Error {
    if (err instanceof HubApiError) {
      const message = `${what}: the hub at ${this.env.endpoint} answered ${err.statusCode} (${err.message})${authHint(err.statusCode, this.env)}`;
      return new HubHttpError(err.statusCode, message);
    }
    const cause = (err as { cause?: { code?: string } })?.cause?.code;
    if (err instanceof TypeError && cause)
      return new Error(
        `${what}: cannot reach the hub at ${this.env.endpoint} (${cause}); set HF_HUB_OFFLINE=1 to use only local copies`,
      );
    return err instanceof Error ? err : new Error(String(err));
  }
}

export class HubHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }

  /** Trying again will not help (except for throttling). */
  get permanent(): boolean {
    return this.status >= 400 && this.status < 500 && this.status !== 429 && this.status !== 408;
  }
}

function authHint(status: number, env: HubEnv): string {
  if (status !== 401 && status !== 403) return "";
  return env.token
    ? ": the token in HF_TOKEN has no access to it (a gated model needs its terms accepted on the hub)"
    : ": it may be private or gated; set HF_TOKEN to an access token that may read it";
}
