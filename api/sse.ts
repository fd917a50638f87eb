// Server-sent events on a hijacked fastify reply. Headers go out at once so the client sees the stream open
// before the prompt's prefill ends; a closed connection aborts the request's generation.
import type { FastifyReply } from "fastify";
import type { GenerationRun, OutputEvent } from "./generation-run.js";

/** The headers set on a reply so far (CORS), for a hijacked reply that writes its own head. */
export function headersSetOn(reply: FastifyReply): Record<string, string | number | string[]> {
  const headers: Record<string, string | number | string[]> = {};
  for (const [name, value] of Object.entries(reply.getHeaders()))
    if (value !== undefined) headers[name] = value;
  return headers;
}

export class SseStream {
  private ended = false;

  constructor(
    private readonly reply: FastifyReply,
    onClientGone: () => void,
  ) {
    reply.hijack();
    const raw = reply.raw;
    // Headers set on the reply before the hijack (CORS) would be lost otherwise.
    raw.writeHead(200, {
      ...headersSetOn(reply),
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    raw.flushHeaders();
    raw.on("close", () => {
      if (!this.ended) onClientGone();
      this.ended = true;
    });
  }

  get closed(): boolean {
    return this.ended || this.reply.raw.destroyed;
  }

  /** One event; `name` becomes the SSE `event:` line (Responses API), chat chunks have none. */
  send(data: unknown, name?: string): void {
    if (this.closed) return;
    const head = name ? `event: ${name}\n` : "";
    this.reply.raw.write(`${head}data: ${JSON.stringify(data)}\n\n`);
  }

  /** The chat APIs' end marker. */
  sendDone(): void {
    if (this.closed) return;
    this.reply.raw.write("data: [DONE]\n\n");
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.reply.raw.end();
  }
}

/** How one API writes a run as events: its opening events, one per output event, the end, the failure. */
export interface RunStreamWriter {
  open?(): void;
  event(event: OutputEvent): void;
  end(): void;
  /** The run failed (node lost, timeout, shutdown): the terminal error event. */
  fail(err: unknown): void;
  /** Chat Completions and Completions end every stream with `data: [DONE]`. */
  doneMarker?: boolean;
}

/**
 * Streams a run over SSE: the writer's opening events at once (before prefill ends), every output event, then
 * exactly one terminal event (end or failure), then the stream closes; a client that goes away cancels the run.
 */
export async function streamRun(
  reply: FastifyReply,
  run: GenerationRun,
  writer: (sse: SseStream) => RunStreamWriter,
): Promise<void> {
  const sse = new SseStream(reply, () => run.cancel());
  const write = writer(sse);
  write.open?.();
  try {
    for await (const event of run.events()) {
      if (sse.closed) break;
      write.event(event);
    }
    write.end();
  } catch (err) {
    write.fail(err);
  } finally {
    run.cancel();
    if (write.doneMarker) sse.sendDone();
    sse.end();
  }
}
