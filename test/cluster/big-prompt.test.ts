// One huge request must not freeze the node, nor keep it busy for long: on a real `cluster up` process,
// - while a prompt of megabytes is rendered and tokenized whole (count_tokens must count it all), /health keeps
//   answering within a fraction of a second: on the event loop, that work stalled every other request (and the
//   heartbeats) for as long as it took;
// - a chat request with the same prompt, which cannot fit the tiny model's window, is refused after about a
//   window's worth of it is counted (twice the window), in a small share of the time counting it all takes.
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

/** POSTs a JSON body; resolves with the status, the reply and the time it took. */
async function post(
  path: string,
  body: object,
): Promise<{ status: number; reply: Record<string, unknown>; ms: number }> {
  const t0 = Date.now();
  const response = await fetch(`${apiUrl}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(120_000),
  });
  const reply = (await response.json()) as Record<string, unknown>;
  return { status: response.status, reply, ms: Date.now() - t0 };
}

describe("a prompt of megabytes", () => {
  const prompt = bigText(6 * 1024 * 1024);
  let countMs = 0;

  it("is tokenized off the event loop: /health answers meanwhile", async () => {
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
    const counted = await post("/v1/messages/count_tokens", {
      model: "tiny",
      messages: [{ role: "user", content: prompt }],
    });
    polling = false;
    await poller;
    countMs = counted.ms;
    console.log(
      `6 MiB prompt: counted (${counted.reply.input_tokens} tokens) in ${counted.ms} ms; /health polled ${polls}x, slowest ${slowestHealthMs} ms`,
    );
    expect(counted.status, JSON.stringify(counted.reply)).toBe(200);
    expect(counted.reply.input_tokens).toBeGreaterThan(1_000_000);
    // The count took long (the work is real), and the loop stayed free meanwhile: no /health waited more than a
    // small share of it (on the event loop, one waited as long as the whole tokenization). The bound is loose
    // because this machine's cores are shared: the worker and the loop compete for them.
    expect(counted.ms).toBeGreaterThan(2000);
    expect(slowestHealthMs).toBeLessThan(Math.min(3000, counted.ms / 4));
  });

  it("is refused for generation once twice the window is counted, not after tokenizing it all", async () => {
    const refused = await post("/v1/chat/completions", {
      messages: [{ role: "user", content: prompt }],
      max_tokens: 1,
    });
    const error = refused.reply.error as { code?: string; message?: string } | undefined;
    console.log(
      `6 MiB prompt refused in ${refused.ms} ms (counting it whole took ${countMs} ms): ${error?.message}`,
    );
    expect(refused.status).toBe(400);
    expect(error?.code).toBe("context_length_exceeded");
    expect(error?.message).toMatch(
      /maximum context length is 8192 tokens. However, your messages resulted in more than \d+ tokens/,
    );
    expect(refused.ms).toBeLessThan(countMs / 4);
  });
});
