// A real (tiny) byte-level BPE tokenizer.json for chat tests: one token per byte, no merges, plus the
// MiniMax special tokens. Byte-level tokens split multi-byte characters, which is what the tests need.
import { ModelTokenizer } from "../../chat/tokenizer.js";

/** GPT-2's byte → printable character table (bytes that are not printable map above U+0100). */
function bytesToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.includes(b)) table[b] = String.fromCodePoint(b);
    else table[b] = String.fromCodePoint(256 + extra++);
  }
  return table;
}

export const SPECIAL_TOKENS = [
  "]~!b[",
  "]~b]",
  "[e~[",
  "<think>",
  "</think>",
  "<minimax:tool_call>",
  "</minimax:tool_call>",
];

export function byteLevelTokenizer(): ModelTokenizer {
  const vocab: Record<string, number> = {};
  bytesToUnicode().forEach((ch, b) => {
    vocab[ch] = b;
  });
  const added = SPECIAL_TOKENS.map((content, i) => ({
    id: 256 + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: content.includes("~"),
  }));
  const tokenizerJson = {
    version: "1.0",
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: "BPE", vocab, merges: [], byte_fallback: false, ignore_merges: false },
  };
  return new ModelTokenizer(tokenizerJson, { bos_token: "]~!b[", eos_token: "[e~[" });
}
