// 1,000 seeded malformed request bodies against the HTTP API of a real (one-stage) cluster: every one is
// answered 4xx in OpenAI's error shape, nothing is left generating, and the server still serves afterwards.
// Also: a body over the size limit gets 413 in the same shape.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startApiServer } from "../../api/server.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { malformedBody } from "../helpers/api-fuzz-bodies.js";
import { Rng } from "../helpers/seeded-rng.js";

const COUNT = 1000;
const SEED = 0xf022_0008;
const CONCURRENCY = 16;
let cluster: ApiCluster;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 1, contextWindow: 2048 });
});
afterAll(async () => {
  await cluster?.stop();
});

interface Answer {
  status: number;
  error: unknown;
}

async function send(base: string, path: string, body: Buffer, contentType: string): Promise<Answer> {
  const response = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${cluster.apiKey}`, "content-type": contentType },
    body,
  });
  const text = await response.text();
  let error: unknown;
  try {
    error = (JSON.parse(text) as { error?: unknown }).error;
  } catch {
    error = `not JSON: ${text.slice(0, 200)}`;
  }
  return { status: response.status, error };
}

function openAIShaped(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  const e = error as Record<string, unknown>;
  return (
    Object.keys(e).sort().join(",") === "code,message,param,type" &&
    typeof e.message === "string" &&
    e.message !== "" &&
    typeof e.type === "string"
  );
}

describe("malformed API bodies", () => {
  it(`${COUNT} seeded malformed bodies are all answered 4xx in OpenAI's error shape`, async () => {
    const rng = new Rng(SEED);
    const bodies = Array.from({ length: COUNT }, () => malformedBody(rng, cluster.modelId));
    const answers: Answer[] = new Array(COUNT);
    let next = 0;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let i = next++; i < COUNT; i = next++)
          answers[i] = await send(cluster.baseUrl, bodies[i].path, bodies[i].body, bodies[i].contentType);
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const wrong = answers
      .map((a, i) => ({ a, b: bodies[i] }))
      .filter(({ a }) => a.status < 400 || a.status >= 500 || !openAIShaped(a.error))
      .map(
        ({ a, b }) => `${b.path} ${b.what} -> ${a.status} ${String(JSON.stringify(a.error)).slice(0, 200)}`,
      );
    expect(wrong).toEqual([]);
    const statuses = new Map<number, number>();
    for (const a of answers) statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
    console.log(
      `api fuzz: ${COUNT} bodies in ${seconds.toFixed(1)} s, statuses ${[...statuses].map(([s, n]) => `${s}x${n}`).join(" ")}`,
    );

    // Still healthy: nothing generating, and a good request is served.
    expect(cluster.scheduler.inFlight).toBe(0);
    const models = await fetch(`${cluster.baseUrl}/models`, {
      headers: { authorization: `Bearer ${cluster.apiKey}` },
    });
    expect(models.status).toBe(200);
    const good = await send(
      cluster.baseUrl,
      "/chat/completions",
      Buffer.from(JSON.stringify({ messages: [{ role: "user", content: "héllo ✓" }], max_tokens: 4 })),
      "application/json",
    );
    expect(good.status).toBe(200);
  }, 180_000);

  it("a body over the size limit is refused with 413 in OpenAI's shape", async () => {
    const server = await startApiServer(
      {
        generator: () => cluster.scheduler,
        modelDir: cluster.modelDir,
        modelId: cluster.modelId,
        health: () => ({}),
      },
      { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey, bodyLimit: 64 * 1024 },
    );
    try {
      const body = Buffer.from(JSON.stringify({ prompt: "x".repeat(100 * 1024), max_tokens: 4 }));
      const answer = await send(`${server.url}/v1`, "/completions", body, "application/json");
      expect(answer.status).toBe(413);
      expect(openAIShaped(answer.error)).toBe(true);
    } finally {
      await server.close();
    }
  });
});
