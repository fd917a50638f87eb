// Turns a stream of token ids into text deltas that never split a UTF-8 character.
// Byte-level BPE tokens may hold part of a character; decoding such a prefix ends in U+FFFD, so the
// text is held back until the character completes. A short window keeps the cost per token constant.

export interface Decoder {
  decode(ids: number[]): string;
}

const REPLACEMENT = "\uFFFD";
/** A character spans at most 4 byte tokens; a longer tail of U+FFFD is real text, not a split character. */
const MAX_PENDING = 4;

export class IncrementalDetokenizer {
  private ids: number[] = [];
  /** ids[prefixStart..readStart) is context already emitted, used so a token decodes as it would mid-text. */
  private prefixStart = 0;
  private readStart = 0;

  constructor(private readonly decoder: Decoder) {}

  /** Adds one token; returns the text it completes ("" while a character is still incomplete). */
  push(token: number): string {
    this.ids.push(token);
    const prefixText = this.decoder.decode(this.ids.slice(this.prefixStart, this.readStart));
    const fullText = this.decoder.decode(this.ids.slice(this.prefixStart));
    const pending = this.ids.length - this.readStart;
    if (fullText.endsWith(REPLACEMENT) && pending < MAX_PENDING) return "";
    if (fullText.length <= prefixText.length) {
      this.advance();
      return "";
    }
    const delta = fullText.slice(prefixText.length);
    this.advance();
    return delta;
  }

  /** Whatever is still held back (an incomplete character at the very end of the reply). */
  flush(): string {
    if (this.readStart >= this.ids.length) return "";
    const prefixText = this.decoder.decode(this.ids.slice(this.prefixStart, this.readStart));
    const fullText = this.decoder.decode(this.ids.slice(this.prefixStart));
    this.advance();
    return fullText.slice(prefixText.length);
  }

  private advance(): void {
    this.prefixStart = this.readStart;
    this.readStart = this.ids.length;
    // Only the window matters from here on; drop the rest so memory stays flat on long replies.
    if (this.prefixStart > 64) {
      this.ids = this.ids.slice(this.prefixStart);
      this.readStart -= this.prefixStart;
      this.prefixStart = 0;
    }
  }
}
