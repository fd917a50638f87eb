// `cluster bench`: what users report about a serving cluster, measured through its own HTTP API as a client sees
// it: decode tokens/s for 1 and 4 streams, time to first token and prefill tokens/s at several prompt sizes, a
// warm agent turn (the prefix cache's case), and from the coordinator's picture (its /health, or the snapshot a
// follower reads from it over the gRPC plane) the plan, each node's chip and memory and the hop latency of each
// link. Every figure is a median over the runs asked for.
import { randomBytes } from "node:crypto";
import type { NodeView, PlanView } from "../../cluster/health.js";
import { fetchHealth, fetchSnapshot } from "../cluster-http.js";

export interface BenchOptions {
  api: string;
  apiKey?: string;
  /** Tokens generated per decode run. */
  decodeTokens: number;
  /** Prompt sizes (tokens) for the prefill figures; sizes past the window are skipped and said so. */
  promptSizes: number[];
  /** Prompt size of the agent turn. */
  agentTokens: number;
  runs: number;
  log: (line: string) => void;
  /** The served model's id (read from /health). */
  model?: string;
}

export interface StreamFigures {
  ttftMs: number;
  /** From the first generated token to the end of the stream. */
  decodeMs: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  endedAt: number;
  firstTokenAt: number;
}

export interface PrefillFigure {
  requestedTokens: number;
  promptTokens: number;
  ttftMs: number;
  tokensPerSecond: number;
}

export interface ClusterBenchResult {
  model: string;
  backend: string;
  contextTokens: number;
  nodes: Array<{ name: string; chip: string; memoryTotalBytes: number; layers: string }>;
  decode1TokensPerSecond: number;
  decode4TokensPerSecond: number;
  prefill: PrefillFigure[];
  skippedPromptSizes: number[];
  agentColdTtftMs: number;
  agentWarmTtftMs: number;
  agentCachedTokens: number;
  agentPromptTokens: number;
  links: Array<{ from: string; to: string; hopP50Us: number }>;
}

const WORDS = (
  "the of and to in is was for on that with as by at from his her an which you were are this be or have had not " +
  "one all their there been has more will would about when what some time them other into than then only could " +
  "river stone market window garden letter engine silver winter valley harbor candle forest bridge mirror ladder " +
  "copper meadow lantern orchard pebble thunder violet walnut anchor basket cedar dolphin ember falcon glacier"
).split(" ");

/** Text of about `words` words, opened by a nonce so that no prefix cache holds any of it. */
export function freshText(words: number, seed = randomBytes(4).readUInt32LE()): string {
  let state = seed || 1;
  const out: string[] = [`[${randomBytes(6).toString("hex")}]`];
  for (let i = 0; i < words; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out.push(WORDS[(state >>> 0) % WORDS.length]);
  }
  return out.join(" ");
}

type Message = { role: string; content: string };

