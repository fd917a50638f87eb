// Checkpoints that used to load silently, on real `cluster up` processes over copies of the tiny model: a
// config.json naming fewer layers than the checkpoint holds is refused at start, naming the field; a NaN in one
// layer's norm makes the stage refuse its LoadShard, naming the file and tensor, and the node never serves.
import {
  closeSync,
  cpSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { readAllHeaders } from "../../common/safetensors.js";
import { firstNonFinite } from "../../common/weight-check.js";
import { type CliProcess, freePort, getHealth, runCli } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "bad-weights-"));
const running: CliProcess[] = [];

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(home, { recursive: true, force: true });
});

async function copyOfTiny(name: string): Promise<string> {
  const dir = join(home, name);
  cpSync(await ensureModel("tiny", "tiny"), dir, { recursive: true });
  return dir;
}

async function up(modelDir: string): Promise<{ proc: CliProcess; apiUrl: string }> {
  const apiPort = await freePort();
  const args = ["up", "--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  args.push("--port", String(await freePort()), "--api-port", String(apiPort));
  const proc = runCli(args, { STUDIO_CLUSTER_HOME: join(home, "home") });
  running.push(proc);
  return { proc, apiUrl: `http://127.0.0.1:${apiPort}` };
}

describe("NaN and infinity detection", () => {
  it("finds them in f32, bf16 and f16 bytes and nothing in finite ones", () => {
    expect(firstNonFinite(Buffer.from(new Float32Array([1, -2, Number.NaN]).buffer), "F32")).toBe(2);
    expect(firstNonFinite(Buffer.from(new Float32Array([1, Number.NEGATIVE_INFINITY]).buffer), "F32")).toBe(
      1,
    );
    expect(firstNonFinite(Buffer.from(new Float32Array([1, 3.4e38, -1e-40]).buffer), "F32")).toBe(-1);
    expect(firstNonFinite(Buffer.from(new Uint16Array([0x3f80, 0x7fc0]).buffer), "BF16")).toBe(1);
    expect(firstNonFinite(Buffer.from(new Uint16Array([0x3c00, 0xfc00]).buffer), "F16")).toBe(1);
    expect(firstNonFinite(Buffer.from(new Uint16Array([0x3c00, 0x7bff]).buffer), "F16")).toBe(-1);
    // Quantized words are not floats: never flagged.
    expect(firstNonFinite(Buffer.from(new Uint32Array([0xffffffff]).buffer), "U32")).toBe(-1);
  });
});

describe("cluster up on a damaged checkpoint", () => {
  it("refuses a config.json that names fewer layers than the checkpoint holds", async () => {
    const dir = await copyOfTiny("short-config");
    const configFile = join(dir, "config.json");
    const config = JSON.parse(readFileSync(configFile, "utf8")) as { num_hidden_layers: number };
    const real = config.num_hidden_layers;
    writeFileSync(configFile, JSON.stringify({ ...config, num_hidden_layers: real - 2 }));
    const { proc } = await up(dir);
    expect(await proc.exited, proc.output()).toBe(1);
    expect(proc.stderr.join("\n")).toMatch(
      new RegExp(
        `config\\.json: num_hidden_layers is ${real - 2} but the checkpoint holds layers 0\\.\\.${real - 1}`,
      ),
    );
  });

  it("refuses to load a stage whose norm holds a NaN, naming the tensor, and never serves", async () => {
    const dir = await copyOfTiny("nan-norm");
    const tensor = "model.layers.3.input_layernorm.weight";
    const header = readAllHeaders(dir).get(tensor);
    const info = header?.tensors.get(tensor);
    if (!header || !info) throw new Error(`the tiny model has no ${tensor}`);
    const nan =
      info.dtype === "F32" ? Buffer.from(new Float32Array([Number.NaN]).buffer) : Buffer.from([0xc0, 0x7f]);
    const fd = openSync(header.file, "r+");
    writeSync(fd, nan, 0, nan.length, info.byteOffset + 4 * nan.length);
    closeSync(fd);

    const { proc, apiUrl } = await up(dir);
    const wanted = new RegExp(
      `${tensor} \\(${info.dtype}\\) holds NaN or infinity at element 4: refusing to load`,
    );
    const started = Date.now();
    while (!wanted.test(proc.output()) && Date.now() - started < 60_000) {
      if (proc.child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(proc.output()).toMatch(wanted);
    expect((await getHealth(apiUrl))?.state).not.toBe("ready");
  });
});
