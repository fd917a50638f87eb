// The MiniMax-M2 reply grammar that tool_choice and parallel_tool_calls need, as a per-sequence state machine
// over the bytes of the sampled tokens. The last stage (node-agent/stage.ts) keeps one per constrained sequence:
// before each token it asks for the mask (the ids the grammar allows, or the ids it forbids), after it feeds the
// sampled id. No logits leave the stage and no step waits on anyone else.
//
// The reply (chat/reply-parser.ts, docs/model.md):
//   {reasoning}</think>{text}<minimax:tool_call>{ws}<invoke name="f">{ws}<parameter name="k">{value}</parameter>
//   {ws}</invoke>{ws}</minimax:tool_call>{ws}EOS
// Enforced here: no tool block at all ("none", or no tools declared); only declared function names, and only
// the named one for a named tool_choice; only declared parameter names (when the schema lists properties), each
// required one before </invoke>; one <invoke> when parallel_tool_calls is false; "required" / a named function:
// after </think> only whitespace and the tool block, and no end of turn before it. Values are free text (not
// checked against the parameter's JSON schema): a value may not contain </invoke> or </minimax:tool_call>.
// No piece of a refused tag in the visible text: a token that stops inside `<minimax:tool_call>`, past its
// `<minimax:` (text such as "<m" + "eta>" stays text), commits the reply: to the tag's completion where a block
// may open, or else to its end (the end of turn, or the tag's closer and then the end), and the reply parser
// drops the cut tag (and the closer). Without this, text went on after a cut tag and the parser showed it
// ("<minimax:to</minimax:tool_call>"). Refusing the token outright instead sends a model that wanted to call
// wandering (the scripted model then wrote its call's parameters as text up to the window's end); forcing the
// block where one may open made it call a tool it never meant (Claude Code's Agent) with endless arguments.
import type { TokenVocabulary } from "./token-vocabulary.js";

export interface ToolConstraintTool {
  name: string;
  /** Parameter names the schema declares (its properties); null: any name. */
  parameters: string[] | null;
  /** Parameters the schema requires. */
  required: string[];
}

/** What a request allows of its reply's tool calls, as it travels to the last stage. */
export interface ToolConstraintSpec {
  /** none: no tool call; required: at least one; {name}: that function only, at least once. */
  choice: "auto" | "none" | "required" | { name: string };
  tools: ToolConstraintTool[];
  /** false: one <invoke> per reply. */
  parallel: boolean;
  /**
   * The visible text must be JSON (response_format / text.format): after </think> the reply is handed to a
   * JSON grammar (node-agent/json-format.ts, xgrammar), and no tool block is possible.
   */
  format?: { type: "json_object" } | { type: "json_schema"; schema: Record<string, unknown> };
}

export const THINK_CLOSE = "</think>";
export const TOOL_OPEN = "<minimax:tool_call>";
const TOOL_CLOSE = "</minimax:tool_call>";
/** The part of the tool tag no ordinary text has: a token boundary past it is inside the tag. */
const TAG_NAMESPACE = "<minimax:";
const INVOKE_OPEN = '<invoke name="';
const INVOKE_CLOSE = "</invoke>";
const PARAM_OPEN = '<parameter name="';
const PARAM_CLOSE = "</parameter>";
/** Whitespace allowed between the elements of the tool block (a bound, so a forced part cannot stall). */
const MAX_WS = 4;
const TAIL = 24;

type Then =
  | { to: "block" }
  | { to: "toolName" }
  | { to: "body"; tool: string; seen: string[] }
  | { to: "paramName"; tool: string; seen: string[] }
  | { to: "value"; tool: string; seen: string[] }
  | { to: "afterInvoke" }
  | { to: "end" };

interface Alt {
  lit: string;
  next: Then;
}

