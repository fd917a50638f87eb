// FetchTensors under faults, with a real node agent process as the source and the real fetcher here: a byte
// flipped on the wire is caught and its chunk fetched again; a connection cut mid-transfer (the source's node
// lost) resumes from the last verified byte without fetching anything twice; a disk too small is refused up
// front with the bytes needed and free; a node missing some tensors is passed over for the next source.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { modelFingerprint, readModelTable, stageTensors } from "../../common/model-table.js";
import { readAllHeaders, readTensor } from "../../common/safetensors.js";
import type { LoadShardRequest } from "../../common/wire/types.js";
import { WeightFetcher } from "../../node-agent/weight-fetch.js";
import { hubEnv } from "../../weights/hub-env.js";
import { prepareStoreFromHub } from "../../weights/hub-meta.js";
import { checkDiskSpace } from "../../weights/store.js";
import { type FakeHub, startFakeHub } from "../helpers/fake-hub.js";
import { startFaultProxy } from "../helpers/fault-proxy.js";
import { type AgentProcess, ensureModel, newClusterKey, spawnAgent } from "../helpers/pipeline-cluster.js";

const work = mkdtempSync(join(tmpdir(), "weights-faults-"));
const key = newClusterKey();
let source: string;
let hub: FakeHub;
let agent: AgentProcess;

beforeAll(async () => {
  source = await ensureModel("tiny", "tiny");
  hub = await startFakeHub({ folder: source });
  agent = await spawnAgent({ modelDir: source, key, name: "source" });
});

afterAll(async () => {
  await agent?.stop();
  await hub?.close();
  rmSync(work, { recursive: true, force: true });
});

const everything: LoadShardRequest = { plan_id: "p", layer_start: 0, layer_end: 6, embed: true, head: true };

/** A fresh partial checkpoint of the model (metadata from the hub, no tensors) and a fetcher for it. */
async function freshNode(
  name: string,
  lines: string[],
  chunkBytes?: number,
): Promise<{ dir: string; fetcher: WeightFetcher }> {
  const env = hubEnv({ HF_ENDPOINT: hub.url, HF_HUB_CACHE: join(work, `${name}-hf`), HF_HUB_OFFLINE: "" });
  const { dir } = await prepareStoreFromHub(
    { repo: "test-org/tiny", revision: "main", explicitRevision: false },
    env,
    join(work, name),
  );
  const fingerprint = modelFingerprint(readModelTable(dir));
  // No hub fallback: every byte must come from the source.
  const fetcher = new WeightFetcher({
    modelDir: dir,
    modelId: () => "tiny",
    fingerprint: () => fingerprint,
    clusterKey: key,
    log: (l) => lines.push(l),
    chunkBytes,
  });
  return { dir, fetcher };
}

/** Every tensor of the stage is in the node's checkpoint with the source's bytes. */
function expectSameTensors(dir: string): number {
  const mine = readAllHeaders(dir);
  const theirs = readAllHeaders(source);
  let bytes = 0;
  for (const t of stageTensors(readModelTable(source), {
    layerStart: 0,
    layerEnd: 6,
    embed: true,
    head: true,
  })) {
    const header = mine.get(t.name);
    expect(header, t.name).toBeDefined();
    expect(
      readTensor(header!, t.name).data.equals(readTensor(theirs.get(t.name)!, t.name).data),
      t.name,
    ).toBe(true);
    bytes += t.byteLength;
  }
  return bytes;
}

describe("FetchTensors faults", () => {
  it("writes tensors that span many chunks whole, in order, with several chunks queued for the disk", async () => {
    const lines: string[] = [];
    // 4 KiB chunks: every tensor of the tiny model but the norms spans several, so chunks arrive while earlier
    // ones of the same tensor still wait for the disk.
    const { dir, fetcher } = await freshNode("small-chunks", lines, 4096);
    const report = await fetcher.ensure({ ...everything, sources: [agent.address] }, () => {});
    expect(lines.join("\n")).not.toMatch(/resuming/);
    expect(report.bytes).toBe(expectSameTensors(dir));
  });

  it("catches a byte flipped on the wire and fetches that chunk again", async () => {
    const proxy = await startFaultProxy({ host: "127.0.0.1", port: agent.port }, { flipAt: 600_000 });
    const lines: string[] = [];
    const { dir, fetcher } = await freshNode("flip", lines);
    const report = await fetcher.ensure({ ...everything, sources: [proxy.address] }, () => {});
    await proxy.close();
    console.log(lines.join("\n"));
    expect(lines.join("\n")).toMatch(/failed its crc32 check; resuming from the last verified byte/);
    const bytes = expectSameTensors(dir);
    expect(report).toMatchObject({ bytes, missingBytes: bytes, sources: [proxy.address] });
  });

  it("resumes a transfer cut mid-stream from the last verified byte, fetching nothing twice", async () => {
    const proxy = await startFaultProxy({ host: "127.0.0.1", port: agent.port }, { cutAfter: 700_000 });
    const lines: string[] = [];
    const { dir, fetcher } = await freshNode("cut", lines);
    const report = await fetcher.ensure({ ...everything, sources: [proxy.address] }, () => {});
    await proxy.close();
    console.log(lines.join("\n"));
    expect(lines.join("\n")).toMatch(/fetch from .*: .*; resuming from the last verified byte/);
    const bytes = expectSameTensors(dir);
    expect(report.bytes).toBe(bytes);
    // A second load of the same stage fetches nothing: the partial checkpoint is reused.
    expect((await fetcher.ensure({ ...everything, sources: [proxy.address] }, () => {})).bytes).toBe(0);
  });

  it("passes over a source that lacks the tensors and names every source when none has them", async () => {
    const lines: string[] = [];
    const empty = await freshNode("empty", []);
    const emptyAgent = await spawnAgent({ modelDir: empty.dir, key, name: "empty" });
    try {
      const { dir, fetcher } = await freshNode("fallback", lines);
      const report = await fetcher.ensure(
        { ...everything, sources: [emptyAgent.address, agent.address] },
        () => {},
      );
      expect(report.sources).toEqual([agent.address]);
      expectSameTensors(dir);
      const alone = await freshNode("alone", lines);
      await expect(
        alone.fetcher.ensure({ ...everything, sources: [emptyAgent.address] }, () => {}),
      ).rejects.toThrow(
        new RegExp(
          `are missing here and no source gave them \\(${emptyAgent.address}: this node does not hold .*; hub: the model did not come from the hub|hub: no hub settings`,
        ),
      );
    } finally {
      await emptyAgent.stop();
    }
  });

  it("refuses a transfer the disk cannot hold, naming the bytes needed and free", () => {
    expect(() => checkDiskSpace(work, 1e18, "layers 0..62")).toThrow(
      /not enough disk space for layers 0\.\.62: 1000000000\.0 GB \(1000000000000000000 bytes\) needed in .*, .* \(\d+ bytes\) free/,
    );
  });
});
