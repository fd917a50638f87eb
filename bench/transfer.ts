// Transfer benchmark (docs/weights.md): a node that lacks every tensor of the bench model receives all of them
// from a node agent process over FetchTensors (crc32 per chunk, written as its partial checkpoint, synced), and
// the same bytes are copied over one plain TCP connection from a process that reads them from the same files
// and written to one file here: the push's throughput as a fraction of the plain copy's, runs interleaved in one
// sitting so the machine's load hits both alike. Target: >= 0.8. Prints a table, then ONE JSON line.
import { spawn } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { open } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { readModelConfig } from "../common/model-config.js";
import { type ManifestTable, modelFingerprint, readModelTable, stageTensors } from "../common/model-table.js";
import { WeightFetcher } from "../node-agent/weight-fetch.js";
import { ensureModel, newClusterKey, spawnAgent } from "../test/helpers/pipeline-cluster.js";
import { createStore } from "../weights/store.js";
import { median, round } from "./stats.js";

const runs = Number(process.env.BENCH_RUNS ?? 3);
const work = join(tmpdir(), `bench-transfer-${process.pid}`);

/** A partial checkpoint of the model holding no tensors (what a node started from the hub id has). */
function emptyStore(source: string, dir: string): void {
  const table = readModelTable(source);
  const manifest: Omit<ManifestTable, "format"> = { modelId: "bench-4bit", shards: {}, tensors: {} };
  for (const [file, s] of table.shards)
    manifest.shards[file] = { size: s.size, dataStart: s.dataStart, metadata: s.metadata };
  for (const [name, t] of table.tensors)
    manifest.tensors[name] = {
      file: t.file,
      dtype: t.dtype,
      shape: t.shape,
      start: t.start,
      byteLength: t.byteLength,
    };
  createStore({ dir, manifest, files: new Map() });
  for (const f of readdirSync(source))
    if (!f.endsWith(".safetensors") && f !== "model.safetensors.index.json")
      cpSync(join(source, f), join(dir, f));
}

async function push(
  source: string,
  address: string,
  key: string,
  run: number,
): Promise<{ bytes: number; seconds: number }> {
  const dir = join(work, `push-${run}`);
  emptyStore(source, dir);
  const layers = readModelConfig(source).numLayers;
  const fingerprint = modelFingerprint(readModelTable(dir));
  const fetcher = new WeightFetcher({
    modelDir: dir,
    modelId: () => "bench-4bit",
    fingerprint: () => fingerprint,
    clusterKey: key,
    log: () => {},
  });
  const started = performance.now();
  const report = await fetcher.ensure(
    { plan_id: "bench", layer_start: 0, layer_end: layers, embed: true, head: true, sources: [address] },
    () => {},
  );
  const seconds = (performance.now() - started) / 1000;
  rmSync(dir, { recursive: true, force: true });
  return { bytes: report.bytes, seconds };
}

async function tcpCopy(
  source: string,
  port: number,
  run: number,
): Promise<{ bytes: number; seconds: number }> {
  const table = readModelTable(source);
  const layers = readModelConfig(source).numLayers;
  const tensors = stageTensors(table, { layerStart: 0, layerEnd: layers, embed: true, head: true });
  const ranges = tensors.map((t) => ({ file: join(source, t.file), start: t.start, length: t.byteLength }));
  const out = await open(join(work, `copy-${run}.bin`), "w");
  const started = performance.now();
  let pos = 0;
  await new Promise<void>((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.write(`${JSON.stringify(ranges)}\n`));
    let writing = Promise.resolve();
    socket.on("data", (chunk: Buffer) => {
      socket.pause();
      const at = pos;
      pos += chunk.length;
      writing = writing.then(async () => {
        await out.write(chunk, 0, chunk.length, at);
        socket.resume();
      });
    });
    socket.on("end", () => writing.then(resolve, reject));
    socket.on("error", reject);
  });
  await out.sync();
  await out.close();
  const seconds = (performance.now() - started) / 1000;
  rmSync(join(work, `copy-${run}.bin`), { force: true });
  return { bytes: pos, seconds };
}

async function main(): Promise<void> {
  const source = await ensureModel("bench-4bit", "bench");
  mkdirSync(work, { recursive: true });
  const key = newClusterKey();
  const agent = await spawnAgent({ modelDir: source, key, name: "transfer-source" });
  const tcp = spawn(process.execPath, [join(import.meta.dirname, "tcp-copy-source.js")], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const tcpPort = await new Promise<number>((resolve) =>
    createInterface({ input: tcp.stdout! }).once("line", (l) =>
      resolve((JSON.parse(l) as { port: number }).port),
    ),
  );
  const pushRates: number[] = [];
  const tcpRates: number[] = [];
  let bytes = 0;
  try {
    // One warm-up of each brings the source files into the page cache for both.
    await push(source, agent.address, key, -1);
    await tcpCopy(source, tcpPort, -1);
    console.log("run  push MB/s  tcp MB/s  ratio");
    for (let run = 0; run < runs; run++) {
      const p = await push(source, agent.address, key, run);
      const t = await tcpCopy(source, tcpPort, run);
      if (p.bytes !== t.bytes) throw new Error(`push moved ${p.bytes} bytes, the copy ${t.bytes}`);
      bytes = p.bytes;
      pushRates.push(p.bytes / p.seconds / 1e6);
      tcpRates.push(t.bytes / t.seconds / 1e6);
      console.log(
        `${run}    ${pushRates[run].toFixed(0).padStart(9)}  ${tcpRates[run].toFixed(0).padStart(8)}  ${(pushRates[run] / tcpRates[run]).toFixed(2)}`,
      );
    }
  } finally {
    await agent.stop();
    tcp.stdin?.end();
    rmSync(work, { recursive: true, force: true });
  }
  const ratios = pushRates.map((p, i) => p / tcpRates[i]);
  console.log(
    `${(bytes / 1e9).toFixed(2)} GB per run; median push ${median(pushRates).toFixed(0)} MB/s, plain TCP copy ${median(tcpRates).toFixed(0)} MB/s, ratio ${median(ratios).toFixed(2)} (target >= 0.8)`,
  );
  console.log(
    JSON.stringify({
      bench: "transfer",
      bytes,
      push_mbs: round(median(pushRates), 1),
      tcp_mbs: round(median(tcpRates), 1),
      ratio: round(median(ratios), 3),
      runs,
    }),
  );
}

await main();
