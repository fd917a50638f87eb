// Three node-agent processes on loopback serve the tiny model as a 3-stage pipeline; the scheduler in this
// process must reproduce a single in-process engine token for token: greedy, sampled with a seed, and with two
// sequences in flight at once. Also: every method refuses a missing or wrong key; bad input fails only its own
// request; an abort frees the sequence on every stage.
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Engine, SamplingParams } from "../../common/engine-api.js";
import { ClusterError } from "../../common/errors.js";
import { readModelConfig } from "../../common/model-config.js";
import { bodyDigest, ClusterSecret, callAuthHeader, signCall } from "../../common/wire/auth.js";
import { NodeClient } from "../../common/wire/client.js";
import { nowUs } from "../../common/wire/frames.js";
import { channelOptions, studioNodeClientConstructor } from "../../common/wire/proto.js";
import { type DataFrame, Dtype, FrameKind, type NodeStatus } from "../../common/wire/types.js";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { Scheduler } from "../../coordinator/scheduler.js";

import {
  type AgentProcess,
  collect,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  openWholeModel,
  referenceRun,
  spawnAgent,
  startPipeline,
} from "../helpers/pipeline-cluster.js";

const key = newClusterKey();
let modelDir = "";
let agents: AgentProcess[] = [];
let pipeline: Pipeline | undefined;
let scheduler: Scheduler;
let reference: Engine;
let refSeq = 1;

/** A prompt of in-vocabulary ids that varies with `salt`, longer than one prefill chunk when asked. */
function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

async function solo(prompt: number[], maxTokens: number, sampling: SamplingParams): Promise<number[]> {
  return referenceRun(reference, refSeq++, prompt, maxTokens, sampling);
}

beforeAll(async () => {
  modelDir = await ensureModel("tiny-4bit", "tiny");
  agents = await Promise.all(
    [0, 1, 2].map((i) => spawnAgent({ modelDir, key, name: `stage-${i}`, threads: 1 })),
  );
  const numLayers = numLayersOf(modelDir);
  pipeline = await startPipeline({ plan: evenPlan("plan-3", agents, numLayers), clusterKey: key });
  scheduler = new Scheduler({ contextWindow: 4096 });
  scheduler.attach(pipeline);
  reference = await openWholeModel(modelDir);
});

afterAll(async () => {
  pipeline?.close();
  await reference?.close();
  await Promise.all(agents.map((a) => a.stop()));
});

