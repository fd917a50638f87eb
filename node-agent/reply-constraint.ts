// One sequence's constrained reply on the last stage: the MiniMax grammar (common/tool-grammar.ts) over the
// whole reply, and xgrammar matchers (json-format.ts) where the reply is JSON: a response format's text after
// </think>, and each tool parameter whose schema asks for a JSON value (docs/api.md). The stage asks for the
// mask before each token and feeds the token sampled under it; everything is local to the stage.
import type { TokenVocabulary } from "../common/token-vocabulary.js";
import type { TokenMask, ToolConstraint, ToolConstraintSpec } from "../common/tool-grammar.js";
import { JsonFormat } from "./json-format.js";

/** Tags a JSON value may not hold: the reply parser would end the parameter, the call or the block there. */
const CLOSERS = ["</parameter>", "</invoke>", "</minimax:tool_call>"];
const TAIL = 24;

const gtSets = new WeakMap<TokenVocabulary, Uint8Array>();

function withGtSet(vocab: TokenVocabulary): Uint8Array {
  let set = gtSets.get(vocab);
  if (!set) {
    set = new Uint8Array(vocab.bytes.length);
    for (const id of vocab.withGt) set[id] = 1;
    gtSets.set(vocab, set);
  }
  return set;
}

/** The JSON value of one parameter being written: its matcher and the bytes so far (the last few). */
interface ValueJson {
  json: JsonFormat;
  tail: string;
  /** The last mask let the value end: a token starting with '<' is then the closer. */
  canEnd: boolean;
}

export class ReplyConstraint {
  private readonly format: JsonFormat | undefined;
  private value: ValueJson | undefined;

  constructor(
    private readonly tools: ToolConstraint,
    private readonly vocab: TokenVocabulary,
    spec: ToolConstraintSpec,
  ) {
    this.format = spec.format ? new JsonFormat(vocab, spec.format) : undefined;
  }

  /** False once a token the tool grammar forbids was fed (a mask not applied): nothing is masked from then on. */
  get alive(): boolean {
    return this.tools.alive;
  }

  /** The mask of the next token, or undefined when nothing is constrained any more. */
  async mask(): Promise<TokenMask | undefined> {
    if (this.format && this.tools.inJson) return { allow: await this.format.allowed() };
    const schema = this.tools.jsonValue;
    if (!schema) return this.tools.mask();
    this.value ??= {
      json: new JsonFormat(this.vocab, { type: "json_schema", schema }),
      tail: "",
      canEnd: false,
    };
    const value = this.value;
    const { ids, canEnd } = await value.json.next();
    value.canEnd = canEnd;
    const allow = this.withoutClosers(ids, value.tail);
    if (canEnd) for (const id of this.tools.closerMask()) allow.push(id);
    return { allow: Int32Array.from(allow) };
  }

  /** The token sampled under the last mask. */
  accept(token: number): void {
    if (this.format && this.tools.inJson) {
      this.format.accept(token);
      return;
    }
    const value = this.value;
    if (value && this.tools.jsonValue) {
      const bytes = this.vocab.bytes[token] ?? "";
      // No JSON value goes on with '<' where it may end (only inside a string, which cannot end there).
      if (!(value.canEnd && bytes.startsWith("<"))) {
        value.json.accept(token);
        value.tail = (value.tail + bytes).slice(-TAIL);
        return;
      }
      value.json.dispose();
      this.value = undefined;
    }
    this.tools.accept(token);
  }

  dispose(): void {
    this.format?.dispose();
    this.value?.json.dispose();
    this.value = undefined;
  }

  /** The JSON's ids less those that would complete a closing tag inside the value (in a string). */
  private withoutClosers(ids: Int32Array, tail: string): number[] {
    const gt = withGtSet(this.vocab);
    const out: number[] = [];
    for (const id of ids) {
      if (gt[id]) {
        const text = tail + this.vocab.bytes[id];
        if (CLOSERS.some((tag) => text.includes(tag))) continue;
      }
      out.push(id);
    }
    return out;
  }
}
