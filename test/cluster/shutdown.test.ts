// `cluster up` under load and at shutdown: --max-sequences bounds the requests generating at once, --max-queue
// the requests waiting for a slot (429 with retry-after beyond it), and SIGTERM drains: every open stream ends
// with a terminal error event, then the process leaves the cluster and exits 0.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "cluster-shutdown-"));
let node: CliProcess | undefined;

afterAll(async () => {
  await node?.stop("SIGKILL");
  rmSync(home, { recursive: true, force: true });
});

function chat(apiUrl: string, maxTokens: number): Promise<Response> {
  return fetch(`${apiUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      messages: [{ role: "user", content: "a long story please" }],
      max_tokens: maxTokens,
      stream: true,
    }),
  });
}

describe("cluster up: bounded queue and SIGTERM drain", () => {
  it("queues up to --max-queue, answers 429 beyond, and SIGTERM ends every open stream with a terminal event", async () => {
    const modelDir = await ensureModel("tiny-4bit", "tiny");
    const apiPort = await freePort();
    const apiUrl = `http://127.0.0.1:${apiPort}`;
    node = runCli(
      [
        "up",
        "--model",
        modelDir,
        "--no-bonjour",
        "--api-port",
        String(apiPort),
        "--threads",
        "1",
        "--key",
        generateClusterKey(),
        "--max-sequences",
        "1",
        "--max-queue",
        "1",
        "--drain-timeout",
        "0.5",
      ],
      { STUDIO_CLUSTER_HOME: home },
    );
    await waitForHealth(apiUrl, (h) => h.state === "ready", "the node to be ready", node, 90_000);

    const open = await chat(apiUrl, 4000);
    expect(open.status).toBe(200);
    const reader = open.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while ((text.match(/\n\n/g) ?? []).length < 4) text += decoder.decode((await reader.read()).value);

    // The second request waits for the only slot; its stream still opens early (the first event must not
    // wait for admission). The third finds the queue full.
    const queued = await chat(apiUrl, 4);
    expect(queued.status).toBe(200);
    const busy = await chat(apiUrl, 4);
    expect(busy.status).toBe(429);
    expect(busy.headers.get("retry-after")).toBeTruthy();
    expect(((await busy.json()) as { error: { code: string } }).error.code).toBe("overloaded");

    const signalledAt = performance.now();
    node.child.kill("SIGTERM");
    for (let c = await reader.read(); !c.done; c = await reader.read())
      text += decoder.decode(c.value, { stream: true });
    const endedMs = performance.now() - signalledAt;
    const queuedText = await queued.text();
    expect(queuedText.trim().split("\n\n").slice(-2)[0]).toMatch(/"code":"cluster_not_ready"/);
    const blocks = text.trim().split("\n\n");
    expect(blocks[blocks.length - 1]).toBe("data: [DONE]");
    const error = JSON.parse(blocks[blocks.length - 2].slice(6)) as {
      error: { code: string; message: string };
    };
    expect(error.error).toMatchObject({ code: "cluster_not_ready" });
    expect(error.error.message).toMatch(/shutting down/);
    const code = await node.exited;
    const exitedMs = performance.now() - signalledAt;
    expect(code, node.output()).toBe(0);
    expect(node.stderr.join("\n"), "errors while shutting down").not.toMatch(/^(shutdown|drain): /m);
    expect(node.stdout.join("\n")).toMatch(
      /SIGTERM: leaving the cluster \(requests in flight finish or fail first\)/,
    );
    console.log(
      `SIGTERM: open stream ended with its terminal event after ${endedMs.toFixed(0)} ms, process exited 0 after ${exitedMs.toFixed(0)} ms`,
    );
  }, 120_000);
});
