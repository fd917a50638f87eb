// Weights where they are needed (docs/weights.md), end to end with real `cluster up` processes on loopback: node
// a holds the tiny checkpoint as a folder; b and c are started with the hub id only (their metadata from a local
// stand-in for the hub, test/helpers/fake-hub.ts) and receive exactly their layers from a over FetchTensors. b is
// killed mid-transfer and resumes from its last verified byte. The three-stage cluster then answers token for
// token like a alone (one engine holding every layer).
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ClusterHealth } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { readModelTable, stageTensors } from "../../common/model-table.js";
import { readAllHeaders, readIndex, readTensor } from "../../common/safetensors.js";
import {
  type CliProcess,
  complete,
  freePort,
  getHealth,
  runCli,
  waitForHealth,
} from "../helpers/cluster-up.js";
import { type FakeHub, startFakeHub } from "../helpers/fake-hub.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const work = mkdtempSync(join(tmpdir(), "weights-transfer-"));
const running: CliProcess[] = [];
let source: string;
let hub: FakeHub;

beforeAll(async () => {
  source = await ensureModel("tiny", "tiny");
  hub = await startFakeHub({ folder: source });
});

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  await hub?.close();
  rmSync(work, { recursive: true, force: true });
});

function start(args: string[], env: Record<string, string>): CliProcess {
  const proc = runCli(["up", ...args], env);
  running.push(proc);
  return proc;
}

/** The partial checkpoint a node started from the hub id keeps. */
function storeOf(name: string): string {
  return join(work, name, "weights", "models--test-org--tiny", hub.commit);
}

/** The coordinator's /health once it serves a plan of three stages (any node may be elected). */
async function coordinatorHealth(apiPorts: number[], procs: CliProcess[]): Promise<ClusterHealth> {
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    for (const proc of procs)
      if (proc.child.exitCode !== null) throw new Error(`a node exited:\n${proc.output()}`);
    for (const port of apiPorts) {
      const h = await getHealth(`http://127.0.0.1:${port}`);
      if (h?.state === "ready" && h.plan?.stages.length === 3) return h;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `no coordinator served three stages within 90 s:\n${procs.map((p) => p.output()).join("\n")}`,
  );
}

/** "received N bytes of weights" lines of a node's log, summed. */
function receivedBytes(proc: CliProcess): number {
  return proc.stderr
    .map((l) => /: received (\d+) bytes of weights from/.exec(l))
    .reduce((sum, m) => sum + (m ? Number(m[1]) : 0), 0);
}

/** Bytes of the tensors a node's store holds, from the source checkpoint's own headers. */
function heldBytes(store: string): number {
  const table = readModelTable(source);
  return Object.keys(readIndex(store).weightMap).reduce(
    (sum, name) => sum + table.tensors.get(name)!.byteLength,
    0,
  );
}

