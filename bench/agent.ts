// Agent benchmark: the conversation OpenClaw really sends (shared/fixtures/openclaw, ~15k prompt tokens, nearly
// all repeated every turn) continued for 5 turns, each adding a tool call, its result and a user message, through
// POST /v1/chat/completions (streaming) on a two-stage cluster with the prefix cache on. TTFT (request sent to
// the first generated delta) of turns 2-5 against turn 1, and the cached tokens usage reports. Then the same
// turns on a cluster without the cache, for the uncached TTFT of each turn. Then the prefix cache's disk tier:
// - the same 5 turns with the whole cluster (every node process, the coordinator's index) restarted before each
//   turn: turn 2 after a restart against turn 2 without one (target <= 1.5x);
// - four sessions (each its own system prompt, so they share nothing) interleaved turn by turn under a RAM tier
//   that holds only two of them: every turn after a session's first must be a hit (RAM or SSD).
// The scripted model serves it: the bench model's 15k-token prefill takes minutes per turn on 2 cores.
// Prints a table, then ONE JSON line of figures.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { packageRoot } from "../common/paths.js";
import { startApiCluster } from "../test/helpers/api-cluster.js";
import { median, round } from "./stats.js";

const turns = 5;
const fixture = join(packageRoot(), "..", "shared", "fixtures", "openclaw");

type Message = Record<string, unknown>;

interface TurnFigures {
  ttftMs: number;
  promptTokens: number;
  cachedTokens: number;
  /** Of cachedTokens, restored from RAM and from the nodes' disks (the server log says). */
  ramTokens?: number;
  diskTokens?: number;
}

/**
 * Turn 1 and turn 2 as recorded; turns 3.. add an assistant tool call, its result and a user message each. A
 * session number makes the system prompt (and so every token after its first) its own.
 */
function conversation(session?: number): Array<Record<string, unknown>> {
  const first = JSON.parse(readFileSync(join(fixture, "chat-turn1-request.json"), "utf8")) as Message;
  if (session !== undefined) {
    const system = (first.messages as Message[])[0];
    system.content = `Session ${session}. ${system.content as string}`;
  }
  const second = JSON.parse(
    readFileSync(join(fixture, "chat-turn2-tool-result-request.json"), "utf8"),
  ) as Message;
  if (session !== undefined) (second.messages as Message[])[0] = (first.messages as Message[])[0];
  const bodies = [first, second];
  let messages = second.messages as Message[];
  for (let turn = 3; turn <= turns; turn++) {
    const id = `call${turn + 1}`;
    messages = [
      ...messages,
      {
        role: "assistant",
        content: null,
        tool_calls: [
          { id, type: "function", function: { name: "read", arguments: `{"path":"FILE${turn}.md"}` } },
        ],
      },
      { role: "tool", tool_call_id: id, content: `# File ${turn}\nLine one of file ${turn}.\nLine two.` },
      { role: "user", content: `Thanks. Now summarise FILE${turn}.md in one sentence (turn ${turn}).` },
    ];
    bodies.push({ ...second, messages });
  }
  return bodies;
}

