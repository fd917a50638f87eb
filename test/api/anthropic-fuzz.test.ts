// 600 seeded mutations of a valid Anthropic Messages body (a field dropped, a node of the JSON replaced by a
// value of another type, unknown roles and block types, broken JSON, bad UTF-8) against /v1/messages and
// /v1/messages/count_tokens on a real one-stage cluster: every answer is either a reply or a 4xx in
// Anthropic's error shape (never a 5xx, never OpenAI's shape), nothing is left generating, and the server still
// serves afterwards.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { Rng } from "../helpers/seeded-rng.js";

const COUNT = 600;
const SEED = 0xa17_0014;
const CONCURRENCY = 8;
const ERROR_TYPES = new Set(["invalid_request_error", "not_found_error", "request_too_large"]);
let cluster: ApiCluster;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "tiny", stages: 1, contextWindow: 2048 });
});
afterAll(async () => {
  await cluster?.stop();
});

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function validBody(model: string): { [key: string]: Json } {
  return {
    model,
    max_tokens: 3,
    system: [{ type: "text", text: "Be brief." }],
    tools: [
      {
        name: "get_weather",
        description: "Weather for a city",
        input_schema: { type: "object", properties: { city: { type: "string" } } },
      },
    ],
    tool_choice: { type: "auto" },
    messages: [
      { role: "user", content: "Weather in Paris?" },
      {
        role: "assistant",
        content: [
          { type: "thinking", thinking: "Call it.", signature: "s" },
          { type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "Paris" } },
        ],
      },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "sunny" }] },
    ],
    stop_sequences: ["END"],
    temperature: 0.5,
  };
}

/** Every container in the tree with one of its keys (or indexes): the places a mutation can hit. */
function places(node: Json, out: Array<[Json[] | { [key: string]: Json }, string | number]> = []) {
  if (Array.isArray(node))
    node.forEach((child, i) => {
      out.push([node, i]);
      places(child, out);
    });
  else if (node !== null && typeof node === "object")
    for (const [key, child] of Object.entries(node)) {
      out.push([node, key]);
      places(child, out);
    }
  return out;
}

function randomValue(rng: Rng): Json {
  return rng.pick<Json>([
    null,
    true,
    -1,
    0,
    1.5,
    "",
    "x",
    "system",
    "image",
    "tool_result",
    [],
    [1],
    ["a"],
    {},
    { type: "text" },
    { type: "image", source: {} },
    { type: "tool_use", id: "toolu_2", name: "nope" },
    { type: "server_tool_use" },
  ]);
}

interface Case {
  path: string;
  what: string;
  body: Buffer;
}

function mutated(rng: Rng, model: string): Case {
  const path = rng.pick(["/messages", "/messages/count_tokens"]);
  const body = validBody(model);
  const kind = rng.int(10);
  if (kind === 0) {
    const key = rng.pick(["model", "max_tokens", "messages"]);
    delete body[key];
    return { path, what: `without ${key}`, body: Buffer.from(JSON.stringify(body)) };
  }
  if (kind === 1) {
    const text = JSON.stringify(body);
    const cut = rng.int(text.length - 1);
    return { path, what: `cut at ${cut}`, body: Buffer.from(text.slice(0, cut)) };
  }
  if (kind === 2) {
    const bytes = Buffer.from(JSON.stringify(body));
    const at = bytes.indexOf("Paris");
    bytes[at + rng.int(5)] = 0xff;
    return { path, what: "bad UTF-8", body: bytes };
  }
  if (kind === 3) {
    const whole = rng.pick<Json>([[], "x", 5, null, [body]]);
    return {
      path,
      what: `body ${JSON.stringify(whole).slice(0, 20)}`,
      body: Buffer.from(JSON.stringify(whole)),
    };
  }
  // Replace one node anywhere in the tree (1 to 3 times).
  const what: string[] = [];
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const all = places(body);
    const [container, key] = all[rng.int(all.length)];
    const value = randomValue(rng);
    (container as Record<string | number, Json>)[key] = value;
    what.push(`${String(key)}=${JSON.stringify(value)}`);
  }
  return { path, what: what.join(" "), body: Buffer.from(JSON.stringify(body)) };
}

function anthropicShaped(value: unknown): boolean {
  if (typeof value !== "object" || value === null) return false;
  const v = value as { type?: unknown; error?: { type?: unknown; message?: unknown } };
  return (
    Object.keys(v).sort().join(",") === "error,type" &&
    v.type === "error" &&
    Object.keys(v.error ?? {})
      .sort()
      .join(",") === "message,type" &&
    ERROR_TYPES.has(String(v.error?.type)) &&
    typeof v.error?.message === "string" &&
    v.error.message !== ""
  );
}

describe("malformed Anthropic bodies", () => {
  it(`${COUNT} seeded mutations are answered as replies or 4xx in Anthropic's error shape`, async () => {
    const rng = new Rng(SEED);
    const cases = Array.from({ length: COUNT }, () => mutated(rng, cluster.modelId));
    const answers: Array<{ status: number; json: unknown }> = new Array(COUNT);
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let i = next++; i < COUNT; i = next++) {
          const response = await fetch(`${cluster.baseUrl}${cases[i].path}`, {
            method: "POST",
            headers: { "x-api-key": cluster.apiKey, "content-type": "application/json" },
            body: cases[i].body,
          });
          const text = await response.text();
          let json: unknown = `not JSON: ${text.slice(0, 200)}`;
          try {
            json = JSON.parse(text);
          } catch {}
          answers[i] = { status: response.status, json };
        }
      }),
    );
    const wrong = answers
      .map((a, i) => ({ a, c: cases[i] }))
      .filter(({ a, c }) => {
        if (a.status === 200) {
          const type = (a.json as { type?: unknown; input_tokens?: unknown }) ?? {};
          return c.path === "/messages" ? type.type !== "message" : typeof type.input_tokens !== "number";
        }
        return a.status < 400 || a.status >= 500 || !anthropicShaped(a.json);
      })
      .map(({ a, c }) => `${c.path} ${c.what} -> ${a.status} ${JSON.stringify(a.json).slice(0, 200)}`);
    expect(wrong).toEqual([]);
    const statuses = new Map<number, number>();
    for (const a of answers) statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
    console.log(`anthropic fuzz: statuses ${[...statuses].map(([s, n]) => `${s}x${n}`).join(" ")}`);
    // Most mutations break the body: the test is about refusals, not about replies.
    expect((statuses.get(400) ?? 0) + (statuses.get(404) ?? 0)).toBeGreaterThan(COUNT / 2);

    expect(cluster.scheduler.inFlight).toBe(0);
    const good = await fetch(`${cluster.baseUrl}/messages`, {
      method: "POST",
      headers: { "x-api-key": cluster.apiKey, "content-type": "application/json" },
      body: JSON.stringify(validBody(cluster.modelId)),
    });
    expect(good.status).toBe(200);
  }, 180_000);
});
