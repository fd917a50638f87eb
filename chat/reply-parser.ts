// Splits the model's streamed reply into reasoning, visible text and tool calls (MiniMax-M2 format):
//   {reasoning}</think>\n\n{text}\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">v</parameter>\n</invoke>\n</minimax:tool_call>
// The template opens the reasoning (`<think>\n`), so the reply starts inside it. A tag may arrive split across
// tokens: any tail that could still become a tag is held back so no markup ever reaches the visible text. Markup
// that has no place in the visible text (a stray `</minimax:tool_call>` or `</think>`) is dropped there, with the
// start of a tool tag held just before it (a model cut short in the tag, then closing it), and a held start of a
// tag that the reply ends in is dropped too.
import type { TemplateTool } from "./conversation.js";
import { convertArguments } from "./tool-arguments.js";

export type ReplyEvent =
  | { type: "reasoning"; delta: string }
  | { type: "text"; delta: string }
  | { type: "tool_call"; name: string; arguments: string };

type State = "reasoning" | "text" | "tool";

const THINK_OPEN = "<think>";
const THINK_CLOSE = "</think>";
const TOOL_OPEN = "<minimax:tool_call>";
const TOOL_CLOSE = "</minimax:tool_call>";
const INVOKE_CLOSE = "</invoke>";
/** Closers with no place in the visible text. */
const STRAY = [TOOL_CLOSE, THINK_CLOSE];

/** Length of the longest tail of `text` that is a proper prefix of `tag`. */
function partialTagLength(text: string, tag: string): number {
  const max = Math.min(text.length, tag.length - 1);
  for (let n = max; n > 0; n--) if (text.endsWith(tag.slice(0, n))) return n;
  return 0;
}