/** Streams one chat completion and times it as a client sees it. */
export async function streamChat(
  opts: Pick<BenchOptions, "api" | "apiKey"> & { model?: string },
  messages: Message[],
  maxTokens: number,
): Promise<StreamFigures & { text: string }> {
  const started = performance.now();
  const response = await fetch(`${opts.api.replace(/\/+$/, "")}/v1/chat/completions`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {}),
    },
    body: JSON.stringify({
      model: opts.model,
      messages,
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (response.status !== 200 || !response.body)
    throw new Error(`the API answered ${response.status}: ${(await response.text()).slice(0, 300)}`);
  let firstTokenAt = 0;
  let text = "";
  let usage:
    | { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } }
    | undefined;
  let buffered = "";
  const decoder = new TextDecoder();
  for await (const bytes of response.body) {
    buffered += decoder.decode(bytes as Uint8Array, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.startsWith("data: {")) continue;
      const chunk = JSON.parse(line.slice(6)) as {
        choices?: Array<{ delta?: { content?: string | null; reasoning_content?: string | null } }>;
        usage?: typeof usage | null;
        error?: { message?: string };
      };
      if (chunk.error)
        throw new Error(`the stream failed: ${chunk.error.message ?? JSON.stringify(chunk.error)}`);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta;
      const piece = `${delta?.reasoning_content ?? ""}${delta?.content ?? ""}`;
      if (piece && firstTokenAt === 0) firstTokenAt = performance.now();
      text += piece;
    }
  }
  const endedAt = performance.now();
  if (!usage) throw new Error("the stream carried no usage chunk");
  if (firstTokenAt === 0) firstTokenAt = endedAt;
  return {
    ttftMs: firstTokenAt - started,
    decodeMs: endedAt - firstTokenAt,
    promptTokens: usage.prompt_tokens,
    cachedTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
    completionTokens: usage.completion_tokens,
    endedAt,
    firstTokenAt,
    text,
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Tokens per word of freshText, and the template's own tokens, from two short requests. */
async function calibrate(opts: BenchOptions): Promise<{ perWord: number; overhead: number }> {
  const small = await streamChat(opts, [{ role: "user", content: freshText(8) }], 1);
  const large = await streamChat(opts, [{ role: "user", content: freshText(408) }], 1);
  const perWord = Math.max(0.5, (large.promptTokens - small.promptTokens) / 400);
  return { perWord, overhead: Math.max(0, small.promptTokens - 9 * perWord) };
}

async function decodeRate(opts: BenchOptions, streams: number): Promise<number> {
  const rates: number[] = [];
  for (let run = 0; run < opts.runs; run++) {
    const all = await Promise.all(
      Array.from({ length: streams }, () =>
        streamChat(opts, [{ role: "user", content: freshText(24) }], opts.decodeTokens),
      ),
    );
    // Tokens after each stream's first, over the time from the earliest first token to the last end.
    const tokens = all.reduce((sum, f) => sum + Math.max(0, f.completionTokens - 1), 0);
    const seconds =
      (Math.max(...all.map((f) => f.endedAt)) - Math.min(...all.map((f) => f.firstTokenAt))) / 1000;
    if (seconds > 0) rates.push(tokens / seconds);
  }
  return rates.length > 0 ? median(rates) : 0;
}

function wordsFor(tokens: number, calibration: { perWord: number; overhead: number }): number {
  return Math.max(1, Math.round((tokens - calibration.overhead) / calibration.perWord));
}

/** What the bench needs of the coordinator (it alone knows the plan). */
interface CoordinatorView {
  modelId: string;
  plan: PlanView;
  nodes: NodeView[];
}

/**
 * The coordinator's plan and nodes, asked of the node given: the coordinator answers from its /health; a node
 * that follows answers its snapshot with the coordinator's, read over the cluster's gRPC plane (so the
 * coordinator's API may listen on its loopback), or with why it cannot.
 */
async function coordinatorView(opts: BenchOptions): Promise<CoordinatorView> {
  const health = await fetchHealth(opts.api, opts.apiKey);
  if (health.node.role === "coordinator" || health.plan) {
    if (!health.ok || !health.plan)
      throw new Error(
        `the cluster is not serving (${health.state}${health.message ? `: ${health.message}` : ""})`,
      );
    return { modelId: health.modelId, plan: health.plan, nodes: health.nodes };
  }
  if (!health.coordinator)
    throw new Error(
      `${opts.api} follows no coordinator (${health.state}${health.message ? `: ${health.message}` : ""})`,
    );
  let snapshot: Awaited<ReturnType<typeof fetchSnapshot>>;
  try {
    snapshot = await fetchSnapshot(opts.api, opts.apiKey);
  } catch (err) {
    throw new Error(
      `cannot read the coordinator ${health.coordinator.name} (${health.coordinator.id})'s plan ` +
        `through ${opts.api}: ${(err as Error).message}`,
    );
  }
  if (snapshot.state !== "ready" || !snapshot.plan)
    throw new Error(
      `the cluster is not serving (${snapshot.state}${snapshot.message ? `: ${snapshot.message}` : ""})`,
    );
  return { modelId: snapshot.modelId, plan: snapshot.plan, nodes: snapshot.nodes };
}

export async function runClusterBench(opts: BenchOptions): Promise<ClusterBenchResult> {
  const health = await coordinatorView(opts);
  const plan = health.plan;
  const context = plan.contextTokens;
  opts = { ...opts, model: health.modelId };
  opts.log(
    `cluster ${health.modelId}, ${plan.backend}, ${plan.stages.length} stage(s), window ${context} tokens`,
  );
  const calibration = await calibrate(opts);

  opts.log(`decode, 1 stream of ${opts.decodeTokens} tokens x ${opts.runs}`);
  const decode1 = await decodeRate(opts, 1);
  opts.log(`decode, 4 streams of ${opts.decodeTokens} tokens x ${opts.runs}`);
  const decode4 = await decodeRate(opts, 4);

  const prefill: PrefillFigure[] = [];
  const skipped: number[] = [];
  for (const size of opts.promptSizes) {
    if (size + 8 > context) {
      skipped.push(size);
      opts.log(`prefill ${size}: skipped (the window is ${context} tokens)`);
      continue;
    }
    opts.log(`prefill ${size} tokens x ${opts.runs}`);
    const runs: StreamFigures[] = [];
    for (let run = 0; run < opts.runs; run++)
      runs.push(
        await streamChat(opts, [{ role: "user", content: freshText(wordsFor(size, calibration)) }], 2),
      );
    const ttft = median(runs.map((r) => r.ttftMs));
    const promptTokens = Math.round(median(runs.map((r) => r.promptTokens - r.cachedTokens)));
    prefill.push({
      requestedTokens: size,
      promptTokens,
      ttftMs: ttft,
      tokensPerSecond: promptTokens / (ttft / 1000),
    });
  }

  const agentSize = Math.min(opts.agentTokens, context - 64);
  opts.log(`agent turn of ${agentSize} tokens, then its follow-up (warm) x ${opts.runs}`);
  const cold: number[] = [];
  const warm: StreamFigures[] = [];
  for (let run = 0; run < opts.runs; run++) {
    const first: Message[] = [
      { role: "system", content: freshText(wordsFor(agentSize, calibration)) },
      { role: "user", content: "List three files." },
    ];
    const reply = await streamChat(opts, first, 8);
    cold.push(reply.ttftMs);
    const follow = [
      ...first,
      { role: "assistant", content: reply.text },
      { role: "user", content: "Now the next." },
    ];
    warm.push(await streamChat(opts, follow, 8));
  }

  // Hop figures as the stages measured them during the runs above.
  const after = await coordinatorView(opts);
  const byId = new Map(after.nodes.map((n) => [n.id, n]));
  const stages = plan.stages.map((s) => ({ stage: s, node: byId.get(s.nodeId) }));
  return {
    model: health.modelId,
    backend: plan.backend,
    contextTokens: context,
    nodes: stages.map(({ stage, node }) => ({
      name: stage.name,
      chip: node?.chip ?? "",
      memoryTotalBytes: node?.memoryTotalBytes ?? 0,
      layers: `[${stage.layerStart},${stage.layerEnd})`,
    })),
    decode1TokensPerSecond: decode1,
    decode4TokensPerSecond: decode4,
    prefill,
    skippedPromptSizes: skipped,
    agentColdTtftMs: median(cold),
    agentWarmTtftMs: median(warm.map((w) => w.ttftMs)),
    agentCachedTokens: Math.round(median(warm.map((w) => w.cachedTokens))),
    agentPromptTokens: Math.round(median(warm.map((w) => w.promptTokens))),
    // The hop into each stage after the first, as that stage measured it on its inbound stream.
    links: stages.slice(1).map(({ stage, node }, i) => ({
      from: stages[i].stage.name,
      to: stage.name,
      hopP50Us: node?.inboundHopP50Us ?? 0,
    })),
  };
}
