// The real OpenClaw CLI (npm's openclaw, pinned, on a Node it supports; see helpers/openclaw-cli.ts) against a
// two-node `cluster up` pair on loopback, configured with `cluster openclaw-config`'s own output. One agent turn
// per API kind on the scripted-tool model: the model calls OpenClaw's `ls` tool, OpenClaw runs it and sends
// the result back, and the model's follow-up (a text reply with reasoning) ends the turn. Checked from what
// OpenClaw itself prints (--json) and stores (its session transcript), and from the cluster's /metrics.
// Skips only when npm cannot install the package, saying why.
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TOOL_TURN_REPLY } from "../../cli/make-model/scripted.js";
import { liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import {
  ensureOpenClaw,
  OPENCLAW_NODE_VERSION,
  OPENCLAW_VERSION,
  type OpenClawCli,
  openClawTranscript,
} from "../helpers/openclaw-cli.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";
import { runCommand } from "../helpers/run-command.js";

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
let followerUrl = "";

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
  const [grpcA, grpcB, apiA, apiB] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const common = ["--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  common.push("--memory-bandwidth", "50");
  const a = runCli(["up", ...common, "--name", "alpha", "--port", `${grpcA}`, "--api-port", `${apiA}`], env);
  running.push(a);
  // Only the second names the first (--peer); the first learns of it from its Hello.
  const peer = ["--peer", `127.0.0.1:${grpcA}`];
  const b = runCli(
    ["up", ...common, "--name", "beta", "--port", `${grpcB}`, "--api-port", `${apiB}`, ...peer],
    env,
  );
  running.push(b);
  await waitForHealth(
    `http://127.0.0.1:${apiA}`,
    (h) => {
      const elected =
        h.coordinator?.id ===
        liveNodes(h)
          .map((m) => m.id)
          .sort()[0];
      if (h.coordinator?.apiUrl && liveNodes(h).length === 2 && elected)
        coordinatorUrl = h.coordinator.apiUrl;
      return coordinatorUrl !== "";
    },
    "alpha to see two members",
    running,
    120_000,
  );
  await waitForHealth(
    coordinatorUrl,
    (h) => h.state === "ready" && h.plan?.stages.length === 2,
    "a two-stage plan",
    running,
    120_000,
  );
  followerUrl =
    coordinatorUrl === `http://127.0.0.1:${apiA}` ? `http://127.0.0.1:${apiB}` : `http://127.0.0.1:${apiA}`;
  await waitForHealth(
    followerUrl,
    (h) => h.state === "following",
    "the other node to follow",
    running,
    60_000,
  );

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

type Block = { type: string; thinking?: string; text?: string; name?: string; arguments?: unknown };
interface StoredMessage {
  role: string;
  content: Block[] | string;
  toolName?: string;
  isError?: boolean;
  usage?: { input: number; cacheRead: number };
}

function messagesOf(events: Array<Record<string, unknown>>): StoredMessage[] {
  return events.filter((e) => e.type === "message").map((e) => e.message as StoredMessage);
}

function blocks(m: StoredMessage, type: string): Block[] {
  return Array.isArray(m.content) ? m.content.filter((b) => b.type === type) : [];
}

function occurrences(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

/** This process's environment without vitest's own variables, which OpenClaw (tested with vitest) reacts to. */
function userEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env))
    if (key.startsWith("VITEST") || key === "NODE_ENV" || key === "TEST" || key === "NODE_OPTIONS")
      delete env[key];
  return env;
}

/**
 * One `openclaw agent --local` turn through the named provider; its --json result. Its stdout goes to a file:
 * OpenClaw exits right after writing the JSON, and into a pipe that write would be cut short.
 */
async function agentTurn(provider: string, sessionId: string): Promise<Record<string, unknown>> {
  const args = [cli!.entry, "agent", "--local", "--session-id", sessionId, "--json", "--timeout", "280"];
  args.push("--model", `${provider}/${modelId}`, "--message", "List the files here");
  const outFile = join(openclawHome, `${sessionId}.json`);
  const out = openSync(outFile, "w");
  const r = await runCommand(cli!.node, args, {
    cwd: openclawHome,
    env: { ...userEnv(), HOME: openclawHome, PATH: cli!.path },
    timeoutMs: 300_000,
    stdout: out,
  });
  closeSync(out);
  const stdout = readFileSync(outFile, "utf8");
  const diagnostics = `exit ${r.code}\n--- stdout\n${stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;
  expect(r.code, diagnostics).toBe(0);
  expect(stdout, diagnostics).toMatch(/^\s*\{/);
  return JSON.parse(stdout) as Record<string, unknown>;
}

async function checkToolTurn(provider: string, api: string, sessionId: string): Promise<void> {
  const before = await requestsTotal(api);
  const result = await agentTurn(provider, sessionId);
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
  expect(blocks(call, "thinking").map((b) => b.thinking)).toEqual([TOOL_TURN_REPLY.call.reasoning]);
  expect(blocks(call, "text").map((b) => b.text)).toEqual([TOOL_TURN_REPLY.call.content]);
  expect(blocks(call, "toolCall").map((b) => [b.name, b.arguments])).toEqual([["ls", { path: "." }]]);
  expect(toolResult.toolName).toBe("ls");
  expect(toolResult.isError).toBe(false);
  expect(JSON.stringify(toolResult.content)).toContain(marker);
  expect(blocks(answer, "thinking").map((b) => b.thinking)).toEqual([TOOL_TURN_REPLY.answer.reasoning]);
  expect(blocks(answer, "text").map((b) => b.text)).toEqual([TOOL_TURN_REPLY.answer.content]);
  expect(blocks(answer, "toolCall")).toEqual([]);
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
