// The one streaming helper every API route writes its replies with (api/sse.ts streamRun): the opening events go
// out before the first token, every output event follows, exactly one terminal event (the end or the failure)
// closes the stream, and a client that goes away cancels the run on every stage. Runs are real generations on
// an in-process pipeline of the tiny model; the HTTP side is a real fastify server.
import Fastify, { type FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GenerationRun } from "../../api/generation-run.js";
import { streamRun } from "../../api/sse.js";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { unconstrained } from "../../chat/constraints.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import { LocalPipeline } from "../helpers/local-pipeline.js";
import { ensureModel, numLayersOf } from "../helpers/pipeline-cluster.js";

let app: FastifyInstance;
let url = "";
let pipeline: LocalPipeline;
let scheduler: Scheduler;
/** What the writer saw, per request, in order. */
const calls = new Map<string, string[]>();

beforeAll(async () => {
  const modelDir = await ensureModel("tiny-4bit", "tiny");
  const layers = numLayersOf(modelDir);
  pipeline = await LocalPipeline.start(modelDir, {
    planId: "stream",
    stages: [
      {
        nodeId: "n0",
        name: "n0",
        address: "127.0.0.1:1",
        layerStart: 0,
        layerEnd: layers,
        embed: true,
        head: true,
      },
    ],
  });
  scheduler = new Scheduler({ contextWindow: 4096 });
  scheduler.attach(pipeline);
  const formatter = ChatFormatter.forModelDir(modelDir);
  app = Fastify();
  app.get<{ Querystring: { id: string; tokens: string; fail?: string } }>("/run", async (request, reply) => {
    const log: string[] = [];
    calls.set(request.query.id, log);
    const run = await GenerationRun.start(scheduler, formatter, {
      prompt: formatter.encode("hello there"),
      maxTokens: Number(request.query.tokens),
      sampling: {},
      stopStrings: [],
      tools: [],
      parseReply: false,
      constraints: unconstrained,
    });
    let events = 0;
    await streamRun(reply, run, (sse) => ({
      doneMarker: true,
      open: () => {
        log.push("open");
        sse.send({ open: true });
      },
      event: (event) => {
        log.push(event.type);
        sse.send({ delta: event.type === "text" ? event.delta : "" });
        if (request.query.fail && ++events === 2) pipeline.lose(0, "test: node gone");
      },
      end: () => {
        log.push(`end:${run.finishReason}`);
        sse.send({ end: run.finishReason });
      },
      fail: (err) => {
        log.push(`fail:${(err as Error).message}`);
        sse.send({ error: (err as Error).message });
      },
    }));
    log.push("closed");
  });
  url = await app.listen({ host: "127.0.0.1", port: 0 });
});

afterAll(async () => {
  await app.close();
  pipeline.close();
});

async function until(what: string, done: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("streamRun", () => {
  it("opens, streams every event, ends once with the terminal event and [DONE]", async () => {
    const body = await (await fetch(`${url}/run?id=ok&tokens=6`)).text();
    const log = calls.get("ok")!;
    expect(log[0]).toBe("open");
    expect(log.at(-2)).toBe("end:length");
    expect(log.at(-1)).toBe("closed");
    expect(log.filter((l) => l.startsWith("end") || l.startsWith("fail"))).toHaveLength(1);
    const events = body.split("\n\n").filter(Boolean);
    expect(events[0]).toBe('data: {"open":true}');
    expect(events.at(-2)).toBe('data: {"end":"length"}');
    expect(events.at(-1)).toBe("data: [DONE]");
  });

  it("a failed run ends with the failure as its one terminal event", async () => {
    const body = await (await fetch(`${url}/run?id=fail&tokens=200&fail=1`)).text();
    const log = calls.get("fail")!;
    expect(log.at(-2)).toMatch(/^fail:.*test: node gone/);
    expect(log.filter((l) => l.startsWith("end"))).toHaveLength(0);
    expect(body).toContain("test: node gone");
    expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
    // The pipeline is gone: give the next tests a fresh one.
    pipeline = await LocalPipeline.start(await ensureModel("tiny-4bit", "tiny"), pipeline.plan);
    scheduler.attach(pipeline);
  });

  it("a client that goes away cancels the run and frees the sequence on every stage", async () => {
    const controller = new AbortController();
    const response = await fetch(`${url}/run?id=gone&tokens=3000`, { signal: controller.signal });
    const reader = response.body!.getReader();
    await reader.read();
    await until("the first tokens", () => (calls.get("gone") ?? []).length > 3);
    controller.abort();
    await until("the stream to close", () => calls.get("gone")!.at(-1) === "closed");
    await until("the stage to free the sequence", () => pipeline.held()[0].sequences === 0);
    expect(scheduler.inFlight).toBe(0);
  });
});
