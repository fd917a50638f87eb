// The API key on a real `cluster up --api-key` process (dist/cli/main.js on loopback): no spelling of a protected
// path reaches its route without the key. Percent-encoded letters (which the router decodes), double encoding,
// case variants, extra slashes and dot segments, the query-string key on /v1, and the dashboard's WebSocket are
// each sent as raw request lines (node:http keeps the path byte for byte; fetch would normalise it). With the key
// the encoded spellings do reach their routes, which is what made them a bypass when the check read URL text.
// A loopback client cannot pass for a follower's relay (docs/architecture.md "Relayed requests"): the forwarded
// marker proves nothing, and the relay header is refused unless it holds the process's own relay secret.

import { mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const API_KEY = "api-auth-test-key-0123456789";
const home = mkdtempSync(join(tmpdir(), "api-auth-"));
let node: CliProcess | undefined;
let port = 0;

interface RawReply {
  status: number;
  body: string;
}

/** One request with the path exactly as given. */
function raw(
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method, path, headers, timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.end(body);
  });
}

/** The status line a WebSocket upgrade on `path` gets. */
function upgradeStatus(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let text = "";
    socket.on("data", (d) => {
      text += d.toString();
      if (text.includes("\r\n")) {
        socket.destroy();
        resolve(text.split("\r\n")[0]);
      }
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(text.split("\r\n")[0]));
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
  });
}

const bearer = { authorization: `Bearer ${API_KEY}` };
const chatBody = JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
const json = { "content-type": "application/json" };

beforeAll(async () => {
  const modelDir = await ensureModel("tiny", "tiny");
  port = await freePort();
  const grpcPort = await freePort();
  const args = ["up", "--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  args.push("--port", String(grpcPort), "--api-port", String(port), "--api-key", API_KEY);
  node = runCli(args, { STUDIO_CLUSTER_HOME: home });
  await waitForHealth(
    `http://127.0.0.1:${port}`,
    (h) => h.state === "ready",
    "the node to be ready",
    node,
    90_000,
  );
});

afterAll(async () => {
  await node?.stop("SIGKILL");
  rmSync(home, { recursive: true, force: true });
});

describe("cluster up --api-key", () => {
  it("answers 401 without the key on every spelling of a protected path", async () => {
    const protectedPaths: Array<[string, string]> = [
      ["POST", "/%761/chat/completions"],
      ["POST", "/v1/chat/completions"],
      ["POST", "/%76%31/responses"],
      ["POST", "/v1/%63ompletions"],
      ["GET", "/%76%31/models"],
      ["GET", "/%76%31/models/demo"],
      ["GET", "/%2576%2531/models"], // double encoding
      ["GET", "/V1/models"],
      ["GET", "/%56%31/models"],
      ["GET", "//v1/models"],
      ["GET", "/v1//models"],
      ["GET", "/./v1/models"],
      ["GET", "/v1/./models"],
      ["GET", "/x/../v1/models"],
      ["GET", "/v1/models/"],
      ["GET", "/v1%2fmodels"],
      ["GET", "/v1/models;x"],
      ["GET", "/v1/models?key=wrong"],
      ["GET", "/metrics"],
      ["GET", "/%6detrics"],
      ["GET", "/%6D%65trics"],
      ["GET", "/METRICS"],
      ["GET", "/metrics/"],
      ["GET", "/"],
      ["GET", "/%2f"],
      ["GET", "/dashboard/snapshot.json"],
      ["GET", "/dashboard/%73napshot.json"],
      ["GET", "/dashboard/%2573napshot.json"],
      ["GET", "/%64ashboard/snapshot.json"],
      ["GET", "/no/such/route"],
    ];
    const leaks: string[] = [];
    for (const [method, path] of protectedPaths) {
      const reply = await raw(
        method,
        path,
        method === "POST" ? json : {},
        method === "POST" ? chatBody : undefined,
      );
      if (reply.status !== 401)
        leaks.push(`${method} ${path} -> ${reply.status} ${reply.body.slice(0, 120)}`);
    }
    expect(leaks, `answered without the key:\n${leaks.join("\n")}`).toEqual([]);
    // A wrong key or another scheme is refused the same way, in OpenAI's error shape.
    const wrong = await raw("GET", "/%76%31/models", { authorization: "Bearer nope" });
    expect(wrong.status).toBe(401);
    expect(JSON.parse(wrong.body).error.code).toBe("invalid_api_key");
    expect((await raw("GET", "/%6detrics", { authorization: `Basic ${API_KEY}` })).status).toBe(401);
    // /v1 takes the key only as a Bearer header, never from the query string.
    expect((await raw("GET", `/v1/models?key=${API_KEY}`)).status).toBe(401);
  });

  it("with the key, the encoded spellings reach their routes (so the check above is on the routes)", async () => {
    expect((await raw("GET", "/%76%31/models", bearer)).status).toBe(200);
    expect((await raw("GET", "/%6detrics", bearer)).status).toBe(200);
    expect((await raw("GET", "/dashboard/%73napshot.json", bearer)).status).toBe(200);
    expect((await raw("GET", `/%6detrics?key=${API_KEY}`)).status).toBe(200);
    const chat = await raw("POST", "/%761/chat/completions", { ...bearer, ...json }, chatBody);
    expect(chat.status, chat.body).toBe(200);
  });

  it("refuses a loopback request that passes for a relayed one without the key", async () => {
    const forwarded = { "x-studio-cluster-forwarded": "1" };
    const relay = (value: string) => ({ ...forwarded, "x-studio-cluster-relay": value });
    const attempts: Array<[string, string, Record<string, string>]> = [
      ["POST", "/v1/chat/completions", forwarded],
      ["POST", "/%761/chat/completions", forwarded],
      ["POST", "/v1/chat/completions", relay("guess")],
      ["POST", "/v1/chat/completions", relay("")],
      ["GET", "/%76%31/models", relay("guess")],
      ["GET", "/metrics", relay("guess")],
      ["GET", "/dashboard/snapshot.json", relay("guess")],
    ];
    const leaks: string[] = [];
    for (const [method, path, headers] of attempts) {
      const post = method === "POST";
      const reply = await raw(
        method,
        path,
        post ? { ...json, ...headers } : headers,
        post ? chatBody : undefined,
      );
      if (reply.status !== 401) leaks.push(`${method} ${path} ${JSON.stringify(headers)} -> ${reply.status}`);
    }
    expect(leaks, `answered without the key:\n${leaks.join("\n")}`).toEqual([]);
    // The relay header is reserved: a wrong one is refused even beside the right key, naming why.
    const reserved = await raw("GET", "/v1/models", { ...bearer, ...relay("guess") });
    expect(reserved.status).toBe(401);
    expect(JSON.parse(reserved.body).error.message).toMatch(/reserved for this node's own agent/);
    // The forwarded marker with the key is a request like any other (this node coordinates: no relay loop).
    expect((await raw("GET", "/v1/models", { ...bearer, ...forwarded })).status).toBe(200);
  });

  it("keeps /health and the static dashboard files open, and the WebSocket under the key", async () => {
    expect((await raw("GET", "/health")).status).toBe(200);
    expect((await raw("GET", "/dashboard/dashboard.js")).status).toBe(200);
    for (const path of [
      "/dashboard/live",
      "/dashboard/%6cive",
      "//dashboard/live",
      "/dashboard/live?key=wrong",
    ])
      expect(await upgradeStatus(path), path).not.toMatch(/ 101 /);
    expect(await upgradeStatus(`/dashboard/live?key=${API_KEY}`)).toMatch(/ 101 /);
  });
});