type State =
  | { k: "reason"; tail: string }
  | { k: "text"; tail: string }
  /**
   * Text stopped inside the tool tag: the rest of the tag (`rest`, "" where no block may open) opens the block;
   * else the reply ends, at once or after `</minimax:tool_call>` (`typed`: the bytes of either so far).
   */
  | { k: "cut"; rest: string; typed: string }
  /** One of the literals, after at most `ws` whitespace bytes (only before the first byte of a literal). */
  | { k: "expect"; alts: Alt[]; typed: string; ws: number }
  /** A parameter name the schema does not list: any bytes but `"` and `>`, then `">`. */
  | { k: "freeName"; tool: string; seen: string[]; typed: string }
  | { k: "value"; tail: string; tool: string; seen: string[] }
  | { k: "end"; ws: number }
  /** The JSON text of a response format: another grammar takes over (no byte is fed here). */
  | { k: "json" };

function isWs(c: string): boolean {
  return c === " " || c === "\n" || c === "\t" || c === "\r";
}

export class ToolGrammar {
  private readonly callable: ToolConstraintTool[];
  private readonly mustCall: boolean;

  constructor(readonly spec: ToolConstraintSpec) {
    const choice = spec.choice;
    this.callable =
      choice === "none" || spec.format
        ? []
        : typeof choice === "object"
          ? spec.tools.filter((t) => t.name === choice.name)
          : spec.tools;
    this.mustCall = (choice === "required" || typeof choice === "object") && this.callable.length > 0;
  }

  get start(): State {
    return { k: "reason", tail: "" };
  }

  /** May the reply end (the end-of-turn token) in this state? */
  acceptsEnd(s: State): boolean {
    if (s.k === "reason") return !this.mustCall;
    return s.k === "text" || s.k === "end" || (s.k === "cut" && s.typed === "");
  }

  /** Bytes (one char per byte) fed from state s; null when the grammar forbids them. */
  feed(s: State | null, bytes: string): State | null {
    let state = s;
    for (let i = 0; i < bytes.length && state; i++) state = this.step(state, bytes[i]);
    return state;
  }

  /** A whole token's bytes: feed(), then the rule at the token boundary (settle). */
  token(s: State | null, bytes: string, hasGt = bytes.includes(">")): State | null {
    if (s && !hasGt && (s.k === "reason" || s.k === "text" || s.k === "value"))
      // Fast path of free text: bytes without '>' cannot complete any tag, so only the tail changes.
      return this.settle({ ...s, tail: (s.tail + bytes).slice(-TAIL) });
    return this.settle(this.feed(s, bytes));
  }

  /**
   * At a token boundary, text that ends inside `<minimax:tool_call>` past its `<minimax:` is committed: to the
   * tag's completion (where a block may open), or to the end of the reply (the parser drops the cut tag).
   */
  private settle(s: State | null): State | null {
    if (s?.k !== "text") return s;
    const opened = openingOf(s.tail);
    if (opened.length < TAG_NAMESPACE.length) return s;
    return { k: "cut", rest: this.callable.length > 0 ? TOOL_OPEN.slice(opened.length) : "", typed: "" };
  }

  private step(s: State, c: string): State | null {
    switch (s.k) {
      case "reason": {
        const tail = (s.tail + c).slice(-TAIL);
        if (c === ">" && tail.endsWith(THINK_CLOSE)) {
          if (this.spec.format) return { k: "json" };
          return this.mustCall ? this.enter({ to: "block" }, true) : { k: "text", tail: "" };
        }
        return { k: "reason", tail };
      }
      case "text": {
        const tail = (s.tail + c).slice(-TAIL);
        if (c === ">" && tail.endsWith(TOOL_OPEN))
          return this.callable.length > 0 ? this.enter({ to: "block" }) : null;
        return { k: "text", tail };
      }
      case "value": {
        const tail = (s.tail + c).slice(-TAIL);
        if (c === ">") {
          if (tail.endsWith(PARAM_CLOSE)) return this.enter({ to: "body", tool: s.tool, seen: s.seen });
          if (tail.endsWith(INVOKE_CLOSE) || tail.endsWith(TOOL_CLOSE)) return null;
        }
        return { ...s, tail };
      }
      case "expect": {
        if (s.typed === "" && isWs(c)) return s.ws > 0 ? { ...s, ws: s.ws - 1 } : null;
        const typed = s.typed + c;
        const alts = s.alts.filter((a) => a.lit.startsWith(typed));
        if (alts.length === 0) return null;
        const done = alts.find((a) => a.lit === typed);
        if (done) return this.enter(done.next);
        return { k: "expect", alts, typed, ws: 0 };
      }
      case "freeName": {
        if (s.typed.endsWith('"'))
          return c === ">" ? this.enter({ to: "value", tool: s.tool, seen: s.seen }) : null;
        if (c === ">" || (c === '"' && s.typed === "")) return null;
        return { ...s, typed: s.typed + c };
      }
      case "cut": {
        const typed = s.typed + c;
        if (s.rest !== "" && typed === s.rest) return this.enter({ to: "block" });
        if (typed === TOOL_CLOSE) return this.enter({ to: "end" });
        const opening = s.rest !== "" && s.rest.startsWith(typed);
        return opening || TOOL_CLOSE.startsWith(typed) ? { ...s, typed } : null;
      }
      case "end":
        return isWs(c) && s.ws > 0 ? { k: "end", ws: s.ws - 1 } : null;
      case "json":
        // A token that runs on past </think> is refused: the JSON grammar sees whole tokens only.
        return null;
    }
  }

