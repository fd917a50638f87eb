// The table `cluster bench` prints, and its one JSON line (the shape bench/ ends with), so a first run on real
// Macs compares with bench/RESULTS.md and with published single-Mac figures.
import type { ClusterBenchResult } from "./measure.js";

const r1 = (v: number) => Math.round(v * 10) / 10;

export function renderBench(result: ClusterBenchResult): string {
  const lines = [
    `model ${result.model} on ${result.backend}, window ${result.contextTokens} tokens`,
    ...result.nodes.map(
      (n) =>
        `  ${n.name}: ${n.chip || "unknown chip"}, ${r1(n.memoryTotalBytes / 1e9)} GB, layers ${n.layers}`,
    ),
    "",
    `decode, 1 stream                 ${r1(result.decode1TokensPerSecond)} tokens/s`,
    `decode, 4 streams (all of them)  ${r1(result.decode4TokensPerSecond)} tokens/s`,
    ...result.prefill.map(
      (p) =>
        `prefill ${String(p.promptTokens).padStart(6)} tokens        TTFT ${r1(p.ttftMs / 1000)} s, ${r1(p.tokensPerSecond)} tokens/s`,
    ),
    ...result.skippedPromptSizes.map(
      (s) => `prefill ${String(s).padStart(6)} tokens        skipped: past the window`,
    ),
    `agent turn ${result.agentPromptTokens} tokens   cold TTFT ${r1(result.agentColdTtftMs)} ms, warm TTFT ${r1(result.agentWarmTtftMs)} ms (${result.agentCachedTokens} tokens from the prefix cache)`,
    ...result.links.map((l) => `hop ${l.from} -> ${l.to}: p50 ${l.hopP50Us} us`),
  ];
  return `${lines.join("\n")}\n`;
}

export function benchJson(result: ClusterBenchResult): string {
  return JSON.stringify({
    bench: "cluster",
    model: result.model,
    backend: result.backend,
    nodes: result.nodes.map((n) => ({
      name: n.name,
      chip: n.chip,
      memory_gb: r1(n.memoryTotalBytes / 1e9),
      layers: n.layers,
    })),
    decode_tps_1: r1(result.decode1TokensPerSecond),
    decode_tps_4: r1(result.decode4TokensPerSecond),
    prefill: result.prefill.map((p) => ({
      tokens: p.promptTokens,
      ttft_ms: Math.round(p.ttftMs),
      tps: r1(p.tokensPerSecond),
    })),
    agent_prompt_tokens: result.agentPromptTokens,
    agent_cold_ttft_ms: Math.round(result.agentColdTtftMs),
    agent_warm_ttft_ms: Math.round(result.agentWarmTtftMs),
    agent_cached_tokens: result.agentCachedTokens,
    hop_p50_us: result.links.map((l) => l.hopP50Us),
  });
}
