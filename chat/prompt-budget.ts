// The token budget, checked while a prompt is tokenized rather than after: a prompt of megabytes that cannot fit
// the window is refused once about a window's worth of it has been counted, so its cost is bounded by the window,
// not by the body (a 10 MB body used to keep the prompt worker busy for 17 s before the window check refused it).
import { ClusterError } from "../common/errors.js";

/** Characters counted per piece: large enough that pieces are few, small enough that a refusal comes early. */
const PIECE_CHARS = 65_536;

/** A prompt found to exceed the window before it was tokenized whole. */
export class PromptTooLongError extends ClusterError {
  constructor(
    readonly contextWindow: number,
    readonly moreThan: number,
  ) {
    super(
      "context_length_exceeded",
      `This model's maximum context length is ${contextWindow} tokens. However, your messages resulted in more than ${moreThan} tokens.`,
    );
    this.name = "PromptTooLongError";
  }
}

/**
 * The text's token ids, or a PromptTooLongError when it has more than twice `limit` tokens. A text of usual
 * density (at least two characters a token within the limit) is tokenized whole, as before. A longer one is
 * first counted in pieces cut at line ends (else spaces): a cut splits at most a pre-token, so the pieces' count
 * exceeds the whole text's by at most two tokens a cut, and that is taken off before comparing. A text not
 * refused is tokenized whole, so one up to twice the window still gets its exact count in the caller's error
 * (the text OpenClaw reads to compact); only a larger one gets "more than".
 */
export function encodeWithin(encode: (text: string) => number[], text: string, limit: number): number[] {
  if (text.length <= limit * 2) return encode(text);
  let counted = 0;
  let pieces = 0;
  for (let at = 0; at < text.length; ) {
    const end = pieceEnd(text, at);
    counted += encode(text.slice(at, end)).length;
    pieces++;
    const atLeast = counted - 2 * pieces;
    if (atLeast > 2 * limit) throw new PromptTooLongError(limit, atLeast);
    at = end;
  }
  return encode(text);
}

/** Where the piece starting at `at` ends: after the last line end (else space) in its second half. */
function pieceEnd(text: string, at: number): number {
  const hardEnd = at + PIECE_CHARS;
  if (hardEnd >= text.length) return text.length;
  const from = at + PIECE_CHARS / 2;
  for (const separator of ["\n", " "]) {
    const cut = text.lastIndexOf(separator, hardEnd - 1);
    if (cut >= from) return cut + 1;
  }
  // No separator: never cut between the halves of a surrogate pair.
  const code = text.charCodeAt(hardEnd - 1);
  return code >= 0xd800 && code <= 0xdbff ? hardEnd + 1 : hardEnd;
}
