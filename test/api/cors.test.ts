// CORS, opt-in (`cluster up --cors-origin`): over real HTTP against a real cluster (one node-agent process, the
// tiny model) with an API key set. A preflight is answered before the key is checked; answers to real
// requests (JSON, SSE, errors, and those a non-coordinator forwards) carry the headers; without the option
// nothing changes.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiServer, startApiServer } from "../../api/server.js";
import { type ApiCluster, readSse, startApiCluster } from "../helpers/api-cluster.js";
import { type RelayAgent, startRelayAgent } from "../helpers/relay-agent.js";

const PAGE = "http://localhost:3000";
let cluster: ApiCluster;
/** The same generator behind a server started without --cors-origin. */
let plain: ApiServer;
/** A node that is not the coordinator: it forwards every /v1 request to the cluster's server. */
let forwarder: ApiServer;
let relayAgent: RelayAgent;

beforeAll(async () => {
  cluster = await startApiCluster({
    preset: "tiny",
    stages: 1,
    contextWindow: 1024,
    corsOrigins: [PAGE, "https://app.example"],
  });
  const ctx = {
    generator: () => cluster.scheduler,
    modelDir: cluster.modelDir,
    modelId: cluster.modelId,
    health: () => ({ ok: true }),
  };
  plain = await startApiServer(ctx, { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey });
  relayAgent = await startRelayAgent({
    apiUrl: cluster.server.url,
    relayToken: cluster.relayToken,
    clusterKey: cluster.clusterKey,
    modelDir: cluster.modelDir,
  });
  forwarder = await startApiServer(
    {
      ...ctx,
      generator: () => undefined,
      relay: () => relayAgent.relay,
    },
    { host: "127.0.0.1", port: 0, apiKey: cluster.apiKey, corsOrigins: [PAGE] },
  );
});
afterAll(async () => {
  await forwarder?.close();
  await relayAgent?.close();
  await plain?.close();
  await cluster?.stop();
});

function preflight(url: string, origin = PAGE): Promise<Response> {
  return fetch(url, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization,content-type",
    },
  });
}

function chatStream(url: string, key: string | undefined): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: {
      origin: PAGE,
      "content-type": "application/json",
      ...(key ? { authorization: `Bearer ${key}` } : {}),
    },
    body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 4, stream: true }),
  });
}

describe("with --cors-origin", () => {
  it("answers a preflight without the API key, for an allowed origin only", async () => {
    const allowed = await preflight(`${cluster.baseUrl}/chat/completions`);
    expect(allowed.status).toBe(204);
    expect(allowed.headers.get("access-control-allow-origin")).toBe(PAGE);
    expect(allowed.headers.get("access-control-allow-methods")).toMatch(/POST/);
    expect(allowed.headers.get("access-control-allow-headers")?.toLowerCase()).toMatch(/authorization/);
    const other = await preflight(`${cluster.baseUrl}/chat/completions`, "https://evil.example");
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("puts the headers on JSON answers, on streams and on 401s", async () => {
    const models = await fetch(`${cluster.baseUrl}/models`, {
      headers: { origin: "https://app.example", authorization: `Bearer ${cluster.apiKey}` },
    });
    expect(models.status).toBe(200);
    expect(models.headers.get("access-control-allow-origin")).toBe("https://app.example");
    const stream = await chatStream(cluster.server.url, cluster.apiKey);
    expect(stream.status).toBe(200);
    expect(stream.headers.get("access-control-allow-origin")).toBe(PAGE);
    expect(stream.headers.get("content-type")).toMatch(/text\/event-stream/);
    const events = await readSse(stream);
    expect(events[events.length - 1].data).toBe("[DONE]");
    const denied = await chatStream(cluster.server.url, undefined);
    expect(denied.status).toBe(401);
    expect(denied.headers.get("access-control-allow-origin")).toBe(PAGE);
    expect(((await denied.json()) as { error: { code: string } }).error.code).toBe("invalid_api_key");
  });

  it("puts them on what a non-coordinator forwards", async () => {
    const stream = await chatStream(forwarder.url, cluster.apiKey);
    expect(stream.status).toBe(200);
    expect(stream.headers.get("access-control-allow-origin")).toBe(PAGE);
    const events = await readSse(stream);
    expect(events[events.length - 1].data).toBe("[DONE]");
  });
});

describe("without --cors-origin (the default)", () => {
  it("sends no CORS headers and answers no preflight", async () => {
    // No preflight handling: an OPTIONS is an unknown route behind the key, refused as any keyless request.
    const options = await preflight(`${plain.url}/v1/chat/completions`);
    expect(options.status).toBe(401);
    expect(options.headers.get("access-control-allow-origin")).toBeNull();
    const models = await fetch(`${plain.url}/v1/models`, {
      headers: { origin: PAGE, authorization: `Bearer ${cluster.apiKey}` },
    });
    expect(models.status).toBe(200);
    expect(models.headers.get("access-control-allow-origin")).toBeNull();
  });
});
