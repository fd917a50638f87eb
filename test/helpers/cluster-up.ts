// Helpers for the `cluster up` tests: spawn dist/cli/main.js, wait for a node's /health, talk to its API.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
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

/**
 * Ports handed out by freePort start below Linux's ephemeral range (32768-60999 by default). A port that bind(0)
 * picked lies inside that range, so between its close and the node's listen any outgoing connection (a gRPC
 * dial, a fetch) could take it as its local port; and bind(0) may return the same port twice in a row. Each
 * vitest worker walks its own slice of 1,000 ports from a random start, skipping ports that do not bind.
 */
const PORT_BASE = 20_000;
const PORT_SLICE = 1_000;
const poolId = Number(process.env.VITEST_POOL_ID ?? "1") % 12;
let nextPort = PORT_BASE + poolId * PORT_SLICE + Math.floor(Math.random() * PORT_SLICE);

function canListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** A port no other freePort call of this process returned, free on every interface a moment ago. */
export async function freePort(): Promise<number> {
  const sliceStart = PORT_BASE + poolId * PORT_SLICE;
  for (let tries = 0; tries < PORT_SLICE; tries++) {
    const port = nextPort;
    nextPort = sliceStart + ((nextPort - sliceStart + 1) % PORT_SLICE);
    if ((await canListen(port, "0.0.0.0")) && (await canListen(port, "127.0.0.1"))) return port;
  }
  throw new Error(`no free port in ${sliceStart}-${sliceStart + PORT_SLICE - 1}`);
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

export interface NodePair {
  running: CliProcess[];
  coordinatorUrl: string;
  followerUrl: string;
}

/**
 * Two `cluster up` nodes on loopback serving `modelDir` as a two-stage pipeline; only the second names the first
 * (--peer), the first learns of it from its Hello. Resolves once the elected coordinator is ready and the other
 * node follows it. The processes are in `running` as soon as they start, so a failing caller can stop them.
 */
export async function startNodePair(
  modelDir: string,
  env: NodeJS.ProcessEnv,
  running: CliProcess[],
  clusterKey: string,
): Promise<NodePair> {
  const [grpcA, grpcB, apiA, apiB] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const common = ["--model", modelDir, "--key", clusterKey, "--no-bonjour", "--threads", "1"];
  common.push("--memory-bandwidth", "50");
  running.push(
    runCli(["up", ...common, "--name", "alpha", "--port", `${grpcA}`, "--api-port", `${apiA}`], env),
  );
  const peer = ["--peer", `127.0.0.1:${grpcA}`];
  running.push(
    runCli(["up", ...common, "--name", "beta", "--port", `${grpcB}`, "--api-port", `${apiB}`, ...peer], env),
  );
  let coordinatorUrl = "";
  await waitForHealth(
    `http://127.0.0.1:${apiA}`,
    (h) => {
      const live = liveNodes(h).map((m) => m.id);
      const elected = h.coordinator?.id === [...live].sort()[0];
      if (h.coordinator?.apiUrl && live.length === 2 && elected) coordinatorUrl = h.coordinator.apiUrl;
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
  const followerUrl =
    coordinatorUrl === `http://127.0.0.1:${apiA}` ? `http://127.0.0.1:${apiB}` : `http://127.0.0.1:${apiA}`;
  await waitForHealth(
    followerUrl,
    (h) => h.state === "following",
    "the other node to follow",
    running,
    60_000,
  );
  return { running, coordinatorUrl, followerUrl };
}
