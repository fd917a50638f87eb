// Slow clients on a real `cluster up --body-timeout 2` process: connections that send a body one byte every
// 300 ms, or never finish their headers, are cut off (408, connection closed) within the timeout plus Node's
// check interval, while a normal request made meanwhile is answered. Without receive timeouts such sockets
// stayed open for as long as the client kept dribbling.
import { mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, complete, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const BODY_TIMEOUT_S = 2;
const home = mkdtempSync(join(tmpdir(), "api-slow-"));
let node: CliProcess | undefined;
let port = 0;

interface SlowClient {
  socket: Socket;
  /** Resolves with the ms from connect to close, and what the server wrote. */
  closed: Promise<{ afterMs: number; reply: string }>;
  stop(): void;
}

/** Sends `head`, then one byte of the body every `gapMs` until the server closes the connection. */
function slowClient(head: string, gapMs: number): SlowClient {
  const socket = connect(port, "127.0.0.1");
  const started = Date.now();
  let reply = "";
  let timer: NodeJS.Timeout | undefined;
  socket.on("data", (d) => {
    reply += d.toString();
  });
  socket.on("error", () => {});
  const closed = new Promise<{ afterMs: number; reply: string }>((resolve) =>
    socket.on("close", () => {
      clearInterval(timer);
      resolve({ afterMs: Date.now() - started, reply });
    }),
  );
  socket.on("connect", () => {
    socket.write(head);
    timer = setInterval(() => {
      if (!socket.destroyed) socket.write("{");
    }, gapMs);
  });
  return { socket, closed, stop: () => socket.destroy() };
}

beforeAll(async () => {
  const modelDir = await ensureModel("tiny", "tiny");
  port = await freePort();
  const args = ["up", "--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  args.push("--port", String(await freePort()), "--api-port", String(port));
  args.push("--body-timeout", String(BODY_TIMEOUT_S));
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

describe("cluster up --body-timeout", () => {
  it("cuts off clients that dribble a body or never finish their headers, and keeps serving", async () => {
    const bodyHead =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
      "Content-Length: 100000\r\n\r\n";
    const clients = [
      ...Array.from({ length: 20 }, () => slowClient(bodyHead, 300)),
      // Headers that never end: one header line, then a byte at a time of the next.
      ...Array.from({ length: 5 }, () => slowClient("GET /health HTTP/1.1\r\nX-Slow: ", 300)),
    ];
    try {
      // Served meanwhile.
      const reply = await complete(`http://127.0.0.1:${port}`, "still here?", 2);
      expect(reply.status, JSON.stringify(reply.body)).toBe(200);
      const limitMs = BODY_TIMEOUT_S * 1000 + 1500;
      const results = await Promise.all(
        clients.map((c) =>
          Promise.race([
            c.closed,
            new Promise<{ afterMs: number; reply: string }>((r) =>
              setTimeout(() => r({ afterMs: Number.POSITIVE_INFINITY, reply: "still open" }), limitMs + 5000),
            ),
          ]),
        ),
      );
      for (const r of results) {
        expect(r.afterMs, r.reply).toBeLessThanOrEqual(limitMs);
        expect(r.afterMs).toBeGreaterThanOrEqual(BODY_TIMEOUT_S * 1000 - 200);
      }
      // The body dribblers are told why.
      expect(results.slice(0, 20).every((r) => r.reply.startsWith("HTTP/1.1 408"))).toBe(true);
    } finally {
      for (const c of clients) c.stop();
    }
  });
});
