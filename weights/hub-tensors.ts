// Tensors straight from the hub, when no node of the cluster holds them: HTTP range requests on the published
// shard files, covering exactly the bytes this node lacks (tensors close together in a shard share one request;
// MLX scatters a layer's tensors inside its shard). Each range must come back whole and as asked (206 with the
// matching Content-Range); the hub publishes no per-tensor hash, so that and TLS are the checks here.
import type { TableTensor } from "../common/model-table.js";
import type { HubClient } from "./hub-client.js";
import type { TensorSink } from "./tensor-sink.js";

/** Tensors nearer than this in a shard are fetched in one request (the gap is read and dropped). */
const mergeGapBytes = 1024 * 1024;

interface Part {
  name: string;
  /** Offset in the tensor of the part's first byte. */
  tensorOffset: number;
  /** Absolute range in the shard file. */
  start: number;
  end: number;
}

interface Span {
  file: string;
  start: number;
  end: number;
  parts: Part[];
}

export interface HubTensorOptions {
  repo: string;
  commit: string;
  onBytes?: (n: number) => void;
  log?: (line: string) => void;
  attempts?: number;
}

/** Fetches every tensor the sink still wants from the hub; returns the tensor bytes written. */
export async function fetchTensorsFromHub(
  client: HubClient,
  sink: TensorSink,
  opts: HubTensorOptions,
): Promise<number> {
  let written = 0;
  const attempts = opts.attempts ?? 5;
  for (let attempt = 1; sink.wants().length > 0; attempt++) {
    try {
      for (const span of spansOf(sink)) written += await fetchSpan(client, sink, span, opts);
    } catch (err) {
      if (attempt >= attempts) throw err;
      opts.log?.(`hub range fetch: ${(err as Error).message}; resuming from the last written byte`);
      await sink.checkpoint();
      await new Promise((r) => setTimeout(r, 500 * 2 ** (attempt - 1)));
    }
  }
  return written;
}

function spansOf(sink: TensorSink): Span[] {
  const parts: Array<Part & { file: string }> = [];
  for (const want of sink.wants()) {
    const t = sink.tensor(want.name) as TableTensor;
    parts.push({
      name: t.name,
      file: t.file,
      tensorOffset: want.offset,
      start: t.start + want.offset,
      end: t.start + t.byteLength,
    });
  }
  parts.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.start - b.start));
  const spans: Span[] = [];
  for (const part of parts) {
    const last = spans[spans.length - 1];
    if (last && last.file === part.file && part.start - last.end <= mergeGapBytes) {
      last.end = Math.max(last.end, part.end);
      last.parts.push(part);
    } else spans.push({ file: part.file, start: part.start, end: part.end, parts: [part] });
  }
  return spans;
}

async function fetchSpan(
  client: HubClient,
  sink: TensorSink,
  span: Span,
  opts: HubTensorOptions,
): Promise<number> {
  const range = `bytes=${span.start}-${span.end - 1}`;
  const response = await client.get(opts.repo, opts.commit, span.file, range);
  const contentRange = response.headers.get("content-range") ?? "";
  if (response.status !== 206 || !contentRange.startsWith(`bytes ${span.start}-${span.end - 1}/`)) {
    await response.body?.cancel();
    throw new Error(`${span.file}: asked for ${range}, the hub answered ${response.status} ${contentRange}`);
  }
  let pos = span.start;
  let written = 0;
  for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
    const chunkEnd = pos + chunk.byteLength;
    for (const part of span.parts) {
      const from = Math.max(pos, part.start);
      const to = Math.min(chunkEnd, part.end);
      if (from >= to) continue;
      await sink.write(
        part.name,
        part.tensorOffset + (from - part.start),
        chunk.subarray(from - pos, to - pos),
      );
      written += to - from;
      opts.onBytes?.(to - from);
    }
    pos = chunkEnd;
  }
  if (pos !== span.end)
    throw new Error(`${span.file}: the range ${range} ended after ${pos - span.start} bytes`);
  return written;
}