describe("weights pushed over the cluster", () => {
  it("b and c receive exactly their layers from a (b killed mid-transfer resumes) and serve a's tokens", async () => {
    const key = generateClusterKey();
    const ports = await Promise.all([1, 2, 3, 4, 5, 6].map(() => freePort()));
    const [grpcA, grpcB, grpcC, apiA, apiB, apiC] = ports;
    const common = ["--key", key, "--no-bonjour", "--threads", "1", "--memory-bandwidth", "50"];
    // a paces what it sends so that b can be killed in the middle of its transfer.
    const a = start(
      [
        ...common,
        "--model",
        source,
        "--name",
        "a",
        "--port",
        `${grpcA}`,
        "--api-port",
        `${apiA}`,
        "--max-push-rate",
        "0.15",
      ],
      { STUDIO_CLUSTER_HOME: join(work, "a") },
    );
    const apiUrl = `http://127.0.0.1:${apiA}`;
    await waitForHealth(apiUrl, (h) => h.state === "ready", "a alone to serve", a, 90_000);
    const reference = await complete(apiUrl, "Weights where they are needed", 12);
    expect(reference.status).toBe(200);

    const hubEnv = (name: string) => ({
      STUDIO_CLUSTER_HOME: join(work, name),
      HF_ENDPOINT: hub.url,
      HF_HUB_CACHE: join(work, `${name}-hf`),
    });
    const bArgs = [
      ...common,
      "--model",
      "test-org/tiny",
      "--name",
      "b",
      "--port",
      `${grpcB}`,
      "--api-port",
      `${apiB}`,
    ];
    // Membership has no gossip: b and c name each other too, or each could coordinate a cluster of its own.
    bArgs.push("--peer", `127.0.0.1:${grpcA}`, "--peer", `127.0.0.1:${grpcC}`);
    const cArgs = [
      ...common,
      "--model",
      "test-org/tiny",
      "--name",
      "c",
      "--port",
      `${grpcC}`,
      "--api-port",
      `${apiC}`,
    ];
    cArgs.push("--peer", `127.0.0.1:${grpcA}`, "--peer", `127.0.0.1:${grpcB}`);
    console.log("a serves alone; starting b and c");
    const b1 = start(bArgs, hubEnv("b"));
    const c = start(cArgs, hubEnv("c"));

    // Kill b once its transfer has recorded verified progress.
    const deadline = Date.now() + 60_000;
    const progressed = () =>
      existsSync(storeOf("b")) &&
      readdirSync(storeOf("b"))
        .filter((f) => f.endsWith(".incomplete.json"))
        .some((f) =>
          Object.values(JSON.parse(readFileSync(join(storeOf("b"), f), "utf8")).done as number[]).some(
            (d) => d > 0,
          ),
        );
    while (!progressed()) {
      if (Date.now() > deadline || b1.child.exitCode !== null)
        throw new Error(`b never made progress:\n${b1.output()}\n${a.output()}\n${c.output()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    b1.child.kill("SIGKILL");
    await b1.exited;
    console.log("b killed mid-transfer; restarting it");
    const b2 = start(bArgs, hubEnv("b"));

    const health = await coordinatorHealth([apiA, apiB, apiC], [a, b2, c]);
    const stageOf = (name: string) => health.plan!.stages.find((s) => s.name === name)!;

    // b resumed where its verified bytes ended and then received exactly the rest.
    const resumed = b2.stderr.map((l) => /resuming a transfer at (\d+) of (\d+) bytes/.exec(l)).find(Boolean);
    expect(resumed, b2.output()).toBeTruthy();
    const [kept, total] = [Number(resumed![1]), Number(resumed![2])];
    expect(kept).toBeGreaterThan(0);
    expect(receivedBytes(b2)).toBe(total - kept);
    for (const [name, proc, store] of [
      ["b", b2, storeOf("b")],
      ["c", c, storeOf("c")],
    ] as const) {
      const stage = stageOf(name);
      const stageBytes = stageTensors(readModelTable(source), stage).reduce(
        (sum, t) => sum + t.byteLength,
        0,
      );
      const held = heldBytes(store);
      const received = name === "b" ? kept + receivedBytes(proc) : receivedBytes(proc);
      console.log(
        `${name}: layers [${stage.layerStart},${stage.layerEnd})${stage.head ? " +head" : ""} = ${stageBytes} bytes; holds ${held} bytes; received ${received} bytes${name === "b" ? ` (${kept} before the kill, ${received - kept} after)` : ""}`,
      );
      // Every byte it holds came once, and it holds its stage's tensors (more only if an earlier plan gave it more).
      expect(received).toBe(held);
      expect(held).toBeGreaterThanOrEqual(stageBytes);
      for (const t of stageTensors(readModelTable(source), stage))
        expect(readIndex(store).weightMap[t.name]).toBeDefined();
      // A valid partial checkpoint: an index and shard files whose headers check, with the source's bytes.
      const headers = readAllHeaders(store);
      const sourceHeaders = readAllHeaders(source);
      for (const [tensor, header] of headers)
        expect(
          readTensor(header, tensor).data.equals(readTensor(sourceHeaders.get(tensor)!, tensor).data),
          tensor,
        ).toBe(true);
    }
    // No tensor bytes came from the hub: only the small files and the shards' headers (ranges from byte 0).
    const cdnRanges = hub.requests.filter((r) => r.cdn).map((r) => r.range ?? "whole file");
    expect(cdnRanges.every((r) => r.startsWith("bytes=0-"))).toBe(true);

    const split = await complete(apiUrl, "Weights where they are needed", 12);
    expect(split.status).toBe(200);
    expect(split.completionTokens).toBe(reference.completionTokens);
    expect(split.text).toBe(reference.text);
  }, 240_000);
});
