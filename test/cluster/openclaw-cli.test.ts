// The real OpenClaw CLI (npm's openclaw, pinned, on a Node it supports; see helpers/openclaw-cli.ts) against a
// two-node `cluster up` pair on loopback, configured with `cluster openclaw-config`'s own output. One agent turn
// per API kind on the scripted-tool model: the model calls OpenClaw's `ls` tool, OpenClaw runs it and sends
// the result back, and the model's follow-up (a text reply with reasoning) ends the turn. Checked from what
// OpenClaw itself prints (--json) and stores (its session transcript), and from the cluster's /metrics.
// Skips only when npm cannot install the package, saying why.
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TOOL_TURN_REPLY } from "../../cli/make-model/scripted.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, runCli, startNodePair } from "../helpers/cluster-up.js";
import {
  blocksOf,
  ensureOpenClaw,
  messagesOf,
  OPENCLAW_NODE_VERSION,
  OPENCLAW_VERSION,
  type OpenClawCli,
  occurrences,
  openClawAgentTurn,
  openClawTranscript,
} from "../helpers/openclaw-cli.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const clusterHome = mkdtempSync(join(tmpdir(), "openclaw-cli-cluster-"));
const openclawHome = mkdtempSync(join(tmpdir(), "openclaw-cli-home-"));
const env = { STUDIO_CLUSTER_HOME: clusterHome };
const running: CliProcess[] = [];
const marker = `studio-marker-${randomBytes(4).toString("hex")}.txt`;

let cli: OpenClawCli | undefined;
let skipReason = "";
let modelDir = "";
let modelId = "";
let coordinatorUrl = "";

beforeAll(async () => {
  const install = await ensureOpenClaw();
  if (!install.ok) {
    skipReason = `openclaw-cli: skipping, the npm package could not be installed: ${install.reason}`;
    console.warn(skipReason);
    return;
  }
  cli = install.cli;
  // The same checkpoint test/api/scripted-tool-model.test.ts checks without OpenClaw.
  modelDir = await ensureModel("scripted-tool-4bit", "scripted-tool");
  ({ coordinatorUrl } = await startNodePair(modelDir, env, running, generateClusterKey()));

  // OpenClaw's config is exactly what `cluster openclaw-config` prints for both OpenAI API kinds.
  const config = runCli(
    ["openclaw-config", "--model", modelDir, "--base-url", `${coordinatorUrl}/v1`, "--api", "both"],
    env,
  );
  expect(await config.exited, config.output()).toBe(0);
  mkdirSync(join(openclawHome, ".openclaw", "workspace"), { recursive: true });
  writeFileSync(join(openclawHome, ".openclaw", "openclaw.json"), config.stdout.join("\n"));
  const block = JSON.parse(config.stdout.join("\n")) as {
    agents: { defaults: { model: { primary: string } } };
  };
  modelId = block.agents.defaults.model.primary.split("/").slice(1).join("/");
  writeFileSync(join(openclawHome, ".openclaw", "workspace", marker), "listed by the ls tool\n");
}, 25 * 60_000);

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(clusterHome, { recursive: true, force: true });
  rmSync(openclawHome, { recursive: true, force: true });
});