  private expect(alts: Alt[], ws = MAX_WS): State {
    return { k: "expect", alts, typed: "", ws };
  }

  /** The state at the start of `next`; `lead`: the tool block itself is still to open (after </think>). */
  private enter(next: Then, lead = false): State {
    switch (next.to) {
      case "block":
        return lead
          ? this.expect([{ lit: TOOL_OPEN, next: { to: "block" } }])
          : this.expect([{ lit: INVOKE_OPEN, next: { to: "toolName" } }]);
      case "toolName":
        return this.expect(
          this.callable.map((t) => ({ lit: `${t.name}">`, next: { to: "body", tool: t.name, seen: [] } })),
          0,
        );
      case "body": {
        const tool = this.callable.find((t) => t.name === next.tool);
        const alts: Alt[] = [];
        const open =
          tool?.parameters === null || (tool?.parameters ?? []).some((p) => !next.seen.includes(p));
        if (open) alts.push({ lit: PARAM_OPEN, next: { to: "paramName", tool: next.tool, seen: next.seen } });
        const required = (tool?.required ?? []).filter((p) => tool?.parameters?.includes(p) ?? true);
        if (required.every((p) => next.seen.includes(p)))
          alts.push({ lit: INVOKE_CLOSE, next: { to: "afterInvoke" } });
        return this.expect(alts);
      }
      case "paramName": {
        const tool = this.callable.find((t) => t.name === next.tool);
        if (!tool || tool.parameters === null)
          return { k: "freeName", tool: next.tool, seen: next.seen, typed: "" };
        return this.expect(
          tool.parameters
            .filter((p) => !next.seen.includes(p))
            .map((p) => ({ lit: `${p}">`, next: { to: "value", tool: next.tool, seen: [...next.seen, p] } })),
          0,
        );
      }
      case "value":
        return { k: "value", tail: "", tool: next.tool, seen: next.seen };
      case "afterInvoke": {
        const alts: Alt[] = [{ lit: TOOL_CLOSE, next: { to: "end" } }];
        if (this.spec.parallel) alts.push({ lit: INVOKE_OPEN, next: { to: "toolName" } });
        return this.expect(alts);
      }
      case "end":
        return { k: "end", ws: MAX_WS };
    }
  }

  /** A key for the mask cache: states with equal keys allow the same tokens. */
  key(s: State): string {
    if (s.k === "reason" || s.k === "text") return `${s.k}|${pending(s.tail)}`;
    if (s.k === "value") return `value|${s.tool}|${s.seen.join(",")}|${pending(s.tail)}`;
    return JSON.stringify(s);
  }
}

const WATCHED = [THINK_CLOSE, TOOL_OPEN, TOOL_CLOSE, INVOKE_CLOSE, PARAM_CLOSE];

/** The longest tail that is a proper prefix of a watched tag: all of the past a free state's future depends on. */
function pending(tail: string): string {
  for (let n = Math.min(tail.length, TAIL); n > 0; n--) {
    const end = tail.slice(-n);
    if (WATCHED.some((tag) => tag.length > n && tag.startsWith(end))) return end;
  }
  return "";
}

