// The real OpenClaw CLI from npm, for end-to-end tests: a pinned `openclaw` and a Node it supports (the
// `node-<platform>-<arch>` package: OpenClaw needs Node >= 24.16, this project runs on 20), installed once into
// .cache/openclaw/ by ordinary `npm install` runs (async child processes: vitest kills a worker blocked > 60 s).
import { closeSync, existsSync, openSync, readdirSync, readFileSync, realpathSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";
import { packageRoot } from "../../common/paths.js";
import { runCommand } from "./run-command.js";

export const OPENCLAW_VERSION = "2026.9.6";
/** A Node 24 LTS that satisfies openclaw@2026.9.6's engines (">=24.16.0 <25 || >=26.1.0"). */
export const OPENCLAW_NODE_VERSION = "24.22.3";

export interface OpenClawCli {
  /** The Node binary OpenClaw runs on. */
  node: string;
  /** openclaw's entry script (run as `node <entry> ...`). */
  entry: string;
  /** PATH with that Node first, for OpenClaw's own child processes. */
  path: string;
}

export type OpenClawInstall = { ok: true; cli: OpenClawCli } | { ok: false; reason: string };

const root = () => join(packageRoot(), ".cache", "openclaw");
const nodePackage = `node-${process.platform}-${process.arch}`;

function npmCli(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const npm = join(dir, "npm");
    if (!existsSync(npm)) continue;
    const cli = join(dirname(realpathSync(npm)), "npm-cli.js");
    if (existsSync(cli)) return cli;
  }
  return undefined;
}

function tail(text: string, lines = 15): string {
  return text.trim().split("\n").slice(-lines).join("\n");
}

/**
 * Installs (first time) and returns the pinned OpenClaw and its Node. Only a failed npm install gives
 * `ok: false`, with npm's own words; anything after that (a CLI that does not start) throws.
 */
export async function ensureOpenClaw(): Promise<OpenClawInstall> {
  const nodeDir = join(root(), `node-${OPENCLAW_NODE_VERSION}`);
  const cliDir = join(root(), `openclaw-${OPENCLAW_VERSION}`);
  const node = join(nodeDir, "node_modules", nodePackage, "bin", "node");
  const entry = join(cliDir, "node_modules", "openclaw", "openclaw.mjs");
  const timeoutMs = 15 * 60_000;
  if (!existsSync(node)) {
    const r = await runCommand(
      "npm",
      ["install", "--prefix", nodeDir, "--no-audit", "--no-fund", `${nodePackage}@${OPENCLAW_NODE_VERSION}`],
      { timeoutMs },
    );
    if (r.code !== 0 || !existsSync(node))
      return {
        ok: false,
        reason: `npm could not install ${nodePackage}@${OPENCLAW_NODE_VERSION} (exit ${r.code}):\n${tail(r.stderr)}`,
      };
  }
  const path = `${dirname(node)}${delimiter}${process.env.PATH ?? ""}`;
  if (!existsSync(entry)) {
    // npm itself runs on OpenClaw's Node, so that OpenClaw's install-time checks see a Node it supports.
    const cli = npmCli();
    if (!cli) return { ok: false, reason: "no npm on PATH to install openclaw with" };
    const r = await runCommand(
      node,
      [cli, "install", "--prefix", cliDir, "--no-audit", "--no-fund", `openclaw@${OPENCLAW_VERSION}`],
      { env: { ...process.env, PATH: path }, timeoutMs },
    );
    if (r.code !== 0 || !existsSync(entry))
      return {
        ok: false,
        reason: `npm could not install openclaw@${OPENCLAW_VERSION} (exit ${r.code}):\n${tail(r.stderr)}\n(in ${readdirSync(cliDir).join(", ")})`,
      };
  }
  const version = await runCommand(node, [entry, "--version"], {
    env: { ...process.env, PATH: path },
    timeoutMs: 120_000,
  });
  if (version.code !== 0 || !version.stdout.includes(`OpenClaw ${OPENCLAW_VERSION}`))
    throw new Error(
      `openclaw --version failed (exit ${version.code}):\n${version.stdout}\n${version.stderr}`,
    );
  return { ok: true, cli: { node, entry, path } };
}

/**
 * Every transcript event OpenClaw stored for one session (its agent database; read with OpenClaw's Node,
 * which has node:sqlite).
 */
