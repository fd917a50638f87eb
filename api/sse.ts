// Server-sent events on a hijacked fastify reply. Headers go out at once so the client sees the stream open
// before the prompt's prefill ends; a closed connection aborts the request's generation.
import type { FastifyReply } from "fastify";

export class SseStream {
  private ended = false;

  constructor(
    private readonly reply: FastifyReply,
    onClientGone: () => void,
  ) {
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
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