/** The start of `<minimax:tool_call>` that `tail` ends in ("" if none): every watched tag has its only '<' first. */
function openingOf(tail: string): string {
  const at = tail.lastIndexOf("<");
  if (at < 0) return "";
  const end = tail.slice(at);
  return end.length < TOOL_OPEN.length && TOOL_OPEN.startsWith(end) ? end : "";
}

/** The mask for one token: only `allow`, or everything but `ban`. */
export type TokenMask = { allow: Int32Array } | { ban: Int32Array };

/** One sequence's constraint: the mask before each token, then the token sampled under it. */
export class ToolConstraint {
  private state: State | null;
  private readonly cache: Map<string, TokenMask>;

  constructor(
    private readonly grammar: ToolGrammar,
    private readonly vocab: TokenVocabulary,
    /** Masks shared by the sequences of one grammar (the same spec): they depend only on the state's key. */
    cache?: Map<string, TokenMask>,
  ) {
    this.state = grammar.start;
    this.cache = cache ?? new Map();
  }

  /** The reasoning is over and a response format's JSON grammar decides from here. */
  get inJson(): boolean {
    return this.state?.k === "json";
  }

  /** False once a token the grammar forbids was fed (the mask was not applied): no mask from then on. */
  get alive(): boolean {
    return this.state !== null;
  }

  /** The mask for the next token, or undefined when nothing is constrained any more. */
  mask(): TokenMask | undefined {
    const s = this.state;
    if (!s || s.k === "json") return undefined;
    const key = this.grammar.key(s);
    let mask = this.cache.get(key);
    if (!mask) {
      mask = this.compute(s);
      if (this.cache.size > 4096) this.cache.clear();
      this.cache.set(key, mask);
    }
    return mask;
  }

  accept(token: number): void {
    if (!this.state) return;
    if (this.vocab.stopIds.includes(token)) {
      if (!this.grammar.acceptsEnd(this.state)) this.state = null;
      return;
    }
    this.state = this.grammar.token(this.state, this.vocab.bytes[token] ?? "");
  }

  private compute(s: State): TokenMask {
    const g = this.grammar;
    const { stopIds } = this.vocab;
    const end = g.acceptsEnd(s);
    if (s.k === "reason" || s.k === "text" || s.k === "value") {
      // Free text: a token without '>' never completes a tag, so only tokens holding one are checked (one that
      // stops inside the tool tag is never refused here: it commits the reply, see settle).
      const ban: number[] = [];
      for (const id of this.vocab.withGt) if (g.token(s, this.vocab.bytes[id]) === null) ban.push(id);
      if (!end) for (const id of stopIds) ban.push(id);
      return { ban: Int32Array.from(ban) };
    }
    const allow: number[] = [];
    for (const first of firstBytes(s))
      for (const id of this.vocab.byFirstByte[first.charCodeAt(0)] ?? [])
        if (g.token(s, this.vocab.bytes[id]) !== null) allow.push(id);
    if (end) allow.push(...stopIds);
    return { allow: Int32Array.from(allow) };
  }
}

/** The bytes a non-free state can take next. */
function firstBytes(s: State): Set<string> {
  const out = new Set<string>();
  if (s.k === "expect") {
    if (s.typed === "" && s.ws > 0) for (const c of " \n\t\r") out.add(c);
    for (const a of s.alts) if (a.lit.length > s.typed.length) out.add(a.lit[s.typed.length]);
  } else if (s.k === "freeName") {
    if (s.typed.endsWith('"')) out.add(">");
    else for (let b = 0; b < 256; b++) out.add(String.fromCharCode(b));
  } else if (s.k === "cut") {
    if (s.rest.length > s.typed.length && s.rest.startsWith(s.typed)) out.add(s.rest[s.typed.length]);
    if (TOOL_CLOSE.startsWith(s.typed)) out.add(TOOL_CLOSE[s.typed.length]);
  } else if (s.k === "end" && s.ws > 0) for (const c of " \n\t\r") out.add(c);
  return out;
}
