// Hub models without the internet: a local server speaking the hub's file API (test/helpers/fake-hub.ts) stands
// in for the hub; `cluster pull` (a real process) and the resolver talk to it through the real hub client.
// Download with resume after a kill; HF_HUB_OFFLINE with a complete cache; a cache another client wrote (the
// official @huggingface/hub) and an LM Studio folder used without a download; a corrupted byte caught.
import { createHash } from "node:crypto";
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { snapshotDownload } from "@huggingface/hub";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hubEnv } from "../../weights/hub-env.js";
import { pullSnapshot } from "../../weights/pull.js";
import { resolveModel } from "../../weights/resolve.js";
import { runCli } from "../helpers/cluster-up.js";
import { type FakeHub, startFakeHub } from "../helpers/fake-hub.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const token = "hf_test_token_for_the_fake_hub";
const work = mkdtempSync(join(tmpdir(), "hub-pull-"));
let source: string;
let hub: FakeHub;

beforeAll(async () => {
  source = await ensureModel("tiny", "tiny");
  hub = await startFakeHub({ folder: source, token, pageSize: 3 });
});

afterAll(async () => {
  await hub?.close();
  rmSync(work, { recursive: true, force: true });
});

function envFor(cache: string, extra: Record<string, string> = {}): Record<string, string> {
  return { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_TOKEN: token, HOME: join(work, "home"), ...extra };
}

function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Every source file is in the snapshot, as a relative link to a blob named by its hash, with equal bytes. */
function expectSnapshot(cache: string): string {
  const repoDir = join(cache, "models--test-org--tiny");
  expect(readFileSync(join(repoDir, "refs", "main"), "utf8")).toBe(hub.commit);
  const snapshot = join(repoDir, "snapshots", hub.commit);
  for (const file of readdirSync(source)) {
    const pointer = join(snapshot, file);
    expect(lstatSync(pointer).isSymbolicLink(), file).toBe(true);
    const entry = hub.files.get(file)!;
    expect(readlinkSync(pointer)).toBe(`../../blobs/${entry.sha256 ?? entry.oid}`);
    expect(sha256(pointer), file).toBe(sha256(join(source, file)));
  }
  expect(readdirSync(join(repoDir, "blobs")).filter((b) => b.endsWith(".incomplete"))).toEqual([]);
  return snapshot;
}

const shard = "model-00001-of-00002.safetensors";

