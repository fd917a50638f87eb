// The real Claude Code CLI (npm @anthropic-ai/claude-code, pinned; installed by this test under .cache/) against
// a real 2-stage cluster serving the scripted model, configured only the documented way (ANTHROPIC_BASE_URL at
// the server's root, the key, the served id as every model): it sends its own requests (?beta=true, its beta
// headers, adaptive thinking, a mid-conversation system message, cache_control everywhere), reads our stream
// (thinking, text), never sees a call to a tool it did not declare (the scripted model would call two; the
// last stage's tool grammar masks them), and reports the prefix cache's reads. Skips, saying why, where npm cannot
// install the CLI or it ships no binary for this platform.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { arch, platform, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";
import { runCommand } from "../helpers/run-command.js";

const VERSION = "2.1.197";
const PREFIX = join(process.cwd(), ".cache", "claude-code", VERSION);
const BINARY = join(PREFIX, "node_modules", "@anthropic-ai", `claude-code-${platform()}-${arch()}`, "claude");

let cluster: ApiCluster | undefined;
let skipReason: string | undefined;
let home = "";

/** Installs the pinned CLI once (its platform binary comes as an optional dependency); a reason when it cannot. */
async function install(): Promise<string | undefined> {
  if (existsSync(BINARY)) return undefined;
  mkdirSync(PREFIX, { recursive: true });
  const npm = await runCommand(
    "npm",
    [
      "install",
      "--prefix",
      PREFIX,
      "--no-save",
      "--no-audit",
      "--no-fund",
      "--ignore-scripts",
      `@anthropic-ai/claude-code@${VERSION}`,
    ],
    { timeoutMs: 240_000 },
  );
  if (npm.code !== 0)
    return `npm could not install @anthropic-ai/claude-code@${VERSION}: ${npm.stderr.slice(-400)}`;
  if (!existsSync(BINARY))
    return `@anthropic-ai/claude-code@${VERSION} has no binary for ${platform()}-${arch()}`;
  return undefined;
}

beforeAll(async () => {
  skipReason = await install();
  if (skipReason) {
    console.warn(`claude-code: skipping: ${skipReason}`);
    return;
  }
  home = mkdtempSync(join(tmpdir(), "claude-code-home-"));
  cluster = await startApiCluster({
    preset: "scripted",
    stages: 2,
    contextWindow: 16_384,
    prefixCacheBytesPerNode: 64 * 1024 * 1024,
  });
}, 300_000);
afterAll(async () => {
  await cluster?.stop();
  if (home) rmSync(home, { recursive: true, force: true });
});

interface StreamLine {
  type: string;
  subtype?: string;
  message?: { role: string; content: Array<Record<string, unknown>> };
  num_turns?: number;
  api_error_status?: number | null;
  is_error?: boolean;
  usage?: { input_tokens: number; output_tokens: number; cache_read_input_tokens: number };
}

/** One `claude -p` session; only the variables a user sets (nothing from this environment leaks in). */
async function claude(auth: Record<string, string>, args: string[]): Promise<StreamLine[]> {
  const c = cluster as ApiCluster;
  const cwd = mkdtempSync(join(home, "work-"));
  const result = await runCommand(
    BINARY,
    ["-p", "What is the weather in Paris?", "--output-format", "stream-json", "--verbose", ...args],
    {
      cwd,
      timeoutMs: 120_000,
      env: {
        PATH: process.env.PATH,
        HOME: home,
        ANTHROPIC_BASE_URL: c.server.url,
        ANTHROPIC_MODEL: c.modelId,
        ANTHROPIC_DEFAULT_HAIKU_MODEL: c.modelId,
        ANTHROPIC_SMALL_FAST_MODEL: c.modelId,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
        DISABLE_AUTOUPDATER: "1",
        ...auth,
      },
    },
  );
  const lines = result.stdout
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as StreamLine);
  if (!lines.some((l) => l.type === "result"))
    throw new Error(`claude exited ${result.code} without a result: ${result.stderr.slice(-1000)}`);
  return lines;
}

/** The blocks Claude Code read from our streams, in order, and the tool results it sent back. */
function blocksOf(lines: StreamLine[], role: "assistant" | "user"): Array<Record<string, unknown>> {
  return lines.filter((l) => l.type === role).flatMap((l) => l.message?.content ?? []);
}

describe("Claude Code against the cluster", () => {
  it("reads our stream with thinking and text, and the scripted model's calls to tools it never declared are not made", async (ctx) => {
    if (skipReason || !cluster) return ctx.skip();
    // The Agent tool brings Claude Code's mid-conversation system message (its list of agent types). The scripted
    // model would call get_weather and get_time, which Claude Code does not declare: the last stage's tool
    // grammar masks those calls (only declared tools can be called), so the turn ends with text.
    const lines = await claude({ ANTHROPIC_AUTH_TOKEN: cluster.apiKey }, [
      "--system-prompt",
      "Be brief.",
      "--tools",
      "Agent",
      "--max-turns",
      "2",
    ]);
    const result = lines[lines.length - 1];
    expect(result).toMatchObject({ type: "result", subtype: "success", is_error: false });
    expect(result.api_error_status ?? undefined).toBeUndefined();
    const assistant = blocksOf(lines, "assistant");
    expect(assistant[0]).toMatchObject({ type: "thinking", thinking: SCRIPTED_REPLY.reasoning });
    expect(assistant[1]).toMatchObject({
      type: "text",
      text: expect.stringContaining(SCRIPTED_REPLY.content),
    });
    expect(assistant.filter((b) => b.type === "tool_use")).toHaveLength(0);
    expect(result.usage?.output_tokens).toBeGreaterThan(0);
    const served = cluster.server.requests.figures().recent.filter((r) => r.api === "messages");
    expect(served.length).toBeGreaterThanOrEqual(1);
    for (const r of served) expect(r.status).toBe("completed");
  });

  it("sends the key as x-api-key with ANTHROPIC_API_KEY", async (ctx) => {
    if (skipReason || !cluster) return ctx.skip();
    const lines = await claude({ ANTHROPIC_API_KEY: cluster.apiKey }, [
      "--system-prompt",
      "Be brief.",
      "--tools",
      "",
      "--max-turns",
      "1",
    ]);
    const result = lines[lines.length - 1];
    expect(result).toMatchObject({ type: "result", is_error: false });
    expect(result.api_error_status ?? undefined).toBeUndefined();
    expect(blocksOf(lines, "assistant")[1]).toMatchObject({
      type: "text",
      text: expect.stringContaining(SCRIPTED_REPLY.content),
    });
    // Its prompt begins as the previous test's did: Claude Code sees the prefix cache's reads.
    expect(result.usage?.cache_read_input_tokens).toBeGreaterThan(0);
  });
});
