// `cluster doctor` as a user runs it, on this Linux machine: every check passes where it should, and each one
// that can be broken here for real is broken and must say so with its fix: a truncated shard, a context that
// needs more machines, a peer nobody listens on, a disk that is full (a 1 MB tmpfs), a network namespace with
// no multicast route and only loopback; and against a running one-node cluster, versions and clocks. The macOS
// branches run on recorded outputs in test/unit/doctor-checks.test.ts.
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CheckResult } from "../../cli/doctor/checks.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { packageVersion } from "../../common/paths.js";
import { cpuInfo } from "../../native/index.js";
import { type CliProcess, cliEntry, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const home = mkdtempSync(join(tmpdir(), "doctor-"));
const env = { STUDIO_CLUSTER_HOME: home };
const running: CliProcess[] = [];
/** An HTTP address nobody answers on. */
let closedApi = "";

beforeAll(async () => {
  closedApi = `http://127.0.0.1:${await freePort()}`;
});

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(home, { recursive: true, force: true });
});

interface DoctorRun {
  code: number | null;
  checks: Map<string, CheckResult>;
  raw: string;
}

function doctor(args: string[], prefix: string[] = [], extraEnv: NodeJS.ProcessEnv = {}): DoctorRun {
  const [command, ...rest] = prefix.length > 0 ? prefix : [process.execPath];
  const argv = [
    ...rest,
    ...(prefix.length > 0 ? [process.execPath] : []),
    cliEntry(),
    "doctor",
    "--json",
    ...args,
  ];
  const r = spawnSync(command, argv, {
    env: { ...process.env, ...env, ...extraEnv },
    encoding: "utf8",
    timeout: 60_000,
  });
  const raw = `${r.stdout}\n${r.stderr}`;
  let parsed: { ok: boolean; checks: CheckResult[] };
  try {
    parsed = JSON.parse(r.stdout);
  } catch {
    throw new Error(`doctor printed no JSON (exit ${r.status}):\n${raw}`);
  }
  expect(parsed.ok).toBe(r.status === 0);
  return { code: r.status, checks: new Map(parsed.checks.map((c) => [c.id, c])), raw };
}

function expectCheck(run: DoctorRun, id: string, status: string, detail?: RegExp, fix?: RegExp): void {
  const check = run.checks.get(id);
  expect(check, `${id} missing:\n${run.raw}`).toBeDefined();
  expect(check?.status, `${id}: ${JSON.stringify(check)}`).toBe(status);
  if (detail) expect(check?.detail).toMatch(detail);
  if (fix) expect(check?.fix).toMatch(fix);
  if (status === "fail" || status === "warn") expect(check?.fix).toBeTruthy();
}

