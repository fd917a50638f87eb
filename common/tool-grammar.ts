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
// after </think> only whitespace and the tool block, and no end of turn before it. Each value by its parameter's
// schema (ToolValue, made by chat/constraints.ts): a string is raw text (within its minLength / maxLength,
// counted as chat/tool-arguments.ts reads it back), an enum of strings one of its values, a value of any other
// type JSON that an xgrammar matcher of the parameter's schema allows (node-agent/reply-constraint.ts drives
// it: this grammar only marks where it runs, state "jvalue", and takes over again at </parameter>); anything
// else is free text. No value may contain </invoke> or </minimax:tool_call>.
// No piece of a refused tag in the visible text: a token that stops inside `<minimax:tool_call>`, past its
// `<minimax:` (text such as "<m" + "eta>" stays text), commits the reply: to the tag's completion where a block
// may open, or else to its end (the end of turn, or the tag's closer and then the end), and the reply parser
// drops the cut tag (and the closer). Without this, text went on after a cut tag and the parser showed it
// ("<minimax:to</minimax:tool_call>"). Refusing the token outright instead sends a model that wanted to call
// wandering (the scripted model then wrote its call's parameters as text up to the window's end); forcing the
// block where one may open made it call a tool it never meant (Claude Code's Agent) with endless arguments.
import { type TokenVocabulary, UTF8_STATES, utf8Next, utf8Table } from "./token-vocabulary.js";

export interface ToolConstraintTool {
  name: string;
  /** Parameter names the schema declares (its properties); null: any name. */
  parameters: string[] | null;
  /** Parameters the schema requires. */
  required: string[];
  /** How each parameter's value is constrained, by name; a parameter not here takes free text. */
  values?: Record<string, ToolValue>;
}

/**
 * A parameter's value as the grammar constrains it (docs/api.md): raw text of a string schema (its length
 * bounds), one of a string enum's values, or JSON of the parameter's own schema (any type but string).
 */
export type ToolValue =
  | { kind: "string"; minLength?: number; maxLength?: number }
  | { kind: "enum"; values: string[] }
  | { kind: "json"; schema: Record<string, unknown> };

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
  | { k: "value"; tail: string; tool: string; seen: string[]; b?: Bounded }
  /** A JSON value of the parameter's schema: its matcher decides (reply-constraint.ts) until </parameter>. */
  | { k: "jvalue"; tool: string; seen: string[]; schema: Record<string, unknown> }
  | { k: "end"; ws: number }
  /** The JSON text of a response format: another grammar takes over (no byte is fed here). */
  | { k: "json" };

