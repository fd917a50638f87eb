// One huge request must not freeze the node: on a real `cluster up` process, while a chat request with a prompt of
// megabytes is rendered and tokenized (then refused: it cannot fit the tiny model's window), /health keeps
// answering within a fraction of a second. Rendering and tokenizing on the event loop stalled every other request
// (and the heartbeats) for as long as they took.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "big-prompt-"));
let node: CliProcess | undefined;
let apiUrl = "";

beforeAll(async () => {
  const modelDir = await ensureModel("tiny", "tiny");
  const port = await freePort();
  apiUrl = `http://127.0.0.1:${port}`;
  const args = ["up", "--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  args.push("--port", String(await freePort()), "--api-port", String(port));
  node = runCli(args, { STUDIO_CLUSTER_HOME: home });
  await waitForHealth(apiUrl, (h) => h.state === "ready", "the node to be ready", node, 90_000);
});

afterAll(async () => {
  await node?.stop("SIGKILL");
  rmSync(home, { recursive: true, force: true });
});

/** Varied words, so the tokenizer has real merging work to do. */
function bigText(bytes: number): string {
  const words = ["cluster", "token", "stage", "Mac", "layer", "λ", "数据", "pipeline", "42", "—", "ok"];
  const parts: string[] = [];
  let length = 0;
  for (let i = 0; length < bytes; i++) {
    const word = `${words[(i * 7 + (i >> 3)) % words.length]}${i % 13 === 0 ? ".\n" : " "}`;
    parts.push(word);
    length += word.length;
  }
  return parts.join("");
}

describe("a prompt of megabytes", () => {
  it("is tokenized off the event loop: /health answers meanwhile", async () => {
    const body = JSON.stringify({
      messages: [{ role: "user", content: bigText(6 * 1024 * 1024) }],
      max_tokens: 1,
    });
    let polling = true;
    let slowestHealthMs = 0;
    let polls = 0;
    const poller = (async () => {
      while (polling) {
        const t0 = Date.now();
        await fetch(`${apiUrl}/health`, { signal: AbortSignal.timeout(30_000) });
        slowestHealthMs = Math.max(slowestHealthMs, Date.now() - t0);
        polls++;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const t0 = Date.now();
    const response = await fetch(`${apiUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      signal: AbortSignal.timeout(120_000),
    });
    const requestMs = Date.now() - t0;
    const reply = (await response.json()) as { error?: { code?: string } };
    polling = false;
    await poller;
    console.log(
      `6 MiB prompt: answered in ${requestMs} ms; /health polled ${polls}x, slowest ${slowestHealthMs} ms`,
    );
    expect(response.status).toBe(400);
    expect(reply.error?.code).toBe("context_length_exceeded");
    // The request took long (the work is real), and the loop stayed free meanwhile: no /health waited more than a
    // small share of it (on the event loop, one waited as long as the whole tokenization). The bound is loose
    // because this machine's cores are shared: the worker and the loop compete for them.
    expect(requestMs).toBeGreaterThan(2000);
    expect(slowestHealthMs).toBeLessThan(Math.min(3000, requestMs / 4));
  });
});