function unquote(name: string): string {
  const trimmed = name.trim();
  const quoted = /^(["'])(.*)\1$/s.exec(trimmed);
  return quoted ? quoted[2] : trimmed;
}

/** One value's surrounding newlines are layout, not content. */
function trimLayout(value: string): string {
  return value.replace(/^\n/, "").replace(/\n$/, "");
}

export class ReplyParser {
  private state: State;
  private buffer = "";
  /** Newlines at the end of a segment are layout (before </think> or a tool block): held until more text. */
  private heldNewlines = "";
  private segmentStarted = false;
  private atReplyStart = true;
  private readonly schemas = new Map<string, Record<string, unknown> | undefined>();

  constructor(tools: TemplateTool[], options: { startInReasoning?: boolean } = {}) {
    this.state = options.startInReasoning === false ? "text" : "reasoning";
    for (const tool of tools) this.schemas.set(tool.function.name, tool.function.parameters);
  }

  /** True while the reply is still in its reasoning part (counts reasoning tokens). */
  get inReasoning(): boolean {
    return this.state === "reasoning";
  }

  push(text: string): ReplyEvent[] {
    const events: ReplyEvent[] = [];
    this.buffer += text;
    if (this.atReplyStart && !this.skipEchoedThinkOpen()) return events;
    while (this.step(events));
    return events;
  }

  /** End of the reply: emit what was held back; an unfinished tool call is dropped, never half-run. */
  finish(): ReplyEvent[] {
    const events: ReplyEvent[] = [];
    this.atReplyStart = false;
    if (this.state !== "tool") {
      // A one-character tail is more likely text ("a <") than a cut tag; longer tails are cut markup.
      if (this.buffer.length === 1) this.emitSegment(this.buffer, events);
    }
    this.buffer = "";
    return events;
  }

  /** Some checkpoints repeat `<think>` although the prompt opened it; swallow it (and the layout around it). */
  private skipEchoedThinkOpen(): boolean {
    const trimmed = this.buffer.replace(/^\s+/, "");
    if (trimmed === "" || THINK_OPEN.startsWith(trimmed)) return false;
    if (trimmed.startsWith(THINK_OPEN)) this.buffer = trimmed.slice(THINK_OPEN.length);
    this.atReplyStart = false;
    return true;
  }

  private step(events: ReplyEvent[]): boolean {
    if (this.state === "tool") return this.stepTool(events);
    if (this.state === "text") return this.stepText(events);
    const at = this.buffer.indexOf(THINK_CLOSE);
    if (at >= 0) {
      this.emitSegment(this.buffer.slice(0, at), events);
      this.buffer = this.buffer.slice(at + THINK_CLOSE.length);
      this.endSegment();
      this.state = "text";
      return true;
    }
    this.emitAllBut(partialTagLength(this.buffer, THINK_CLOSE), events);
    return false;
  }

  /** Visible text: a tool block opens at TOOL_OPEN; stray closers are dropped (see the header). */
  private stepText(events: ReplyEvent[]): boolean {
    const found = [TOOL_OPEN, ...STRAY]
      .map((tag) => ({ tag, at: this.buffer.indexOf(tag) }))
      .filter((f) => f.at >= 0)
      .sort((a, b) => a.at - b.at)[0];
    if (found?.tag === TOOL_OPEN) {
      this.emitSegment(this.buffer.slice(0, found.at), events);
      this.buffer = this.buffer.slice(found.at + TOOL_OPEN.length);
      this.endSegment();
      this.state = "tool";
      return true;
    }
    if (found) {
      const before = this.buffer.slice(0, found.at);
      const cut = partialTagLength(before, TOOL_OPEN);
      this.emitSegment(before.slice(0, before.length - (cut >= 2 ? cut : 0)), events);
      this.buffer = this.buffer.slice(found.at + found.tag.length);
      return true;
    }
    this.emitAllBut(this.heldInText(), events);
    return false;
  }

  /** The tail of visible text held back: the start of a tag, or a cut tool tag start and the start of a closer. */
  private heldInText(): number {
    let keep = Math.max(...[TOOL_OPEN, ...STRAY].map((tag) => partialTagLength(this.buffer, tag)));
    for (const tag of STRAY) {
      const n = partialTagLength(this.buffer, tag);
      const cut = n > 0 ? partialTagLength(this.buffer.slice(0, -n), TOOL_OPEN) : 0;
      if (cut >= 2) keep = Math.max(keep, n + cut);
    }
    return keep;
  }

  /** Emits the buffer but its last `keep` chars (the start of a tag, held until it is told apart from text). */
  private emitAllBut(keep: number, events: ReplyEvent[]): void {
    this.emitSegment(this.buffer.slice(0, this.buffer.length - keep), events);
    this.buffer = this.buffer.slice(this.buffer.length - keep);
  }

  private stepTool(events: ReplyEvent[]): boolean {
    const invokeEnd = this.buffer.indexOf(INVOKE_CLOSE);
    const blockEnd = this.buffer.indexOf(TOOL_CLOSE);
    if (invokeEnd >= 0 && (blockEnd < 0 || invokeEnd < blockEnd)) {
      this.emitInvoke(this.buffer.slice(0, invokeEnd), events);
      this.buffer = this.buffer.slice(invokeEnd + INVOKE_CLOSE.length);
      return true;
    }
    if (blockEnd >= 0) {
      this.buffer = this.buffer.slice(blockEnd + TOOL_CLOSE.length);
      this.state = "text";
      return true;
    }
    return false;
  }

  private emitInvoke(block: string, events: ReplyEvent[]): void {
    const head = /<invoke\s+name\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)\s*>/.exec(block);
    if (!head) return;
    const name = unquote(head[1]);
    const params: Array<[string, string]> = [];
    const paramPattern = /<parameter\s+name\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)\s*>([\s\S]*?)<\/parameter>/g;
    for (const match of block.slice(head.index + head[0].length).matchAll(paramPattern))
      params.push([unquote(match[1]), trimLayout(match[2])]);
    const args = convertArguments(params, this.schemas.get(name));
    events.push({ type: "tool_call", name, arguments: JSON.stringify(args) });
  }

  private emitSegment(piece: string, events: ReplyEvent[]): void {
    let text = piece;
    if (!this.segmentStarted) {
      text = text.replace(/^\n+/, "");
      if (text === "") return;
      this.segmentStarted = true;
    }
    text = this.heldNewlines + text;
    const trailing = /\n+$/.exec(text);
    this.heldNewlines = trailing ? trailing[0] : "";
    if (trailing) text = text.slice(0, trailing.index);
    if (text === "") return;
    const type = this.state === "reasoning" ? "reasoning" : "text";
    const last = events[events.length - 1];
    if (last?.type === type) last.delta += text;
    else events.push({ type, delta: text });
  }

  private endSegment(): void {
    this.heldNewlines = "";
    this.segmentStarted = false;
  }
}