export async function openClawTranscript(
  cli: OpenClawCli,
  home: string,
  sessionId: string,
): Promise<Array<Record<string, unknown>>> {
  const db = join(home, ".openclaw", "agents", "main", "agent", "openclaw-agent.sqlite");
  const script = `
    const { DatabaseSync } = require("node:sqlite");
    const db = new DatabaseSync(process.argv[1], { readOnly: true });
    const rows = db.prepare("SELECT event_json FROM transcript_events WHERE session_id = ? ORDER BY seq").all(process.argv[2]);
    process.stdout.write(JSON.stringify(rows.map((r) => JSON.parse(r.event_json))));`;
  const r = await runCommand(cli.node, ["-e", script, db, sessionId], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`reading OpenClaw's transcript failed (exit ${r.code}):\n${r.stderr}`);
  return JSON.parse(r.stdout) as Array<Record<string, unknown>>;
}

/** A block of an OpenClaw transcript message (thinking, text, toolCall). */
export type TranscriptBlock = {
  type: string;
  thinking?: string;
  text?: string;
  name?: string;
  arguments?: unknown;
};
export interface StoredMessage {
  role: string;
  content: TranscriptBlock[] | string;
  toolName?: string;
  isError?: boolean;
  usage?: { input: number; cacheRead: number };
}

export function messagesOf(events: Array<Record<string, unknown>>): StoredMessage[] {
  return events.filter((e) => e.type === "message").map((e) => e.message as StoredMessage);
}

export function blocksOf(m: StoredMessage, type: string): TranscriptBlock[] {
  return Array.isArray(m.content) ? m.content.filter((b) => b.type === type) : [];
}

export function occurrences(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

/** This process's environment without vitest's own variables, which OpenClaw (tested with vitest) reacts to. */
export function userEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of Object.keys(env))
    if (key.startsWith("VITEST") || key === "NODE_ENV" || key === "TEST" || key === "NODE_OPTIONS")
      delete env[key];
  return env;
}

/**
 * One `openclaw agent --local` turn with `model` ("provider/id"); its --json result, or a thrown error with
 * OpenClaw's output. Its stdout goes to a file: OpenClaw exits right after writing the JSON, and into a pipe
 * that write would be cut short.
 */
export async function openClawAgentTurn(
  cli: OpenClawCli,
  home: string,
  model: string,
  sessionId: string,
  message: string,
): Promise<Record<string, unknown>> {
  const args = [cli.entry, "agent", "--local", "--session-id", sessionId, "--json", "--timeout", "280"];
  args.push("--model", model, "--message", message);
  const outFile = join(home, `${sessionId}.json`);
  const out = openSync(outFile, "w");
  const r = await runCommand(cli.node, args, {
    cwd: home,
    env: { ...userEnv(), HOME: home, PATH: cli.path },
    timeoutMs: 300_000,
    stdout: out,
  });
  closeSync(out);
  const stdout = readFileSync(outFile, "utf8");
  const diagnostics = `exit ${r.code}\n--- stdout\n${stdout.slice(-4000)}\n--- stderr\n${r.stderr.slice(-4000)}`;
  if (r.code !== 0 || !/^\s*\{/.test(stdout)) throw new Error(`openclaw agent failed: ${diagnostics}`);
  return JSON.parse(stdout) as Record<string, unknown>;
}

/** One event of OpenClaw's assistant stream (@openclaw/ai), without its `partial` snapshot. */
export interface OpenClawStreamEvent {
  type: string;
  delta?: string;
  content?: string;
  reason?: string;
  message?: { content: TranscriptBlock[]; stopReason?: string };
  error?: { errorMessage?: string };
}

/** A model entry of `cluster openclaw-config`'s provider block, with its provider's base URL and API kind. */
export interface OpenClawModel {
  id: string;
  api: string;
  baseUrl: string;
  apiKey: string;
  [key: string]: unknown;
}

/**
 * Streams one user message to `model` through OpenClaw's own streaming runtime (@openclaw/ai, the package its
 * agent streams every reply through, from the installed CLI, on OpenClaw's Node) and returns every event in
 * order: what OpenClaw's live display is built from.
 */
export async function openClawStream(
  cli: OpenClawCli,
  model: OpenClawModel,
  message: string,
): Promise<OpenClawStreamEvent[]> {
  const driver = join(packageRoot(), "test", "helpers", "openclaw-stream-driver.mjs");
  const hoisted = join(dirname(dirname(cli.entry)), "@openclaw", "ai", "dist");
  const nested = join(dirname(cli.entry), "node_modules", "@openclaw", "ai", "dist");
  const aiDist = existsSync(hoisted) ? hoisted : nested;
  const r = await runCommand(cli.node, [driver, aiDist, JSON.stringify(model), message], {
    env: { ...userEnv(), PATH: cli.path },
    timeoutMs: 120_000,
  });
  if (r.code !== 0) throw new Error(`the OpenClaw stream driver failed (exit ${r.code}):\n${r.stderr}`);
  return r.stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as OpenClawStreamEvent);
}
