// Helpers for the `cluster up` tests: spawn dist/cli/main.js, wait for a node's /health, talk to its API.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { ClusterHealth } from "../../cluster/health.js";
import { packageRoot } from "../../common/paths.js";

export function cliEntry(): string {
  const entry = join(packageRoot(), "dist", "cli", "main.js");
  if (!existsSync(entry)) throw new Error(`${entry} is missing: run \`npm run build\` before these tests`);
  return entry;
}

export interface CliProcess {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exited: Promise<number | null>;
  /** Everything it printed, for failure messages. */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Runs `cluster <args>` (optionally through a prefix such as `ip netns exec NS`). */
export function runCli(args: string[], env: NodeJS.ProcessEnv, prefix: string[] = []): CliProcess {
  const command = prefix.length > 0 ? prefix[0] : process.execPath;
  const argv =
    prefix.length > 0 ? [...prefix.slice(1), process.execPath, cliEntry(), ...args] : [cliEntry(), ...args];
  const child = spawn(command, argv, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const stdout: string[] = [];
  const stderr: string[] = [];
  createInterface({ input: child.stdout! }).on("line", (l) => stdout.push(l));
  createInterface({ input: child.stderr! }).on("line", (l) => stderr.push(l));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    stdout,
    stderr,
    exited,
    output: () => `--- stdout\n${stdout.join("\n")}\n--- stderr\n${stderr.slice(-80).join("\n")}`,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      const force = setTimeout(() => child.kill("SIGKILL"), 10_000);
      child.kill(signal);
      const code = await exited;
      clearTimeout(force);
      return code;
    },
  };
}

/** A port that was free a moment ago (bind 0, read, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function getHealth(apiUrl: string, apiKey?: string): Promise<ClusterHealth | undefined> {
  try {
    const response = await fetch(`${apiUrl}/health`, {
      headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(2000),
    });
    return (await response.json()) as ClusterHealth;
  } catch {
    return undefined;
  }
}

/** Polls until `check` accepts the node's health; throws with the process output on timeout. */
export async function waitForHealth(
  apiUrl: string,
  check: (h: ClusterHealth) => boolean,
  what: string,
  proc: CliProcess | CliProcess[],
  timeoutMs = 60_000,
  apiKey?: string,
): Promise<ClusterHealth> {
  const started = Date.now();
  let last: ClusterHealth | undefined;
  const procs = Array.isArray(proc) ? proc : [proc];
  while (Date.now() - started < timeoutMs) {
    for (const p of procs)
      if (p.child.exitCode !== null)
        throw new Error(`a node exited while waiting for ${what}:\n${p.output()}`);
    last = await getHealth(apiUrl, apiKey);
    if (last && check(last)) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(
    `timed out waiting for ${what}; last health ${JSON.stringify(last)}\n${procs.map((p) => p.output()).join("\n")}`,
  );
}

export interface Completion {
  status: number;
  text: string;
  completionTokens: number;
  body: unknown;
}

/** A greedy chat completion through the node's API. */
export async function complete(
  apiUrl: string,
  prompt: string,
  maxTokens: number,
  apiKey?: string,
): Promise<Completion> {
  const response = await fetch(`${apiUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    body: JSON.stringify({
      messages: [{ role: "user", content: prompt }],
      max_tokens: maxTokens,
      temperature: 0,
    }),
    signal: AbortSignal.timeout(60_000),
  });
  const body = (await response.json()) as {
    choices?: Array<{ message?: { content?: string | null; reasoning_content?: string | null } }>;
    usage?: { completion_tokens?: number };
  };
  const message = body.choices?.[0]?.message;
  return {
    status: response.status,
    text: `${message?.reasoning_content ?? ""}|${message?.content ?? ""}`,
    completionTokens: body.usage?.completion_tokens ?? 0,
    body,
  };
}
