// `cluster up --matmul-inputs int8 --kv-dtype f16` on a real process: the node opens its shard in the cpu
// backend's int8 precision mode (its log names it where the build has the kernels) with an f16 KV cache (named
// too) and serves a chat completion; a mode or dtype it does not know is refused before anything starts, naming
// the choices. Its prefix cache's disk tier gets a folder of its own (KV computed in the mode differs from the
// default mode's, and f16 blocks have half the bytes per position).
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { readModelConfig } from "../../common/model-config.js";
import { cpuInfo } from "../../native/index.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "cpu-precision-"));
let node: CliProcess | undefined;
let apiUrl = "";
let modelDir = "";

beforeAll(async () => {
  modelDir = await ensureModel("tiny", "tiny");
  const port = await freePort();
  apiUrl = `http://127.0.0.1:${port}`;
  const args = ["up", "--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  args.push("--port", String(await freePort()), "--api-port", String(port), "--matmul-inputs", "int8");
  args.push("--kv-dtype", "f16");
  node = runCli(args, { STUDIO_CLUSTER_HOME: home });
  await waitForHealth(apiUrl, (h) => h.state === "ready", "the node to be ready", node, 90_000);
});

afterAll(async () => {
  await node?.stop();
  rmSync(home, { recursive: true, force: true });
});

describe("cluster up --matmul-inputs / --kv-dtype", () => {
  it("int8 with an f16 cache: the shard opens in both modes and answers", async () => {
    const response = await fetch(`${apiUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "hello" }], max_tokens: 8, temperature: 0 }),
      signal: AbortSignal.timeout(60_000),
    });
    expect(response.status).toBe(200);
    const reply = (await response.json()) as { choices: Array<{ finish_reason: string }> };
    expect(reply.choices[0].finish_reason).toMatch(/stop|length/);
    const log = node!.output();
    const opened = /plan [^\n]*layers \d+\.\.\d+[^\n]* on cpu( \(int8 matmul inputs\))?( \(f16 KV\))?/.exec(
      log,
    );
    expect(opened, log).not.toBeNull();
    expect(opened![2], log).toBe(" (f16 KV)");
    // An f16 block's position: keys and values of every kv head, two bytes each.
    const config = readModelConfig(modelDir);
    const bytesPerPosition = 2 * config.numKvHeads * config.headDim * 2;
    // The node told the planner (Hello's capabilities), which reserved KV for the context at that size.
    const health = (await (await fetch(`${apiUrl}/health`)).json()) as {
      plan: {
        contextTokens: number;
        stages: Array<{ layerStart: number; layerEnd: number; kvReserveBytes: number }>;
      };
    };
    const [stage] = health.plan.stages;
    expect(stage.kvReserveBytes).toBe(
      bytesPerPosition * health.plan.contextTokens * (stage.layerEnd - stage.layerStart),
    );
    // The tiny model's matrices are 4-bit: where the build has the int8 kernels, the mode is in effect.
    const cacheRoot = join(home, "kv-cache");
    const formats = existsSync(cacheRoot)
      ? readdirSync(cacheRoot).flatMap((node) => readdirSync(join(cacheRoot, node)))
      : [];
    if (cpuInfo().int8) {
      expect(opened![1], log).toBe(" (int8 matmul inputs)");
      expect(
        formats.some((f) => f.endsWith(`-cpu-int8-${bytesPerPosition}`)),
        formats.join(", "),
      ).toBe(true);
    } else {
      expect(
        formats.some((f) => f.endsWith(`-cpu-${bytesPerPosition}`)),
        formats.join(", "),
      ).toBe(true);
      console.warn(
        "cpu-precision.test: this build has no int8 kernels (neither x86 with AVX2 nor aarch64 with dotprod): the default path runs",
      );
    }
  });

  it("an unknown mode or KV dtype is refused before the node starts", async () => {
    const bad = runCli(["up", "--model", modelDir, "--no-bonjour", "--matmul-inputs", "int4"], {
      STUDIO_CLUSTER_HOME: home,
    });
    const code = await bad.exited;
    expect(code).not.toBe(0);
    expect(bad.output()).toMatch(/--matmul-inputs.*int4.*(default|int8)/s);
    const badKv = runCli(["up", "--model", modelDir, "--no-bonjour", "--kv-dtype", "f8"], {
      STUDIO_CLUSTER_HOME: home,
    });
    expect(await badKv.exited).not.toBe(0);
    expect(badKv.output()).toMatch(/--kv-dtype.*f8.*f32.*f16/s);
  });
});