async function requestsTotal(api: string): Promise<number> {
  const text = await (await fetch(`${coordinatorUrl}/metrics`)).text();
  const line = text
    .split("\n")
    .find((l) => l.startsWith(`studio_cluster_requests_total{api="${api}",status="completed"}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

async function checkToolTurn(provider: string, api: string, sessionId: string): Promise<void> {
  const before = await requestsTotal(api);
  const result = await openClawAgentTurn(
    cli!,
    openclawHome,
    `${provider}/${modelId}`,
    sessionId,
    "List the files here",
  );
  const meta = result.meta as Record<string, unknown>;
  // Two model calls reached the cluster for this API: the tool call and the follow-up with the tool's result.
  expect(await requestsTotal(api)).toBe(before + 2);
  expect(meta.toolSummary).toEqual({ calls: 1, tools: ["ls"], failures: 0 });
  expect((meta.completion as Record<string, unknown>).stopReason).toBe("stop");

  // What OpenClaw shows: the follow-up's text, once, and no reasoning mixed into it.
  const payloads = result.payloads as Array<{ text?: string }>;
  const shown = payloads.map((p) => p.text ?? "").join("\n");
  expect(occurrences(shown, TOOL_TURN_REPLY.answer.content), shown).toBe(1);
  expect(shown).not.toContain(TOOL_TURN_REPLY.answer.reasoning);
  expect(meta.finalAssistantVisibleText).toBe(TOOL_TURN_REPLY.answer.content);

  // What OpenClaw stored: each reply's reasoning once as one thinking block, the call, the tool's real result
  // (the workspace listing, with this test's marker file), and the follow-up's usage with cached tokens.
  const messages = messagesOf(await openClawTranscript(cli!, openclawHome, sessionId));
  expect(messages.map((m) => m.role)).toEqual(["user", "assistant", "toolResult", "assistant"]);
  const [, call, toolResult, answer] = messages;
  expect(blocksOf(call, "thinking").map((b) => b.thinking)).toEqual([TOOL_TURN_REPLY.call.reasoning]);
  expect(blocksOf(call, "text").map((b) => b.text)).toEqual([TOOL_TURN_REPLY.call.content]);
  expect(blocksOf(call, "toolCall").map((b) => [b.name, b.arguments])).toEqual([["ls", { path: "." }]]);
  expect(toolResult.toolName).toBe("ls");
  expect(toolResult.isError).toBe(false);
  expect(JSON.stringify(toolResult.content)).toContain(marker);
  expect(blocksOf(answer, "thinking").map((b) => b.thinking)).toEqual([TOOL_TURN_REPLY.answer.reasoning]);
  expect(blocksOf(answer, "text").map((b) => b.text)).toEqual([TOOL_TURN_REPLY.answer.content]);
  expect(blocksOf(answer, "toolCall")).toEqual([]);
  // The follow-up repeats the first call's prompt: the prefix cache serves it and usage says so.
  expect(answer.usage!.cacheRead, JSON.stringify(answer.usage)).toBeGreaterThan(0);
}

describe(`openclaw ${OPENCLAW_VERSION} (Node ${OPENCLAW_NODE_VERSION}) against a two-node cluster`, () => {
  it("openai-responses: a tool turn runs ls, sends its result back, and the follow-up answers once with cached tokens", async (ctx) => {
    if (!cli) return ctx.skip(skipReason);
    await checkToolTurn("studio", "responses", "responses-tool-turn");
  }, 360_000);

  it("openai-completions: the same turn", async (ctx) => {
    if (!cli) return ctx.skip(skipReason);
    await checkToolTurn("studio-chat", "chat.completions", "completions-tool-turn");
  }, 360_000);

  it("anthropic-messages: the same turn, once the cluster serves /v1/messages", async (ctx) => {
    if (!cli) return ctx.skip(skipReason);
    const probe = await fetch(`${coordinatorUrl}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: modelId, max_tokens: 1, messages: [] }),
    });
    if (probe.status === 404) {
      console.warn("openclaw-cli: skipping anthropic-messages, the cluster has no POST /v1/messages (404)");
      return ctx.skip("no /v1/messages");
    }
    const config = runCli(
      ["openclaw-config", "--model", modelDir, "--base-url", `${coordinatorUrl}/v1`, "--api", "anthropic"],
      env,
    );
    const code = await config.exited;
    if (code !== 0) {
      console.warn(
        `openclaw-cli: skipping anthropic-messages, \`cluster openclaw-config --api anthropic\` failed:\n${config.output()}`,
      );
      return ctx.skip("openclaw-config --api anthropic is missing");
    }
    const block = JSON.parse(config.stdout.join("\n")) as {
      models: { providers: Record<string, { api: string }> };
    };
    const [provider] =
      Object.entries(block.models.providers).find(([, p]) => p.api === "anthropic-messages") ?? [];
    expect(provider, config.output()).toBeDefined();
    // Merge its provider into the config the other cases use.
    const path = join(openclawHome, ".openclaw", "openclaw.json");
    const current = JSON.parse(readFileSync(path, "utf8"));
    current.models.providers[provider!] = block.models.providers[provider!];
    writeFileSync(path, JSON.stringify(current, null, 2));
    await checkToolTurn(provider!, "messages", "messages-tool-turn");
  }, 360_000);
});
