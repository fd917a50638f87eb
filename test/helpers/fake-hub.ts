// A local stand-in for the Hugging Face hub's file API (the real one cannot be reached from tests): it serves a
// checkpoint folder as one model repository at one commit the way the hub does. Model info and the file tree
// (paged with Link headers) with git sha1 oids and LFS sha256s; resolve URLs that answer small files directly
// (ETag = git sha1, X-Repo-Commit) and redirect LFS files to a second origin, the "CDN" (X-Linked-Etag,
// X-Linked-Size), which serves ranges (206, Content-Range, 416). It never sends Xet headers, so clients take
// the plain HTTP path. Faults for tests: cut a body after N bytes, flip a byte of a body once, require a token.
import { createHash } from "node:crypto";
import { createReadStream, readdirSync, readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join, relative, sep } from "node:path";

export interface HubRequest {
  method: string;
  url: string;
  range?: string;
  authorization?: string;
  cdn: boolean;
}

export interface FakeHubOptions {
  folder: string;
  repoId?: string;
  commit?: string;
  /** Every request must carry `Authorization: Bearer <token>` (401 RepoNotFound otherwise, like the hub). */
  token?: string;
  /** Tree page size (the hub's is 1000). */
  pageSize?: number;
}

interface RepoFile {
  path: string;
  abs: string;
  size: number;
  oid: string;
  sha256?: string;
}

export interface FakeHub {
  url: string;
  repoId: string;
  commit: string;
  files: Map<string, RepoFile>;
  requests: HubRequest[];
  /** Bytes of file content the hub and the CDN sent (what a download costs). */
  bytesServed(): number;
  /** Cut the next bodies of `path` after `bytes` bytes (destroying the connection), `times` times. */
  cutAfter(path: string, bytes: number, times?: number): void;
  /** Flip one byte (at `at`, relative to the body) of the next body of `path`. */
  corruptOnce(path: string, at: number): void;
  /** Serve file bodies at most this fast (bytes per second; 0 = unthrottled). */
  throttle(bytesPerSecond: number): void;
  close(): Promise<void>;
}

export function gitBlobSha1(bytes: Buffer): string {
  return createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
}

function walk(dir: string, root = dir): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const abs = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...walk(abs, root));
    else if (entry.isFile()) out.push(relative(root, abs).split(sep).join("/"));
  }
  return out.sort();
}

function indexFolder(folder: string): Map<string, RepoFile> {
  const files = new Map<string, RepoFile>();
  for (const path of walk(folder)) {
    const abs = join(folder, path);
    const bytes = readFileSync(abs);
    if (path.endsWith(".safetensors")) {
      const sha256 = createHash("sha256").update(bytes).digest("hex");
      const pointer = Buffer.from(
        `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${bytes.length}\n`,
      );
      files.set(path, { path, abs, size: bytes.length, oid: gitBlobSha1(pointer), sha256 });
    } else files.set(path, { path, abs, size: bytes.length, oid: gitBlobSha1(bytes) });
  }
  return files;
}

