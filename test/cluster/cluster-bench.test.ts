// `cluster bench` against a real two-node cluster on loopback: it finds the plan, runs its streams through the
// API and prints its table and one JSON line with every figure; a prompt size past the window is skipped and
// said so; the warm agent turn is served from the prefix cache. Against no cluster it fails with a clear line.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, cliEntry, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";
import { runCommand } from "../helpers/run-command.js";

const home = mkdtempSync(join(tmpdir(), "cluster-bench-"));
const env = { STUDIO_CLUSTER_HOME: home };
const running: CliProcess[] = [];

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(home, { recursive: true, force: true });
});

describe("cluster bench", () => {
  it("measures a two-node cluster and prints the table and one JSON line", async () => {
    const model = await ensureModel("tiny", "tiny");
    const [grpcA, grpcB, apiA, apiB] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const common = ["up", "--model", model, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
    common.push("--memory-bandwidth", "50");
    const a = runCli(
      [...common, "--name", "alpha", "--port", String(grpcA), "--api-port", String(apiA)],
      env,
    );
    const b = runCli(
      [
        ...common,
        "--name",
        "beta",
        "--port",
        String(grpcB),
        "--api-port",
        String(apiB),
        "--peer",
        `127.0.0.1:${grpcA}`,
      ],
      env,
    );
    running.push(a, b);
    const apiUrl = `http://127.0.0.1:${apiA}`;
    const twoStages = (h: { state: string; plan?: { stages: unknown[] } }) =>
      h.state === "ready" && (h.plan?.stages.length ?? 0) === 2;
    // Either node may coordinate (the smaller random id does), and only the coordinator knows the plan.
    await Promise.any(
      [apiUrl, `http://127.0.0.1:${apiB}`].map((url) =>
        waitForHealth(url, twoStages, "a two-stage plan", [a, b], 90_000),
      ),
    );
    // Asked of the follower: it finds the coordinator's plan itself.
    const follower = `http://127.0.0.1:${apiB}`;
    const run = await runCommand(
      process.execPath,
      [
        cliEntry(),
        "bench",
        "--api",
        follower,
        "--tokens",
        "8",
        "--prompts",
        "64,256,1000000",
        "--agent",
        "256",
        "--runs",
        "1",
      ],
      { env: { ...process.env, ...env }, timeoutMs: 240_000 },
    );
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const lines = run.stdout.trim().split("\n");
    const figures = JSON.parse(lines[lines.length - 1]);
    expect(figures.bench).toBe("cluster");
    expect(figures.nodes.map((n: { name: string }) => n.name).sort()).toEqual(["alpha", "beta"]);
    expect(figures.decode_tps_1).toBeGreaterThan(0);
    expect(figures.decode_tps_4).toBeGreaterThan(0);
    expect(figures.prefill).toHaveLength(2);
    for (const p of figures.prefill) expect(p.tps).toBeGreaterThan(0);
    expect(figures.prefill[1].tokens).toBeGreaterThan(figures.prefill[0].tokens);
    expect(figures.agent_cached_tokens).toBeGreaterThan(0);
    expect(figures.hop_p50_us).toHaveLength(1);
    expect(run.stdout).toMatch(/prefill +1000000 tokens +skipped: past the window/);
    expect(run.stdout).toMatch(/decode, 1 stream +[\d.]+ tokens\/s/);
  }, 300_000);

  it("says clearly when no cluster answers", async () => {
    const nobody = await freePort();
    const r = spawnSync(process.execPath, [cliEntry(), "bench", "--api", `http://127.0.0.1:${nobody}`], {
      encoding: "utf8",
      env: { ...process.env, ...env },
      timeout: 30_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^cluster bench: .*(ECONNREFUSED|fetch failed)/m);
  });
});
