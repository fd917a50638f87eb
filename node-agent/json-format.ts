// The JSON part of a response format (json_object / json_schema), masked by xgrammar (@mlc-ai/web-xgrammar:
// xgrammar compiled to WebAssembly). The grammar is compiled against the model's vocabulary on the last stage;
// one matcher per sequence is fed the tokens sampled after </think> and gives the mask of the next one.
//
// The package is a UMD bundle that, loaded as an ES module in Node, looks for CommonJS's `require` and
// `__filename` and publishes itself as globalThis.xgrammar; loadXgrammar() gives it those once.
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { JSON_SCHEMA_ARGS, jsonSchemaProblem } from "../common/json-schema-check.js";
import { type TokenVocabulary, UTF8_STATES, utf8After, utf8Table } from "../common/token-vocabulary.js";
import type { ToolConstraintSpec } from "../common/tool-grammar.js";

interface XgMatcher {
  acceptToken(token: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
  dispose(): void;
}
interface XgCompiled {
  dispose(): void;
}
interface XgCompiler {
  compileJSONSchema(
    schema: string,
    anyWhitespace?: boolean,
    indent?: number,
    separators?: [string, string],
    strictMode?: boolean,
    maxWhitespaceCnt?: number,
  ): Promise<XgCompiled>;
  compileBuiltinJSONGrammar(): Promise<XgCompiled>;
}
interface Xgrammar {
  TokenizerInfo: {
    createTokenizerInfo(
      vocab: string[],
      vocabType: string,
      prependSpace: boolean,
      vocabSize: number,
      stopTokenIds: number[],
    ): Promise<unknown>;
  };
  GrammarCompiler: { createGrammarCompiler(info: unknown, cache?: boolean): Promise<XgCompiler> };
  GrammarMatcher: { createGrammarMatcher(compiled: XgCompiled): Promise<XgMatcher> };
}

let loading: Promise<Xgrammar> | undefined;

function loadXgrammar(): Promise<Xgrammar> {
  loading ??= (async () => {
    const require = createRequire(import.meta.url);
    const file = require.resolve("@mlc-ai/web-xgrammar");
    const g = globalThis as Record<string, unknown>;
    g.require ??= require;
    g.__filename ??= file;
    g.__dirname ??= dirname(file);
    await import("@mlc-ai/web-xgrammar");
    const xg = g.xgrammar as Xgrammar | undefined;
    if (!xg?.GrammarCompiler) throw new Error("@mlc-ai/web-xgrammar did not load");
    return xg;
  })();
  return loading;
}

const compilers = new Map<TokenVocabulary, Promise<XgCompiler>>();
const grammars = new Map<string, Promise<XgCompiled>>();

function compilerFor(vocab: TokenVocabulary): Promise<XgCompiler> {
  let compiler = compilers.get(vocab);
  if (!compiler) {
    compiler = (async () => {
      const xg = await loadXgrammar();
      const info = await xg.TokenizerInfo.createTokenizerInfo(
        vocab.pieces,
        "BYTE_LEVEL",
        false,
        vocab.pieces.length,
        vocab.stopIds,
      );
      return xg.GrammarCompiler.createGrammarCompiler(info, true);
    })();
    compilers.set(vocab, compiler);
  }
  return compiler;
}

/** The compiled grammar of a format, shared by every sequence that asks for the same one. */
function grammarFor(
  vocab: TokenVocabulary,
  format: NonNullable<ToolConstraintSpec["format"]>,
): Promise<XgCompiled> {
  const key = JSON.stringify(format);
  let grammar = grammars.get(key);
  if (!grammar) {
    grammar = (async () => {
      const compiler = await compilerFor(vocab);
      if (format.type !== "json_schema") return compiler.compileBuiltinJSONGrammar();
      // The API checked the schema already; checked again here (in a disposable copy of xgrammar), since an
      // abort in this process's copy would leave it broken for every later request.
      const problem = await jsonSchemaProblem(format.schema);
      if (problem) throw new Error(`xgrammar cannot compile the JSON schema: ${problem}`);
      // One line, ", " and ": " between items: a model cannot stall in whitespace.
      const { anyWhitespace, indent, separators, strict } = JSON_SCHEMA_ARGS;
      return compiler.compileJSONSchema(
        JSON.stringify(format.schema),
        anyWhitespace,
        indent,
        [...separators],
        strict,
      );
    })();
    grammar.catch(() => grammars.delete(key));
    if (grammars.size >= 64) grammars.delete(grammars.keys().next().value as string);
    grammars.set(key, grammar);
  }
  return grammar;
}

const controlSets = new WeakMap<TokenVocabulary, Uint8Array>();

/**
 * Tokens holding a control byte (below 0x20): never valid in the one-line JSON asked for, but xgrammar's
 * string rule lets some through (a raw backspace came out in a string), so they are masked here as well.
 */
function controlTokens(vocab: TokenVocabulary): Uint8Array {
  let set = controlSets.get(vocab);
  if (!set) {
    set = new Uint8Array(vocab.bytes.length);
    vocab.bytes.forEach((b, id) => {
      for (let i = 0; i < b.length; i++) if (b.charCodeAt(i) < 0x20) set![id] = 1;
    });
    controlSets.set(vocab, set);
  }
  return set;
}

const digitSets = new WeakMap<TokenVocabulary, Uint8Array>();

/** Tokens holding a digit: the only ones that can lengthen a number's exponent. */
function digitTokens(vocab: TokenVocabulary): Uint8Array {
  let set = digitSets.get(vocab);
  if (!set) {
    const s = new Uint8Array(vocab.bytes.length);
    vocab.bytes.forEach((b, id) => {
      s[id] = /[0-9]/.test(b) ? 1 : 0;
    });
    set = s;
    digitSets.set(vocab, s);
  }
  return set;
}

/**
 * A number with an exponent of three digits or more: xgrammar allows it, but 4e999 is Infinity to JSON.parse
 * (and null once written again), so no exponent gets a third digit (nor does such text inside a string).
 */
const LONG_EXPONENT = /[0-9.][eE][+-]?[0-9]{3}/;

/** One sequence's JSON text: the allowed ids before each token, then the token sampled. */
export class JsonFormat {
  private matcher: XgMatcher | undefined;
  /** The UTF-8 state of the text so far (common/token-vocabulary.ts utf8Next): 0 between characters. */
  private owed = 0;
  /** The last bytes of the text, for LONG_EXPONENT. */
  private tail = "";