function listen(server: Server): Promise<string> {
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`),
    ),
  );
}

export async function startFakeHub(opts: FakeHubOptions): Promise<FakeHub> {
  const repoId = opts.repoId ?? "test-org/tiny";
  const commit = opts.commit ?? "0123456789abcdef0123456789abcdef01234567";
  const pageSize = opts.pageSize ?? 1000;
  const files = indexFolder(opts.folder);
  const bySha = new Map([...files.values()].filter((f) => f.sha256).map((f) => [f.sha256!, f]));
  const requests: HubRequest[] = [];
  const cuts = new Map<string, { bytes: number; times: number }>();
  const corruptions = new Map<string, number>();
  let served = 0;
  let rate = 0;

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    const bytes = Buffer.from(JSON.stringify(body));
    res.writeHead(status, {
      "content-type": "application/json; charset=utf-8",
      "content-length": bytes.length,
      ...headers,
    });
    res.end(bytes);
  };
  const fail = (res: ServerResponse, status: number, code: string, message: string) =>
    json(res, status, { error: message }, { "x-error-code": code, "x-error-message": message });

  function sendFile(
    req: IncomingMessage,
    res: ServerResponse,
    file: RepoFile,
    headers: Record<string, string>,
  ): void {
    let start = 0;
    let end = file.size - 1;
    let status = 200;
    const extra: Record<string, string> = {};
    const range = req.headers.range;
    if (range) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m && m[1] === "" && m[2] !== "") start = Math.max(0, file.size - Number(m[2]));
      else if (m && m[1] !== "") {
        start = Number(m[1]);
        if (m[2] !== "") end = Math.min(Number(m[2]), file.size - 1);
      }
      if (!m || start >= file.size || start > end) {
        res.writeHead(416, { "content-range": `bytes */${file.size}` });
        res.end();
        return;
      }
      status = 206;
      extra["content-range"] = `bytes ${start}-${end}/${file.size}`;
    }
    const length = end - start + 1;
    res.writeHead(status, {
      "content-type": "application/octet-stream",
      "content-length": String(length),
      "accept-ranges": "bytes",
      ...headers,
      ...extra,
    });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    const cut = cuts.get(file.path);
    const cutAt = cut && cut.times > 0 ? cut.bytes : undefined;
    if (cut && cutAt !== undefined) cut.times--;
    const flipAt = corruptions.get(file.path);
    corruptions.delete(file.path);
    void pump(res, file, start, end, cutAt, flipAt);
  }

  async function pump(
    res: ServerResponse,
    file: RepoFile,
    start: number,
    end: number,
    cutAt?: number,
    flipAt?: number,
  ) {
    let sent = 0;
    const began = Date.now();
    for await (const piece of createReadStream(file.abs, { start, end, highWaterMark: 64 * 1024 })) {
      let chunk = piece as Buffer;
      if (flipAt !== undefined && flipAt >= sent && flipAt < sent + chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[flipAt - sent] ^= 0xff;
      }
      if (cutAt !== undefined && sent + chunk.length > cutAt) {
        res.write(chunk.subarray(0, cutAt - sent));
        served += cutAt - sent;
        await new Promise((r) => setTimeout(r, 20));
        res.socket?.destroy();
        return;
      }
      sent += chunk.length;
      served += chunk.length;
      if (!res.write(chunk)) await new Promise((r) => res.once("drain", r));
      if (rate > 0) {
        const wait = began + (sent / rate) * 1000 - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      if (res.destroyed) return;
    }
    res.end();
  }

  const treeEntry = (f: RepoFile, expand: boolean) => ({
    type: "file",
    oid: f.oid,
    size: f.size,
    path: f.path,
    ...(f.sha256 ? { lfs: { oid: f.sha256, size: f.size, pointerSize: 134 } } : {}),
    ...(expand ? { lastCommit: { id: commit, title: "upload", date: "2025-01-01T00:00:00.000Z" } } : {}),
  });

  const cdn = createServer((req, res) => {
    requests.push({
      method: req.method ?? "",
      url: req.url ?? "",
      range: req.headers.range,
      authorization: req.headers.authorization,
      cdn: true,
    });
    const m = /^\/cdn\/([0-9a-f]{64})$/.exec(new URL(req.url ?? "/", "http://x").pathname);
    const file = m ? bySha.get(m[1]) : undefined;
    if (!file) return fail(res, 404, "EntryNotFound", "no such object");
    sendFile(req, res, file, { etag: `"${file.sha256}"` });
  });
  const cdnBase = await listen(cdn);

  const hub = createServer(async (req, res) => {
    requests.push({
      method: req.method ?? "",
      url: req.url ?? "",
      range: req.headers.range,
      authorization: req.headers.authorization,
      cdn: false,
    });
    const url = new URL(req.url ?? "/", "http://x");
    const segments = url.pathname.split("/").map((s) => decodeURIComponent(s));
    if (opts.token && req.headers.authorization !== `Bearer ${opts.token}`)
      return fail(res, 401, "RepoNotFound", "Repository not found or you have no access");
    const rev = (r: string) => r === "main" || r === "HEAD" || r === commit;
    // /api/models/{org}/{name}/{revision|tree|paths-info}/{rev}[/...]
    if (segments[1] === "api" && segments[2] === "models") {
      if (`${segments[3]}/${segments[4]}` !== repoId)
        return fail(res, 401, "RepoNotFound", "Repository not found");
      if (!rev(segments[6] ?? ""))
        return fail(res, 404, "RevisionNotFound", `Invalid rev id: ${segments[6]}`);
      if (segments[5] === "revision")
        return json(res, 200, {
          _id: "0".repeat(24),
          id: repoId,
          sha: commit,
          private: false,
          gated: false,
          downloads: 0,
          likes: 0,
          lastModified: "2025-01-01T00:00:00.000Z",
          siblings: [...files.keys()].map((rfilename) => ({ rfilename })),
        });
      if (segments[5] === "tree") {
        const all = [...files.values()];
        const cursor = Number(url.searchParams.get("cursor") ?? 0);
        const page = all
          .slice(cursor, cursor + pageSize)
          .map((f) => treeEntry(f, url.searchParams.get("expand") === "true"));
        const headers: Record<string, string> = {};
        if (cursor + pageSize < all.length) {
          const next = new URL(req.url ?? "/", `http://${req.headers.host}`);
          next.searchParams.set("cursor", String(cursor + pageSize));
          headers.link = `<${next.href}>; rel="next"`;
        }
        return json(res, 200, page, headers);
      }
      if (segments[5] === "paths-info") {
        let body = "";
        for await (const c of req) body += c;
        const asked = (JSON.parse(body || "{}") as { paths?: string[]; expand?: boolean }) ?? {};
        return json(
          res,
          200,
          (asked.paths ?? [])
            .filter((p) => files.has(p))
            .map((p) => treeEntry(files.get(p)!, asked.expand === true)),
        );
      }
    }
    // /{org}/{name}/resolve/{rev}/{path...}
    if (segments[3] === "resolve" && (req.method === "GET" || req.method === "HEAD")) {
      if (`${segments[1]}/${segments[2]}` !== repoId)
        return fail(res, 401, "RepoNotFound", "Repository not found");
      if (!rev(segments[4] ?? ""))
        return fail(res, 404, "RevisionNotFound", `Invalid rev id: ${segments[4]}`);
      const file = files.get(segments.slice(5).join("/"));
      if (!file) return fail(res, 404, "EntryNotFound", "Entry not found");
      if (file.sha256) {
        res.writeHead(302, {
          location: `${cdnBase}/cdn/${file.sha256}`,
          "x-repo-commit": commit,
          "x-linked-etag": `"${file.sha256}"`,
          "x-linked-size": String(file.size),
          etag: `W/"${file.oid}"`,
          "content-length": "0",
        });
        return res.end();
      }
      return sendFile(req, res, file, { etag: `"${file.oid}"`, "x-repo-commit": commit });
    }
    fail(res, 404, "EntryNotFound", `no route for ${req.method} ${url.pathname}`);
  });
  const url = await listen(hub);
  return {
    url,
    repoId,
    commit,
    files,
    requests,
    bytesServed: () => served,
    cutAfter: (path, bytes, times = 1) => cuts.set(path, { bytes, times }),
    corruptOnce: (path, at) => corruptions.set(path, at),
    throttle: (bytesPerSecond) => {
      rate = bytesPerSecond;
    },
    close: async () => {
      for (const server of [hub, cdn]) {
        server.closeAllConnections();
        await new Promise((r) => server.close(r));
      }
    },
  };
}