/** Whether the agent logs a line matching `pattern` within 5 s: its log arrives over its stderr pipe, after the call's status. */
async function agentLogged(agent: AgentProcess, pattern: RegExp): Promise<boolean> {
  for (let i = 0; i < 250; i++) {
    if (agent.log.some((l) => pattern.test(l))) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

describe("three-stage pipeline over loopback", () => {
  it("greedy generation equals the single engine token for token (prompt spans two prefill chunks)", async () => {
    const prompt = promptOf(300, 1);
    const got = await collect(scheduler.generate({ prompt, maxTokens: 24, sampling: {}, stopTokenIds: [] }));
    expect(got.end).toBe("length");
    expect(got.tokens).toEqual(await solo(prompt, 24, {}));
  });

  it("a prefill item larger than one frame travels in chunks and still equals the single engine", async () => {
    // 2500 tokens x 128 floats = 1.28 MB of activations per hop: more than one 1 MiB frame.
    const bigChunks = new Scheduler({ contextWindow: 4096, prefillChunkTokens: 2500 });
    bigChunks.attach(pipeline!);
    const prompt = promptOf(2600, 9);
    const got = await collect(bigChunks.generate({ prompt, maxTokens: 8, sampling: {}, stopTokenIds: [] }));
    expect(got.tokens).toEqual(await referenceRun(reference, refSeq++, prompt, 8, {}, 2500));
  });

  it("two concurrent sequences each equal their solo result", async () => {
    const a = promptOf(40, 2);
    const b = promptOf(17, 3);
    const [ga, gb] = await Promise.all([
      collect(scheduler.generate({ prompt: a, maxTokens: 20, sampling: {}, stopTokenIds: [] })),
      collect(scheduler.generate({ prompt: b, maxTokens: 20, sampling: {}, stopTokenIds: [] })),
    ]);
    expect(ga.tokens).toEqual(await solo(a, 20, {}));
    expect(gb.tokens).toEqual(await solo(b, 20, {}));
    expect(ga.tokens).not.toEqual(gb.tokens);
  });

  it("beyond maxSequences requests wait in order and then run correctly; beyond maxQueue they are refused", async () => {
    const queued = new Scheduler({ contextWindow: 4096, maxSequences: 1, maxQueue: 2 });
    queued.attach(pipeline!);
    const prompts = [promptOf(20, 11), promptOf(21, 12), promptOf(22, 13)];
    const started: number[] = [];
    const runs = prompts.map((prompt, i) =>
      (async () => {
        const events: number[] = [];
        for await (const e of queued.generate({ prompt, maxTokens: 6, sampling: {}, stopTokenIds: [] })) {
          if (e.type === "admitted") started.push(i);
          if (e.type === "token") events.push(e.token);
        }
        return events;
      })(),
    );
    // Requests start synchronously up to their first wait: one holds the slot, two wait, a fourth finds the
    // queue full.
    await expect(
      collect(queued.generate({ prompt: promptOf(5, 14), maxTokens: 2, sampling: {}, stopTokenIds: [] })),
    ).rejects.toMatchObject({ code: "overloaded" });
    const results = await Promise.all(runs);
    expect(started).toEqual([0, 1, 2]);
    for (let i = 0; i < prompts.length; i++) expect(results[i]).toEqual(await solo(prompts[i], 6, {}));
    expect(queued.inFlight).toBe(0);
  });

  it("sampled generation with a seed equals the single engine's", async () => {
    const prompt = promptOf(30, 4);
    const sampling: SamplingParams = { temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 };
    const got = await collect(scheduler.generate({ prompt, maxTokens: 24, sampling, stopTokenIds: [] }));
    expect(got.tokens).toEqual(await solo(prompt, 24, sampling));
    // Sampling really took part: the greedy continuation of the same prompt differs.
    expect(got.tokens).not.toEqual(await solo(prompt, 24, {}));
  });

  it("ends on a stop id and reports it", async () => {
    const prompt = promptOf(12, 5);
    const expected = await solo(prompt, 10, {});
    const stopAt = expected[4];
    const got = await collect(
      scheduler.generate({ prompt, maxTokens: 10, sampling: {}, stopTokenIds: [stopAt] }),
    );
    expect(got.end).toBe("stop");
    expect(got.tokens).toEqual(expected.slice(0, expected.indexOf(stopAt) + 1));
  });

  it("an out-of-vocabulary token fails only that request, with a message, and the cluster keeps serving", async () => {
    const bad = collect(
      scheduler.generate({ prompt: [5, 10_000_000], maxTokens: 4, sampling: {}, stopTokenIds: [] }),
    );
    await expect(bad).rejects.toBeInstanceOf(ClusterError);
    await expect(bad).rejects.toThrow(/\S/);
    const prompt = promptOf(8, 6);
    const got = await collect(scheduler.generate({ prompt, maxTokens: 6, sampling: {}, stopTokenIds: [] }));
    expect(got.tokens).toEqual(await solo(prompt, 6, {}));
  });

  it("refuses bad requests before they reach a stage", async () => {
    const run = (prompt: number[], maxTokens: number) =>
      collect(scheduler.generate({ prompt, maxTokens, sampling: {}, stopTokenIds: [] }));
    await expect(run([], 4)).rejects.toMatchObject({ code: "bad_request" });
    await expect(run([1, -2], 4)).rejects.toMatchObject({ code: "bad_request" });
    await expect(run([1], 0)).rejects.toMatchObject({ code: "bad_request" });
    await expect(run([1, 2], 4095)).rejects.toMatchObject({ code: "context_length_exceeded" });
    // Told the vocabulary size, the scheduler refuses an out-of-range id itself.
    const vocabSize = readModelConfig(modelDir).vocabSize;
    const checked = new Scheduler({ contextWindow: 4096, vocabSize });
    checked.attach(pipeline!);
    await expect(
      collect(checked.generate({ prompt: [1, vocabSize], maxTokens: 2, sampling: {}, stopTokenIds: [] })),
    ).rejects.toMatchObject({ code: "bad_request", message: expect.stringMatching(/not a valid token id/) });
  });

  it("an abort cancels the sequence and frees its KV on every stage", async () => {
    const controller = new AbortController();
    const prompt = promptOf(20, 7);
    const run = collect(
      scheduler.generate({
        prompt,
        maxTokens: 3000,
        sampling: {},
        stopTokenIds: [],
        signal: controller.signal,
      }),
      (n) => {
        if (n === 3) controller.abort();
      },
    );
    await expect(run).rejects.toMatchObject({ code: "cancelled" });
    // Cancel reaches every stage; each then holds no sequence and no KV.
    const deadline = Date.now() + 5000;
    for (;;) {
      const statuses = await Promise.all(agents.map((a) => statusOnce(a.address)));
      if (statuses.every((s) => s.sequences === 0 && s.kv_bytes === 0)) break;
      if (Date.now() > deadline) throw new Error(`sequences still held: ${JSON.stringify(statuses)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it("bad frames are answered with ERROR frames naming the problem; garbage bytes do not crash a stage", async () => {
    // A stage's ERROR travels down the stages to the last one's Results stream (every subscriber gets it).
    const results = new NodeClient(agents[2].address, key);
    const errors = results.results("plan-3");
    errors.on("error", () => {}); // ends with CANCELLED when this test lets go of it
    const errorOf = (seq: number) =>
      new Promise<DataFrame>((resolve) => errors.on("data", (f: DataFrame) => f.seq === seq && resolve(f)));
    const wrongKind = errorOf(77);
    const shortPayload = errorOf(78);
    const wrongWidth = errorOf(79);
    await new Promise((r) => errors.once("metadata", r));
    const first = new NodeClient(agents[0].address, key);
    const second = new NodeClient(agents[1].address, key);
    const toFirst = first.data();
    const toSecond = second.data();
    const hidden = {
      kind: FrameKind.HIDDEN,
      count: 1,
      dtype: Dtype.F32,
      shape: [1, 128],
      payload: new Uint8Array(512),
    };
    // Stage 0 takes token ids, not hidden states.
    toFirst.write({ ...hidden, seq: 77 });
    // Stage 1: a payload shorter than its header says, and a width that is not the model's.
    toSecond.write({ ...hidden, seq: 78, payload: new Uint8Array(100) });
    toSecond.write({ ...hidden, seq: 79, shape: [1, 64], payload: new Uint8Array(256) });
    const [a, b, c] = await Promise.all([wrongKind, shortPayload, wrongWidth]);
    expect([a.kind, b.kind, c.kind]).toEqual([FrameKind.ERROR, FrameKind.ERROR, FrameKind.ERROR]);
    expect(a.error).toMatch(/first stage and takes token ids/);
    expect(a.origin_stage).toBe(0);
    expect(b.error).toMatch(/payload has 100 bytes but the header \(f32 \[1,128\]\) needs 512/);
    expect(c.error).toMatch(/width 64 but this stage takes 128/);
    expect(b.origin_stage).toBe(1);

    // Bytes that are no DataFrame at all: the call fails, the process lives on.
    const raw = new grpc.Client(agents[1].address, grpc.credentials.createInsecure());
    const metadata = await signedFor(agents[1].address, "Data");
    const garbage = raw.makeBidiStreamRequest(
      "/studio.cluster.v1.StudioNode/Data",
      (b: Buffer) => b,
      (b: Buffer) => b,
      metadata,
    );
    const garbageStatus = new Promise<number>((resolve) => {
      garbage.on("error", (err: grpc.ServiceError) => resolve(err.code));
      garbage.on("end", () => resolve(grpc.status.OK));
      garbage.on("data", () => {});
    });
    garbage.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34]));
    expect(await garbageStatus).not.toBe(grpc.status.OK);
    raw.close();
    expect((await second.hello()).name).toBe("stage-1");

    for (const s of [toFirst, toSecond]) s.end();
    errors.cancel();
    for (const c of [first, second, results]) c.close();
    // The coordinator's own streams were not disturbed, and it still generates correctly.
    expect(pipeline?.lost).toBeUndefined();
    const prompt = promptOf(9, 8);
    const got = await collect(scheduler.generate({ prompt, maxTokens: 5, sampling: {}, stopTokenIds: [] }));
    expect(got.tokens).toEqual(await solo(prompt, 5, {}));
  });

  it("every node's Status reports its shard and the work it did", async () => {
    const statuses = await Promise.all(agents.map((a) => statusOnce(a.address)));
    const numLayers = numLayersOf(modelDir);
    statuses.forEach((s, i) => {
      expect(s.loaded).toBe(true);
      expect(s.plan_id).toBe("plan-3");
      expect([s.layer_start, s.layer_end]).toEqual([(i * numLayers) / 3, ((i + 1) * numLayers) / 3]);
      expect([s.embed, s.head]).toEqual([i === 0, i === 2]);
      expect(s.weight_bytes).toBeGreaterThan(0);
      expect(s.batches).toBeGreaterThan(0);
      expect(s.memory_total).toBeGreaterThan(0);
      // Frames reached every stage over its inbound Data stream, so each has hop figures.
      expect(s.inbound_hop_p50_us).toBeGreaterThan(0);
      expect(s.inbound_hop_p99_us).toBeGreaterThanOrEqual(s.inbound_hop_p50_us);
      expect(s.inbound_hop_count).toBeGreaterThan(0);
    });
    // Asked for the frames since a moment no frame has arrived after, a node reports none.
    const later = await statusOnce(agents[1].address, nowUs() + 60_000_000);
    expect([later.inbound_hop_count, later.inbound_hop_p50_us, later.inbound_hop_p99_us]).toEqual([0, 0, 0]);
    // The coordinator sees the same figures on its heartbeat streams.
    expect(pipeline?.statuses().size).toBe(3);
  });

  it("a node holding no shard answers work with an ERROR frame and refuses a Results subscription", async () => {
    const idle = await spawnAgent({ modelDir, key, name: "idle", threads: 1 });
    const client = new NodeClient(idle.address, key);
    try {
      const stream = client.data();
      // What is checked is the ERROR frame; the stream's own end (the agent stops right after) may come as a reset.
      stream.on("error", () => {});
      const reply = new Promise<DataFrame>((resolve) => stream.once("data", resolve));
      stream.write({
        kind: FrameKind.TOKENS,
        seq: 5,
        count: 1,
        dtype: Dtype.I32,
        shape: [1],
        payload: new Uint8Array(4),
      });
      const frame = await reply;
      expect([frame.kind, frame.seq, frame.error_code]).toEqual([FrameKind.ERROR, 5, "cluster_not_ready"]);
      expect(frame.error).toMatch(/holds no shard/);
      stream.end();
      const results = client.results("any-plan");
      const refused = await new Promise<grpc.ServiceError>((resolve) => results.once("error", resolve));
      expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(refused.details).toMatch(/holds no shard/);
    } finally {
      client.close();
      await idle.stop();
    }
  });

  it("LoadShard without a coordinator epoch (an older node) is refused and logged, and the shard is kept", async () => {
    const client = new NodeClient(agents[1].address, key);
    const numLayers = numLayersOf(modelDir);
    const refused = client.loadShard({
      plan_id: "no-epoch",
      layer_start: 0,
      layer_end: numLayers,
      embed: true,
      head: true,
    });
    await expect(refused).rejects.toThrow(
      /REFUSED LoadShard of plan no-epoch .*carries no coordinator epoch/,
    );
    await expect(refused).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
    expect(await agentLogged(agents[1], /REFUSED LoadShard of plan no-epoch .*no coordinator epoch/)).toBe(
      true,
    );
    expect((await client.hello()).plan_id).toBe("plan-3");
    client.close();
  });

  it("LoadShard refuses a layer range outside the model, naming it, and keeps the loaded shard", async () => {
    const client = new NodeClient(agents[1].address, key);
    const numLayers = numLayersOf(modelDir);
    await expect(
      client.loadShard({
        plan_id: "bad",
        layer_start: 2,
        layer_end: numLayers + 5,
        embed: false,
        head: true,
      }),
    ).rejects.toThrow(new RegExp(`layer range 2..${numLayers + 5} is not within 0..${numLayers}`));
    expect((await client.hello()).plan_id).toBe("plan-3");
    client.close();
  });
});

describe("cluster key", () => {
  const methods = ["Hello", "LoadShard", "Status", "Release", "Cancel", "Fork", "Data", "Results"] as const;

  async function callStatus(
    address: string,
    metadata: grpc.Metadata,
    method: (typeof methods)[number],
  ): Promise<number> {
    const Ctor = studioNodeClientConstructor();
    const raw = new Ctor(address, grpc.credentials.createInsecure(), channelOptions) as unknown as Record<
      string,
      (...args: unknown[]) => grpc.ClientReadableStream<unknown> & grpc.ClientDuplexStream<unknown, unknown>
    >;
    try {
      return await new Promise<number>((resolve) => {
        const done = (err: grpc.ServiceError | null) => resolve(err ? err.code : grpc.status.OK);
        if (method === "Hello" || method === "Release" || method === "Cancel" || method === "Fork") {
          raw[method]({}, metadata, done);
          return;
        }
        const call =
          method === "Data"
            ? raw.Data(metadata)
            : raw[method](method === "LoadShard" ? { plan_id: "x" } : {}, metadata);
        call.on("error", (err: grpc.ServiceError) => resolve(err.code));
        call.on("data", () => {});
        call.on("end", () => resolve(grpc.status.OK));
        if (method === "Data") call.end();
      });
    } finally {
      (raw as unknown as grpc.Client).close();
    }
  }

  it("every method refuses a missing MAC, one made with another key, and a replayed one with UNAUTHENTICATED", async () => {
    const address = agents[1].address;
    const proven = await new NodeClient(address, key).prove();
    for (const method of methods) {
      expect([method, await callStatus(address, new grpc.Metadata(), method)]).toEqual([
        method,
        grpc.status.UNAUTHENTICATED,
      ]);
      // The right node id and epoch, the wrong key.
      const forged = new grpc.Metadata();
      forged.set(callAuthHeader, signCall(new ClusterSecret(newClusterKey()), proven, pathOf(method)));
      expect([method, await callStatus(address, forged, method)]).toEqual([
        method,
        grpc.status.UNAUTHENTICATED,
      ]);
    }
    // A call signed with the key goes through once; the same metadata replayed is refused.
    const empty = bodyDigest(new Uint8Array(0)); // the wire bytes of the {} request callStatus sends
    const once = await signedFor(address, "Release", empty);
    expect(await callStatus(address, once, "Release")).toBe(grpc.status.OK);
    expect(await callStatus(address, once, "Release")).toBe(grpc.status.UNAUTHENTICATED);
    expect(await agentLogged(agents[1], /refused Release from .*replayed/)).toBe(true);
    // A MAC made for one request does not pass with another (a request altered on the way).
    const forOther = await signedFor(address, "Release", bodyDigest(Buffer.from([0x0a, 0x01, 0x78])));
    expect(await callStatus(address, forOther, "Release")).toBe(grpc.status.UNAUTHENTICATED);
    expect(await agentLogged(agents[1], /refused Release from .*altered on the way/)).toBe(true);
    // Every refusal is logged by the node, naming the method (the log arrives over the agent's stderr pipe).
    const logged = () => methods.filter((m) => !agents[1].log.some((l) => l.includes(`refused ${m} from`)));
    for (let i = 0; i < 50 && logged().length > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(logged(), "methods whose refusal was not logged").toEqual([]);
    // The right key is accepted (Hello answers with the node's identity).
    const hello = await new NodeClient(agents[1].address, key).hello();
    expect(hello.name).toBe("stage-1");
    expect(hello.capabilities?.model?.num_layers).toBe(numLayersOf(modelDir));
  });
});

function pathOf(method: string): string {
  return `/studio.cluster.v1.StudioNode/${method}`;
}

/**
 * Metadata for one call to `method` on the node at address, signed as a NodeClient signs it; `body`: the digest of
 * the request's wire bytes (single-request methods), absent for Data.
 */
async function signedFor(address: string, method: string, body?: Buffer): Promise<grpc.Metadata> {
  const client = new NodeClient(address, key);
  const peer = await client.prove();
  client.close();
  const metadata = new grpc.Metadata();
  metadata.set(callAuthHeader, signCall(new ClusterSecret(key), peer, pathOf(method), body));
  return metadata;
}

function statusOnce(address: string, hopsSinceUs = 0): Promise<NodeStatus> {
  const client = new NodeClient(address, key);
  const call = client.status(1000, hopsSinceUs);
  return new Promise((resolve, reject) => {
    call.once("data", (s) => {
      call.cancel();
      client.close();
      resolve(s);
    });
    call.once("error", (err) => {
      if ((err as grpc.ServiceError).code !== grpc.status.CANCELLED) reject(err);
    });
  });
}