  constructor(
    private readonly vocab: TokenVocabulary,
    private readonly format: NonNullable<ToolConstraintSpec["format"]>,
  ) {}

  /** The ids the JSON grammar allows next (the end-of-turn ids once the JSON is complete). */
  async allowed(): Promise<Int32Array> {
    const { ids, canEnd } = await this.next();
    return canEnd ? Int32Array.from([...ids, ...this.vocab.stopIds]) : ids;
  }

  /**
   * The ids that continue the JSON (no end-of-turn ids among them), and whether the JSON may end here: for a tool
   * parameter's value, where `</parameter>` may follow instead (reply-constraint.ts).
   */
  async next(): Promise<{ ids: Int32Array; canEnd: boolean }> {
    this.matcher ??= await (await loadXgrammar()).GrammarMatcher.createGrammarMatcher(
      await grammarFor(this.vocab, this.format),
    );
    if (this.matcher.isTerminated()) return { ids: new Int32Array(0), canEnd: true };
    const bitmask = await this.matcher.getNextTokenBitmask();
    const ids: number[] = [];
    const size = this.vocab.pieces.length;
    const controls = controlTokens(this.vocab);
    const utf8 = utf8Table(this.vocab);
    const stops = this.vocab.stopIds;
    const digits = digitTokens(this.vocab);
    const tail = this.tail;
    let canEnd = false;
    for (let word = 0; word < bitmask.length; word++) {
      let bits = bitmask[word];
      while (bits !== 0) {
        const low = bits & -bits;
        const id = word * 32 + (31 - Math.clz32(low));
        if (stops.includes(id)) canEnd = true;
        else if (
          id < size &&
          !controls[id] &&
          utf8[id * UTF8_STATES + this.owed] >= 0 &&
          !(digits[id] && LONG_EXPONENT.test(tail + this.vocab.bytes[id]))
        )
          ids.push(id);
        bits ^= low;
      }
    }
    return { ids: Int32Array.from(ids), canEnd };
  }

  accept(token: number): void {
    if (this.matcher && !this.matcher.isTerminated()) this.matcher.acceptToken(token);
    if (this.vocab.stopIds.includes(token)) return;
    const bytes = this.vocab.bytes[token] ?? "";
    this.tail = (this.tail + bytes).slice(-8);
    this.owed = Math.max(0, utf8After(bytes, this.owed));
  }

  dispose(): void {
    this.matcher?.dispose();
    this.matcher = undefined;
  }
}
