// Soak: 32 streaming clients for 2 minutes against a real 2-stage cluster (tiny model) through the HTTP API.
// Each client loops: a streaming request (chat, responses or completions, in turn) of 16-64 tokens, read to
// its terminal event. Counts errors (a status other than 200, or a stream without its terminal event) and
// samples this process's RSS and the stages' KV bytes. Target: zero errors, memory flat (RSS end vs after
// warm-up), KV back to zero. Ends with ONE JSON line of figures.
// BENCH_CLIENTS and BENCH_SECONDS override the defaults.
import { startApiCluster } from "../test/helpers/api-cluster.js";

const clients = Number(process.env.BENCH_CLIENTS ?? 32);
const seconds = Number(process.env.BENCH_SECONDS ?? 120);
const PATHS = ["/chat/completions", "/responses", "/completions"] as const;

function bodyFor(path: (typeof PATHS)[number], maxTokens: number, n: number): unknown {
  const text = `request ${n}: tell me about the sea`;
  if (path === "/chat/completions")
    return { messages: [{ role: "user", content: text }], max_tokens: maxTokens, stream: true };
  if (path === "/responses") return { input: text, max_output_tokens: maxTokens, stream: true };
  return { prompt: text, max_tokens: maxTokens, stream: true };
}

/** Did the stream end the way its API says a stream ends? */
function terminated(path: (typeof PATHS)[number], sse: string): boolean {
  if (path === "/responses") return /event: response\.(completed|incomplete)\n/.test(sse);
  // An error chunk is a data line whose object starts with "error" (generated text may contain the word).
  return (
    sse.trimEnd().endsWith("data: [DONE]") &&
    !sse.includes('\ndata: {"error":') &&
    !sse.startsWith('data: {"error":')
  );
}

const mib = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10;

/** Memory after a full collection when node runs with --expose-gc (npm run bench:soak does), else as it is. */
function settledMemory(): NodeJS.MemoryUsage {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage();
}

async function main(): Promise<void> {
  const cluster = await startApiCluster({ preset: "tiny", stages: 2, contextWindow: 4096 });
  const headers = { authorization: `Bearer ${cluster.apiKey}`, "content-type": "application/json" };
  let requests = 0;
  let tokens = 0;
  const errors: string[] = [];
  const rss: number[] = [];
  const startedAt = performance.now();
  const endAt = startedAt + seconds * 1000;
  const sampler = setInterval(() => rss.push(process.memoryUsage().rss), 1000);
  // Heap after a full GC, under the same load, at the end of warm-up (10%) and just before the end.
  const heap: { warm?: number; end?: number } = {};
  const warmTimer = setTimeout(() => {
    heap.warm = settledMemory().heapUsed;
  }, seconds * 100);
  const endTimer = setTimeout(
    () => {
      heap.end = settledMemory().heapUsed;
    },
    Math.max(seconds * 1000 - 2000, seconds * 500),
  );
  try {
    const client = async (id: number): Promise<void> => {
      for (let n = 0; performance.now() < endAt; n++) {
        const path = PATHS[(id + n) % PATHS.length];
        const maxTokens = 16 + ((id * 7 + n * 13) % 49);
        try {
          const response = await fetch(`${cluster.baseUrl}${path}`, {
            method: "POST",
            headers,
            body: JSON.stringify(bodyFor(path, maxTokens, n)),
          });
          const sse = await response.text();
          if (response.status !== 200 || !terminated(path, sse))
            errors.push(`${path}: status ${response.status}: ${sse.slice(-200)}`);
          else tokens += maxTokens;
        } catch (err) {
          errors.push(`${path}: ${(err as Error).message}`);
        }
        requests++;
      }
    };
    await Promise.all(Array.from({ length: clients }, (_, id) => client(id)));
  } finally {
    clearInterval(sampler);
    clearTimeout(warmTimer);
    clearTimeout(endTimer);
  }
  const elapsed = (performance.now() - startedAt) / 1000;
  // Warm-up: the first 10% of the run (JIT, pools, buffers); "flat" compares the end with that point.
  const warm = rss[Math.max(0, Math.floor(rss.length / 10))] ?? process.memoryUsage().rss;
  const end = rss[rss.length - 1] ?? process.memoryUsage().rss;
  await new Promise((r) => setTimeout(r, 1500)); // one status period, so the stages report their KV
  const statuses = await cluster.stageStatuses();
  await cluster.stop();
  const figures = {
    bench: "soak",
    clients,
    seconds: Math.round(elapsed),
    requests,
    errors: errors.length,
    tokens_per_second: Math.round(tokens / elapsed),
    rss_start_mib: mib(rss[0] ?? 0),
    rss_warm_mib: mib(warm),
    rss_end_mib: mib(end),
    rss_max_mib: mib(Math.max(...rss)),
    rss_growth_after_warmup_ratio: Math.round((end / warm) * 1000) / 1000,
    heap_after_gc_warm_mib: heap.warm === undefined ? null : mib(heap.warm),
    heap_after_gc_end_mib: heap.end === undefined ? null : mib(heap.end),
    kv_bytes_after: statuses.map((s) => s.kv_bytes),
    sequences_after: statuses.map((s) => s.sequences),
  };
  for (const e of errors.slice(0, 5)) console.log(`error: ${e}`);
  console.log(
    `soak: ${clients} clients, ${figures.seconds} s, ${requests} requests, ${errors.length} errors, ` +
      `${figures.tokens_per_second} tokens/s; RSS ${figures.rss_start_mib} -> warm ${figures.rss_warm_mib} -> end ${figures.rss_end_mib} MiB ` +
      `(x${figures.rss_growth_after_warmup_ratio} after warm-up); heap after GC ${figures.heap_after_gc_warm_mib} -> ${figures.heap_after_gc_end_mib} MiB; ` +
      `KV after ${JSON.stringify(figures.kv_bytes_after)}`,
  );
  console.log(JSON.stringify(figures));
  if (errors.length > 0) process.exitCode = 1;
}

await main();