/** A string value with length bounds: its characters so far (code points, as ajv counts), UTF-8 kept whole. */
interface Bounded {
  min: number;
  max: number;
  /** Characters so far, the closer's bytes typed so far included. */
  n: number;
  /** The UTF-8 state (token-vocabulary.ts utf8Next): 0 between characters. */
  owed: number;
  /** The value began with a newline (layout the reply parser drops, chat/reply-parser.ts). */
  nl: boolean;
}

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
    if (s && !hasGt && (s.k === "reason" || s.k === "text" || (s.k === "value" && !s.b)))
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
          if (tail.endsWith(PARAM_CLOSE)) {
            if (s.b && valueLength(s.b, tail) < s.b.min) return null;
            return this.enter({ to: "body", tool: s.tool, seen: s.seen });
          }
          if (tail.endsWith(INVOKE_CLOSE) || tail.endsWith(TOOL_CLOSE)) return null;
        }
        if (!s.b) return { ...s, tail };
        const b = boundedStep(s.b, c);
        // Characters past maxLength only as the start of </parameter> (which is not part of the value).
        if (!b || b.n - closerTyped(tail) > b.max) return null;
        return { ...s, tail, b };
      }
      case "jvalue":
        // The JSON value is over (its matcher allowed an end): only </parameter> may follow.
        return this.step(this.closer(s), c);
      case "expect": {
        if (s.typed === "" && isWs(c) && s.ws > 0) return { ...s, ws: s.ws - 1 };
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

  /** After a JSON value: `</parameter>`, then the rest of the invoke. */
  closer(s: { tool: string; seen: string[] }): State {
    return this.expect([{ lit: PARAM_CLOSE, next: { to: "body", tool: s.tool, seen: s.seen } }], 0);
  }

  /** The first state of a parameter's value, by its ToolValue. */
  private valueStart(tool: string, seen: string[]): State {
    const param = seen[seen.length - 1];
    const spec = this.callable.find((t) => t.name === tool)?.values?.[param];
    const body: Then = { to: "body", tool, seen };
    if (spec?.kind === "enum")
      return this.expect(
        spec.values.map((v) => ({ lit: latin1OfUtf8(v) + PARAM_CLOSE, next: body })),
        0,
      );
    if (spec?.kind === "json") return { k: "jvalue", tool, seen, schema: spec.schema };
    if (spec?.kind === "string" && (spec.minLength !== undefined || spec.maxLength !== undefined)) {
      const b = { min: spec.minLength ?? 0, max: spec.maxLength ?? Number.MAX_SAFE_INTEGER };
      return { k: "value", tail: "", tool, seen, b: { ...b, n: 0, owed: 0, nl: false } };
    }
    return { k: "value", tail: "", tool, seen };
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
        return this.valueStart(next.tool, next.seen);
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
    if (s.k === "value") {
      const b = s.b ? `|${boundedKey(s.b, s.tail)}` : "";
      return `value|${s.tool}|${s.seen.join(",")}|${pending(s.tail)}${b}`;
    }
    if (s.k === "jvalue") return `jvalue|${s.tool}|${s.seen.join(",")}`;
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

/** How many bytes of `</parameter>` the value's tail ends in (all of it once it is complete). */
function closerTyped(tail: string): number {
  for (let n = Math.min(tail.length, PARAM_CLOSE.length); n > 0; n--)
    if (PARAM_CLOSE.startsWith(tail.slice(-n))) return n;
  return 0;
}

/** What of a bounded value's past its future depends on (with pending(tail)). */
function boundedKey(b: Bounded, tail: string): string {
  const cap = (b.max < Number.MAX_SAFE_INTEGER ? b.max : b.min) + PARAM_CLOSE.length + 1;
  // Under a minLength, whether the value so far ends in a newline (layout, not counted) matters too.
  const lastNl = b.min > 0 && tail[tail.length - closerTyped(tail) - 1] === "\n";
  return `${Math.min(b.n, cap)},${b.owed},${b.nl},${lastNl}`;
}

/** A bounded string value after one more byte; null when it would break UTF-8. */
function boundedStep(b: Bounded, c: string): Bounded | null {
  const owed = utf8Next(c.charCodeAt(0), b.owed);
  if (owed < 0) return null;
  if (b.owed !== 0) return { ...b, owed };
  return { ...b, owed, n: b.n + 1, nl: b.n === 0 ? c === "\n" : b.nl };
}

/**
 * The length of a bounded value whose tail just completed `</parameter>`, as the reply parser reads it back:
 * one newline at each end is layout (chat/reply-parser.ts trimLayout).
 */
function valueLength(b: Bounded, tail: string): number {
  // n counted the closer's bytes but its '>', which completed it.
  const rest = b.n - (PARAM_CLOSE.length - 1) - (b.nl ? 1 : 0);
  const last = tail[tail.length - PARAM_CLOSE.length - 1];
  return rest > 0 && last === "\n" ? rest - 1 : rest;
}

function latin1OfUtf8(text: string): string {
  return String.fromCharCode(...new TextEncoder().encode(text));
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

  /**
   * The schema of the JSON value being written (state "jvalue"), else undefined: then the value's matcher gives
   * the mask (reply-constraint.ts), with closerMask() once the value may end, and accept() takes only the token
   * that starts `</parameter>`.
   */
  get jsonValue(): Record<string, unknown> | undefined {
    return this.state?.k === "jvalue" ? this.state.schema : undefined;
  }

  /** The mask that starts `</parameter>` after a JSON value (state "jvalue"). */
  closerMask(): Int32Array {
    const s = this.state;
    if (s?.k !== "jvalue") return new Int32Array(0);
    const key = `closer|${this.grammar.key(s)}`;
    let mask = this.cache.get(key);
    if (!mask) {
      mask = this.compute(this.grammar.closer(s));
      this.cache.set(key, mask);
    }
    return "allow" in mask ? mask.allow : new Int32Array(0);
  }

  /** False once a token the grammar forbids was fed (the mask was not applied): no mask from then on. */
  get alive(): boolean {
    return this.state !== null;
  }

  /** The mask for the next token, or undefined when nothing is constrained any more. */
  mask(): TokenMask | undefined {
    const s = this.state;
    if (!s || s.k === "json" || s.k === "jvalue") return undefined;
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
    if (s.k === "value" && s.b) return { allow: this.boundedAllowed(s, s.b) };
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

  /**
   * A bounded string value: every token is checked, but one without '<' or '>' (while no closer is pending) only
   * by its character count and UTF-8 (tables made once per vocabulary).
   */
  private boundedAllowed(s: State & { k: "value" }, b: Bounded): Int32Array {
    const { bytes } = this.vocab;
    const { chars, angle } = tablesOf(this.vocab);
    const utf8 = utf8Table(this.vocab);
    const pendingCloser = closerTyped(s.tail) > 0;
    const allow: number[] = [];
    for (let id = 0; id < bytes.length; id++) {
      if (bytes[id] === "" || this.vocab.stopIds.includes(id)) continue;
      if (!pendingCloser && !angle[id]) {
        if (utf8[id * UTF8_STATES + b.owed] >= 0 && b.n + chars[id] <= b.max) allow.push(id);
      } else if (this.grammar.token(s, bytes[id]) !== null) allow.push(id);
    }
    return Int32Array.from(allow);
  }
}

interface VocabTables {
  /** Characters (UTF-8 lead and ASCII bytes) per token. */
  chars: Uint16Array;
  /** 1 where the token holds '<' or '>'. */
  angle: Uint8Array;
}

const vocabTables = new WeakMap<TokenVocabulary, VocabTables>();

function tablesOf(vocab: TokenVocabulary): VocabTables {
  let t = vocabTables.get(vocab);
  if (!t) {
    const n = vocab.bytes.length;
    t = { chars: new Uint16Array(n), angle: new Uint8Array(n) };
    for (let id = 0; id < n; id++) {
      const bytes = vocab.bytes[id];
      let chars = 0;
      for (let i = 0; i < bytes.length; i++) if ((bytes.charCodeAt(i) & 0xc0) !== 0x80) chars++;
      t.chars[id] = chars;
      t.angle[id] = bytes.includes("<") || bytes.includes(">") ? 1 : 0;
    }
    vocabTables.set(vocab, t);
  }
  return t;
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