/** Streams one request; TTFT is the time to the first chunk carrying generated text or a tool call. */
async function turn(url: string, apiKey: string, body: Record<string, unknown>): Promise<TurnFigures> {
  const started = performance.now();
  const response = await fetch(`${url}/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ ...body, max_completion_tokens: 64 }),
  });
  if (response.status !== 200 || !response.body)
    throw new Error(`API answered ${response.status}: ${await response.text()}`);
  let ttftMs = 0;
  let usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } } | undefined;
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const bytes of response.body) {
    buffered += decoder.decode(bytes as Uint8Array, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.startsWith("data: {")) continue;
      const chunk = JSON.parse(line.slice(6)) as {
        choices: Array<{ delta: Record<string, unknown> }>;
        usage?: typeof usage;
      };
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices[0]?.delta ?? {};
      const generated = ["content", "reasoning_content", "tool_calls"].some(
        (k) => delta[k] !== undefined && delta[k] !== "" && delta[k] !== null,
      );
      if (generated && ttftMs === 0) ttftMs = performance.now() - started;
    }
  }
  if (!usage) throw new Error("no usage chunk in the stream");
  if (ttftMs === 0) throw new Error("the stream carried no generated delta");
  return {
    ttftMs,
    promptTokens: usage.prompt_tokens,
    cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
  };
}

async function runConversation(prefixCacheBytesPerNode: number): Promise<TurnFigures[]> {
  const cluster = await startApiCluster({
    preset: "scripted",
    stages: 2,
    contextWindow: 65_536,
    modelId: "minimax-m2.1",
    prefixCacheBytesPerNode,
  });
  try {
    const figures: TurnFigures[] = [];
    for (const body of conversation()) figures.push(await turn(cluster.baseUrl, cluster.apiKey, body));
    return figures;
  } finally {
    await cluster.stop();
  }
}

/** The scheduler's log line of a request: "cached_tokens C (RAM r, SSD d)". */
function tierSplit(line: string | undefined): { ramTokens: number; diskTokens: number } {
  const m = /cached_tokens \d+ \(RAM (\d+), SSD (\d+)\)/.exec(line ?? "");
  return { ramTokens: Number(m?.[1] ?? 0), diskTokens: Number(m?.[2] ?? 0) };
}

/** The conversation with every node process and the coordinator started anew before each turn. */
async function runRestarted(): Promise<TurnFigures[]> {
  const cacheRoot = mkdtempSync(join(tmpdir(), "agent-bench-cache-"));
  try {
    const figures: TurnFigures[] = [];
    for (const body of conversation()) {
      const lines: string[] = [];
      const cluster = await startApiCluster({
        preset: "scripted",
        stages: 2,
        contextWindow: 65_536,
        modelId: "minimax-m2.1",
        prefixCacheBytesPerNode: 1024 ** 3,
        cacheRoot,
        log: (line) => lines.push(line),
      });
      try {
        const f = await turn(cluster.baseUrl, cluster.apiKey, body);
        figures.push({ ...f, ...tierSplit(lines.at(-1)) });
      } finally {
        // Each node writes its queued blocks before it exits.
        await cluster.stop();
      }
    }
    return figures;
  } finally {
    rmSync(cacheRoot, { recursive: true, force: true });
  }
}

/** Four sessions interleaved turn by turn, under a RAM tier that holds two of them (the disk holds the rest). */
async function runInterleaved(sessions: number, ramTokens: number): Promise<TurnFigures[][]> {
  const cacheRoot = mkdtempSync(join(tmpdir(), "agent-bench-sessions-"));
  const lines: string[] = [];
  const cluster = await startApiCluster({
    preset: "scripted",
    stages: 2,
    contextWindow: 65_536,
    modelId: "minimax-m2.1",
    prefixCacheTokens: ramTokens,
    cacheRoot,
    log: (line) => lines.push(line),
  });
  try {
    const bodies = Array.from({ length: sessions }, (_, s) => conversation(s + 1));
    const figures: TurnFigures[][] = bodies.map(() => []);
    for (let t = 0; t < turns; t++)
      for (let s = 0; s < sessions; s++) {
        const f = await turn(cluster.baseUrl, cluster.apiKey, bodies[s][t]);
        figures[s].push({ ...f, ...tierSplit(lines.at(-1)) });
      }
    return figures;
  } finally {
    await cluster.stop();
    rmSync(cacheRoot, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  console.log(
    `agent bench: OpenClaw's recorded conversation, ${turns} turns, scripted model, 2 stages (threads=1 each), /v1/chat/completions streaming`,
  );
  const cached = await runConversation(1024 ** 3);
  const uncached = await runConversation(0);
  cached.forEach((c, i) => {
    console.log(
      `turn ${i + 1}: prompt ${c.promptTokens} tokens, cached ${c.cachedTokens}, TTFT ${c.ttftMs.toFixed(1)} ms (uncached ${uncached[i].ttftMs.toFixed(1)} ms)`,
    );
  });
  const later = cached.slice(1);
  const laterTtft = median(later.map((c) => c.ttftMs));
  const figures = {
    bench: "agent",
    model: "scripted",
    turn1_ttft_ms: round(cached[0].ttftMs, 1),
    turns_2_5_ttft_ms_median: round(laterTtft, 1),
    turns_2_5_ttft_ms_max: round(Math.max(...later.map((c) => c.ttftMs)), 1),
    ttft_ratio: round(cached[0].ttftMs / laterTtft, 1),
    worst_ttft_ratio: round(cached[0].ttftMs / Math.max(...later.map((c) => c.ttftMs)), 1),
    prompt_tokens: cached.map((c) => c.promptTokens),
    cached_tokens: cached.map((c) => c.cachedTokens),
    uncached_turns_2_5_ttft_ms_median: round(median(uncached.slice(1).map((c) => c.ttftMs)), 1),
    // The same turns without the cache: what reuse saves on exactly these prompts.
    ttft_ratio_vs_uncached_turns: round(median(uncached.slice(1).map((c) => c.ttftMs)) / laterTtft, 1),
  };
  console.log(
    `target: ttft_ratio ${figures.ttft_ratio} (>= 10 ${figures.ttft_ratio >= 10 ? "met" : "NOT met"})`,
  );

  console.log("the same turns, the whole cluster restarted before each one (prefix cache on disk):");
  const restarted = await runRestarted();
  restarted.forEach((r, i) => {
    console.log(
      `turn ${i + 1}: cached ${r.cachedTokens} (RAM ${r.ramTokens}, SSD ${r.diskTokens}), TTFT ${r.ttftMs.toFixed(1)} ms (no restart ${cached[i].ttftMs.toFixed(1)} ms)`,
    );
  });
  const restartRatio = restarted[1].ttftMs / cached[1].ttftMs;
  console.log(
    `target: turn-2 TTFT after a restart / without ${restartRatio.toFixed(2)} (<= 1.5 ${restartRatio <= 1.5 ? "met" : "NOT met"})`,
  );

  const sessions = 4;
  // The RAM tier holds two sessions' final prompts (about 17.5k tokens each), not four.
  const ramTokens = 2 * Math.max(...cached.map((c) => c.promptTokens)) + 512;
  console.log(`${sessions} sessions interleaved, RAM tier ${ramTokens} tokens (two sessions), disk tier on:`);
  const interleaved = await runInterleaved(sessions, ramTokens);
  interleaved.forEach((turnsOf, s) => {
    console.log(
      `session ${s + 1}: ${turnsOf.map((t) => `${t.cachedTokens}/${t.promptTokens} (RAM ${t.ramTokens}, SSD ${t.diskTokens}) ${t.ttftMs.toFixed(0)} ms`).join(" | ")}`,
    );
  });
  const afterFirst = interleaved.flatMap((t) => t.slice(1));
  // A hit restores (nearly) everything the session sent before: at least 90% of the prompt.
  const hits = afterFirst.filter((t) => t.cachedTokens >= 0.9 * t.promptTokens).length;
  console.log(
    `target: every turn after a session's first is a hit: ${hits}/${afterFirst.length} (${hits === afterFirst.length ? "met" : "NOT met"})`,
  );

  Object.assign(figures, {
    restart_turn_ttft_ms: restarted.map((r) => round(r.ttftMs, 1)),
    restart_cached_tokens: restarted.map((r) => r.cachedTokens),
    restart_ssd_tokens: restarted.map((r) => r.diskTokens),
    restart_turn2_ttft_ms: round(restarted[1].ttftMs, 1),
    turn2_ttft_ms: round(cached[1].ttftMs, 1),
    restart_turn2_ratio: round(restartRatio, 2),
    sessions_ram_tokens: ramTokens,
    sessions_hits: hits,
    sessions_later_turns: afterFirst.length,
    sessions_ram_hit_tokens: afterFirst.reduce((n, t) => n + (t.ramTokens ?? 0), 0),
    sessions_ssd_hit_tokens: afterFirst.reduce((n, t) => n + (t.diskTokens ?? 0), 0),
    sessions_ttft_ms_median: round(median(afterFirst.map((t) => t.ttftMs)), 1),
  });
  console.log(JSON.stringify(figures));
}

await main();
