// The token budget (chat/prompt-budget.ts) with the tiny model's real tokenizer: a text within the window (or
// near it) gets exactly the ids tokenizing it whole gives; a text clearly past it is refused after only about a
// window's worth has been tokenized; pieces are cut at line ends or spaces and never inside a surrogate pair.
import { beforeAll, describe, expect, it } from "vitest";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { encodeWithin, PromptTooLongError } from "../../chat/prompt-budget.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";
import { Rng } from "../helpers/seeded-rng.js";

let formatter: ChatFormatter;
beforeAll(async () => {
  formatter = ChatFormatter.forModelDir(await ensureModel("tiny", "tiny"));
});

const words = ["cluster", "token", " ", "数据", "λ", "🙂", "42", "—", "pipeline", "\n", "a", "=========="];
/** About four characters a token on the tiny model's vocabulary: long enough to be counted in pieces. */
const sparseWords = [" the", " the", " the", " the", "\n"];

/** Seeded text of about `chars` characters; `separators` false leaves out spaces and line ends. */
function text(seed: number, chars: number, separators = true, pool0 = words): string {
  const rng = new Rng(seed);
  const pool = separators ? pool0 : pool0.filter((w) => w.trim() !== "");
  let out = "";
  while (out.length < chars) out += rng.pick(pool) + (separators && rng.int(4) === 0 ? " " : "");
  return out;
}

/** The real encoder, recording what it was given. */
function recordingEncode(): { encode: (t: string) => number[]; pieces: string[] } {
  const pieces: string[] = [];
  return {
    pieces,
    encode: (t: string) => {
      pieces.push(t);
      return formatter.encode(t);
    },
  };
}

describe("the prompt token budget", () => {
  it("gives exactly the whole text's ids when it fits, whatever its length", () => {
    for (const [t, limit] of [
      [text(1, 1_000), 4_096],
      [text(2, 200_000), 200_000],
      [text(3, 400_000, true, sparseWords), 150_000],
      [text(4, 150_000, true, sparseWords), 60_000],
    ] as const) {
      const whole = formatter.encode(t);
      expect(whole.length).toBeLessThanOrEqual(limit);
      const { encode, pieces } = recordingEncode();
      expect(encodeWithin(encode, t, limit)).toEqual(whole);
      // Texts more than twice the limit's length are counted in pieces first.
      expect(pieces.length > 1).toBe(t.length > 2 * limit);
    }
  });

  it("refuses a text past twice the limit after tokenizing little more than that", () => {
    for (const separators of [true, false]) {
      const t = text(5, 2_000_000, separators);
      const limit = 8_192;
      const { encode, pieces } = recordingEncode();
      let refusal: unknown;
      try {
        encodeWithin(encode, t, limit);
      } catch (err) {
        refusal = err;
      }
      expect(refusal).toBeInstanceOf(PromptTooLongError);
      expect((refusal as PromptTooLongError).code).toBe("context_length_exceeded");
      // "More than" is a true lower bound: the whole text has at least that many tokens.
      const moreThan = (refusal as PromptTooLongError).moreThan;
      expect(moreThan).toBeGreaterThan(2 * limit);
      expect(formatter.encode(t).length).toBeGreaterThan(moreThan);
      const tokenized = pieces.reduce((n, p) => n + p.length, 0);
      // A few pieces of 64 Ki characters at most: a small share of the 2 M characters.
      expect(tokenized).toBeLessThan(t.length / 4);
      expect(pieces.join("")).toBe(t.slice(0, tokenized));
      for (const piece of pieces) {
        expect(piece).not.toMatch(/^[\uDC00-\uDFFF]|[\uD800-\uDBFF]$/);
        if (separators && piece !== pieces.at(-1)) expect(piece).toMatch(/[\n ]$/);
      }
    }
  });

  it("up to twice the limit, counts in pieces but decides on the whole text", () => {
    // Text at the limit and 1.9 times it, long enough to be counted in pieces first: neither is refused there, so
    // the caller's exact check sees the whole text's ids (and says how many in its error).
    const t = text(6, 300_000, true, sparseWords);
    const whole = formatter.encode(t);
    for (const limit of [whole.length, Math.ceil(whole.length / 1.9)]) {
      expect(t.length).toBeGreaterThan(limit * 2);
      const { encode, pieces } = recordingEncode();
      expect(encodeWithin(encode, t, limit)).toEqual(whole);
      expect(pieces.length).toBeGreaterThan(2);
    }
  });
});