describe("cluster pull against a local hub", () => {
  it("resumes a download killed mid-file with a Range request and ends with verified blobs", async () => {
    const cache = join(work, "cache-resume");
    hub.throttle(300_000);
    const first = runCli(["pull", "test-org/tiny"], envFor(cache));
    const blobs = join(cache, "models--test-org--tiny", "blobs");
    const partial = join(blobs, `${hub.files.get(shard)!.sha256}.incomplete`);
    const deadline = Date.now() + 30_000;
    while (!(existsSync(partial) && statSync(partial).size > 100_000)) {
      if (Date.now() > deadline || first.child.exitCode !== null)
        throw new Error(`no partial download:\n${first.output()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    first.child.kill("SIGKILL");
    await first.exited;
    const kept = statSync(partial).size;
    hub.throttle(0);
    const before = hub.requests.length;
    const second = runCli(["pull", "test-org/tiny"], envFor(cache));
    expect(await second.exited, second.output()).toBe(0);
    const resumed = hub.requests.slice(before).filter((r) => r.cdn && r.range?.startsWith("bytes="));
    console.log(
      `killed with ${kept} bytes of ${shard} on disk; the rerun asked ${resumed.map((r) => r.range).join(", ")}`,
    );
    expect(resumed.some((r) => Number(/bytes=(\d+)-/.exec(r.range!)![1]) >= kept)).toBe(true);
    // The CDN's pre-signed URLs never see the token; the hub's own origin always does.
    expect(hub.requests.filter((r) => r.cdn && r.authorization)).toEqual([]);
    expect(second.stdout.join("\n")).toMatch(/downloaded \d+ bytes: test-org\/tiny@/);
    expectSnapshot(cache);
  });

  it("HF_HUB_OFFLINE=1 uses a complete cache without a request, and names what is missing otherwise", async () => {
    const cache = join(work, "cache-offline");
    await pullSnapshot(
      { repo: "test-org/tiny", revision: "main", explicitRevision: false },
      { env: hubEnv(envFor(cache)) },
    );
    const before = hub.requests.length;
    const offline = runCli(["pull", "test-org/tiny"], envFor(cache, { HF_HUB_OFFLINE: "1" }));
    expect(await offline.exited, offline.output()).toBe(0);
    expect(offline.stdout.join("\n")).toContain("already complete in the cache");
    const resolved = await resolveModel("test-org/tiny", {
      env: hubEnv(envFor(cache, { HF_HUB_OFFLINE: "1" })),
      home: join(work, "sc-home"),
    });
    expect(resolved).toMatchObject({ how: "hf-cache", dir: expectSnapshot(cache) });
    expect(hub.requests.length).toBe(before);

    // A truncated blob makes the copy incomplete: offline, that is a clear error, not a broken model.
    const blob = join(cache, "models--test-org--tiny", "blobs", hub.files.get(shard)!.sha256!);
    const bytes = readFileSync(blob);
    rmSync(blob);
    writeFileSync(blob, bytes.subarray(0, 1000));
    const refused = runCli(["pull", "test-org/tiny"], envFor(cache, { HF_HUB_OFFLINE: "1" }));
    expect(await refused.exited).toBe(1);
    expect(refused.stderr.join("\n")).toMatch(
      /HF_HUB_OFFLINE is set and test-org\/tiny@main is not complete/,
    );
    expect(hub.requests.length).toBe(before);
  });

  it("uses a cache written by another hub client, and an LM Studio copy, without downloading", async () => {
    const cache = join(work, "cache-other-tool");
    // The official JS client fills the cache in the Python-compatible layout.
    await snapshotDownload({ repo: "test-org/tiny", cacheDir: cache, hubUrl: hub.url, accessToken: token });
    const served = hub.bytesServed();
    const resolved = await resolveModel("test-org/tiny", {
      env: hubEnv(envFor(cache)),
      home: join(work, "sc-home"),
    });
    expect(resolved.how).toBe("hf-cache");
    const pulled = runCli(["pull", "test-org/tiny"], envFor(cache));
    expect(await pulled.exited, pulled.output()).toBe(0);
    expect(pulled.stdout.join("\n")).toContain("already complete in the cache");
    expect(hub.bytesServed()).toBe(served);

    const home = join(work, "lmstudio-home");
    mkdirSync(join(home, ".lmstudio", "models", "test-org"), { recursive: true });
    cpSync(source, join(home, ".lmstudio", "models", "test-org", "tiny"), { recursive: true });
    const before = hub.requests.length;
    const lm = await resolveModel("test-org/tiny", {
      env: hubEnv({ HF_HUB_CACHE: join(work, "empty"), HOME: home }),
      home: join(work, "sc-home"),
    });
    expect(lm).toMatchObject({ how: "lmstudio", dir: join(home, ".lmstudio", "models", "test-org", "tiny") });
    // LM Studio copies have no revision: an explicit one is not taken from there.
    await expect(
      resolveModel("test-org/tiny@v2", {
        env: hubEnv({ HF_HUB_CACHE: join(work, "empty"), HOME: home, HF_HUB_OFFLINE: "1" }),
        home: join(work, "sc-home"),
      }),
    ).rejects.toThrow(/HF_HUB_OFFLINE is set/);
    expect(hub.requests.length).toBe(before);
  });

  it("catches a corrupted byte by its sha256, discards the file and downloads it again", async () => {
    const cache = join(work, "cache-corrupt");
    hub.corruptOnce(shard, 12_345);
    const lines: string[] = [];
    const env = hubEnv(envFor(cache));
    await pullSnapshot(
      { repo: "test-org/tiny", revision: "main", explicitRevision: false },
      { env, log: (l) => lines.push(l), retryDelayMs: 10 },
    );
    console.log(lines.join("\n"));
    expect(lines.join("\n")).toMatch(
      /downloaded bytes have sha256 [0-9a-f]{64}, the hub lists [0-9a-f]{64} \(corrupted in transit; discarded\)/,
    );
    expectSnapshot(cache);
  });

  it("names the problem when the hub refuses (no token for a private or gated model)", async () => {
    const pulled = runCli(["pull", "test-org/tiny"], { ...envFor(join(work, "cache-denied")), HF_TOKEN: "" });
    expect(await pulled.exited).toBe(1);
    expect(pulled.stderr.join("\n")).toMatch(/answered 401.*set HF_TOKEN/);
    const bad = runCli(["pull", "not a model"], envFor(join(work, "cache-denied")));
    expect(await bad.exited).toBe(1);
    expect(bad.stderr.join("\n")).toContain('"not a model" is not a Hugging Face model id');
  });
});