describe("cluster doctor on this machine", () => {
  it("passes a complete model and says what it needs; a closed peer port fails with its fix", async () => {
    const model = await ensureModel("tiny", "tiny");
    const run = doctor(["--model", model, "--peer", "127.0.0.1:1", "--api", closedApi]);
    expect(run.code).toBe(1);
    expectCheck(run, "node", "ok", /^v\d+/);
    // The addon's cpu kernels as this process loaded them (an x86 build without AVX2 would be a warning).
    const simd = cpuInfo().simd;
    expectCheck(
      run,
      "engine",
      simd === "portable" ? "warn" : "ok",
      new RegExp(`backends cpu.*cpu kernels ${simd}`),
    );
    expectCheck(run, "model", "ok", /complete/);
    expectCheck(run, "memory", "ok", /MemAvailable.*fits on this machine alone/);
    expectCheck(run, "gpu-wired-limit", "skip", /not a Mac/);
    expectCheck(run, "disk", "ok");
    expectCheck(run, "multicast", "ok", /came back/);
    expectCheck(run, "peers", "fail", /127\.0\.0\.1:1 \(--peer\): ECONNREFUSED/, /nothing listens/);
    expectCheck(run, "cluster", "skip", /no node answers/);
  });

  it("a truncated shard fails by name; a context too large for one machine says how many it needs", async () => {
    const model = await ensureModel("tiny", "tiny");
    const broken = join(home, "broken-model");
    cpSync(model, broken, { recursive: true });
    const shard = readdirSync(broken).find((f) => f.endsWith(".safetensors"));
    if (!shard) throw new Error("the tiny model has no .safetensors file");
    truncateSync(join(broken, shard), Math.floor(statSync(join(broken, shard)).size / 2));
    const run = doctor(["--model", broken, "--no-bonjour", "--api", closedApi]);
    expect(run.code).toBe(1);
    expectCheck(run, "model", "fail", new RegExp(shard.replace(/[.]/g, "\\.")), /download it again/);
    expectCheck(run, "multicast", "skip");

    const huge = doctor(["--model", model, "--context", "16000000", "--no-bonjour", "--api", closedApi]);
    expectCheck(huge, "memory", "warn", /about \d+ machines like this one/, /more machine/);
    // With the f16 KV cache cluster up would run, the same context needs half the KV bytes.
    const kvOf = (run: DoctorRun) =>
      Number(/KV [\d.]+ GB \((\d+) B\)/.exec(run.checks.get("memory")?.detail ?? "")?.[1]);
    const half = doctor([
      "--model",
      model,
      "--context",
      "16000000",
      "--kv-dtype",
      "f16",
      "--no-bonjour",
      "--api",
      closedApi,
    ]);
    expect(kvOf(huge)).toBeGreaterThan(0);
    expect(kvOf(half) * 2).toBe(kvOf(huge));
  });

  const root = process.platform === "linux" && process.getuid?.() === 0;
  const unshare = spawnSync("unshare", ["--version"]).status === 0;
  const ipOk = spawnSync("ip", ["-V"]).status === 0;

  it("a full disk fails with its fix (a 1 MB tmpfs as the cluster home, in a mount namespace)", () => {
    if (!root || !unshare) {
      console.warn(
        "skipping the full-disk doctor check: it needs root and unshare(1) to mount a small tmpfs",
      );
      return;
    }
    const small = join(home, "small");
    mkdirSync(small);
    const script = `mount -t tmpfs -o size=1m tmpfs ${small} && exec "$@"`;
    const run = doctor(["--no-bonjour", "--api", closedApi], ["unshare", "-m", "sh", "-c", script, "sh"], {
      STUDIO_CLUSTER_HOME: small,
    });
    expectCheck(run, "disk", "fail", /free at .*small: too little/, /larger disk/);
  });

  it("in a network namespace with no interface up: multicast fails and interfaces warn, each with a fix", () => {
    if (!root || !ipOk) {
      console.warn("skipping the namespace doctor check: it needs root and iproute2");
      return;
    }
    const ns = `scdoc${process.pid}`;
    if (spawnSync("ip", ["netns", "add", ns]).status !== 0) {
      console.warn("skipping the namespace doctor check: cannot create a network namespace here");
      return;
    }
    try {
      // Not even loopback up: no interface can carry multicast (with lo up, the kernel loops it back to us).
      const run = doctor(["--timeout", "2000", "--api", closedApi], ["ip", "netns", "exec", ns]);
      expect(run.code).toBe(1);
      expectCheck(run, "multicast", "fail", /did not come back/, /UDP 5353|--peer/);
      expectCheck(run, "interfaces", "warn", /only loopback/);
    } finally {
      spawnSync("ip", ["netns", "delete", ns]);
    }
  });

  it("cluster up warns, with the fix, when its own Bonjour announcement never comes back", async () => {
    if (!root || !ipOk) {
      console.warn("skipping the cluster up multicast warning check: it needs root and iproute2");
      return;
    }
    const ns = `scdup${process.pid}`;
    if (spawnSync("ip", ["netns", "add", ns]).status !== 0) {
      console.warn("skipping the cluster up multicast warning check: cannot create a network namespace here");
      return;
    }
    const model = await ensureModel("tiny", "tiny");
    const node = runCli(["up", "--model", model, "--key", generateClusterKey(), "--threads", "1"], env, [
      "ip",
      "netns",
      "exec",
      ns,
    ]);
    running.push(node);
    try {
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline && !node.stderr.some((l) => l.includes("fix:"))) await sleep(200);
      const printed = node.stderr.join("\n");
      expect(printed, node.output()).toMatch(/warning: our own Bonjour announcement did not come back/);
      expect(printed).toMatch(/fix: .*--peer/);
    } finally {
      await node.stop("SIGKILL");
      spawnSync("ip", ["netns", "delete", ns]);
    }
  });

  it("against a running node: every node's version and clock", async () => {
    const model = await ensureModel("tiny", "tiny");
    const [grpc, api] = [await freePort(), await freePort()];
    const apiUrl = `http://127.0.0.1:${api}`;
    const node = runCli(
      ["up", "--model", model, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"].concat([
        "--port",
        String(grpc),
        "--api-port",
        String(api),
      ]),
      env,
    );
    running.push(node);
    await waitForHealth(
      apiUrl,
      (h) => h.state === "ready" && h.nodes.every((n) => n.clockSkewMs !== undefined),
      "ready",
      node,
    );
    const run = doctor(["--model", model, "--no-bonjour", "--peer", `127.0.0.1:${grpc}`, "--api", apiUrl]);
    expectCheck(run, "peers", "ok", /connected in \d+ ms/);
    expectCheck(
      run,
      "cluster",
      "ok",
      new RegExp(`1 node\\(s\\), state ready .*; every node runs ${packageVersion()}; clocks within`),
    );
    expect(run.code).toBe(0);
  });
});
