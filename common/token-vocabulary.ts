// Every token id's bytes, read once from the model's tokenizer.json (byte-level BPE, as MiniMax-M2's): what a
// grammar needs to tell which tokens may come next. Bytes are held as strings of one char per byte (latin-1).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface TokenVocabulary {
  /** bytes[id]: the token's bytes, one char per byte ("" for ids the tokenizer does not define). */
  bytes: string[];
  /** Ids whose bytes hold '>' (every tag ends with one): the only ones that can end a tag. */
  withGt: Int32Array;
  /** Ids by their first byte. */
  byFirstByte: Int32Array[];
  /** End-of-turn ids ([e~[ and the eos_token). */
  stopIds: number[];
  /** Each id as tokenizer.json writes it (byte-level alphabet; added tokens as their text), for xgrammar. */
  pieces: string[];
}

/** GPT-2's byte-level alphabet: the printable char each byte is written as in the vocabulary. */
function unicodeToByte(): Map<string, number> {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.includes(b)) map.set(String.fromCharCode(b), b);
    else map.set(String.fromCharCode(256 + extra++), b);
  }
  return map;
}

function latin1OfUtf8(text: string): string {
  return String.fromCharCode(...new TextEncoder().encode(text));
}

function tokenContent(raw: unknown): string | undefined {
  if (typeof raw === "string") return raw;
  if (raw && typeof raw === "object" && typeof (raw as { content?: unknown }).content === "string")
    return (raw as { content: string }).content;
  return undefined;
}

/** The vocabulary of tokenizer.json (+ tokenizer_config.json's eos_token); vocabSize pads the id range. */
export function vocabularyOf(
  tokenizer: Record<string, unknown>,
  config: Record<string, unknown>,
  vocabSize = 0,
): TokenVocabulary {
  const model = tokenizer.model as { vocab?: Record<string, number> } | undefined;
  const vocab = model?.vocab;
  if (!vocab || typeof vocab !== "object") throw new Error("tokenizer.json has no model.vocab");
  const added = (tokenizer.added_tokens as Array<{ id: number; content: string }> | undefined) ?? [];
  let size = vocabSize;
  for (const id of Object.values(vocab)) size = Math.max(size, id + 1);
  for (const a of added) size = Math.max(size, a.id + 1);
  const bytes = new Array<string>(size).fill("");
  const pieces = new Array<string>(size).fill("");
  const alphabet = unicodeToByte();
  for (const [piece, id] of Object.entries(vocab)) {
    let out = "";
    for (const ch of piece) {
      const b = alphabet.get(ch);
      out += b === undefined ? latin1OfUtf8(ch) : String.fromCharCode(b);
    }
    bytes[id] = out;
    pieces[id] = piece;
  }
  const ids = new Map<string, number>();
  for (const a of added) {
    bytes[a.id] = latin1OfUtf8(a.content);
    pieces[a.id] = a.content;
    ids.set(a.content, a.id);
  }
  const stopIds = [...new Set([ids.get("[e~["), ids.get(tokenContent(config.eos_token) ?? "")])].filter(
    (id): id is number => id !== undefined,
  );
  const withGt: number[] = [];
  const first: number[][] = Array.from({ length: 256 }, () => []);
  bytes.forEach((b, id) => {
    if (b.includes(">")) withGt.push(id);
    if (b.length > 0 && !stopIds.includes(id)) first[b.charCodeAt(0)].push(id);
  });
  return {
    bytes,
    withGt: Int32Array.from(withGt.filter((id) => !stopIds.includes(id))),
    byFirstByte: first.map((list) => Int32Array.from(list)),
    stopIds,
    pieces,
  };
}

const loaded = new Map<string, TokenVocabulary>();

/** The vocabulary of a model folder, read once per process. */
export function loadVocabulary(modelDir: string): TokenVocabulary {
  const cached = loaded.get(modelDir);
  if (cached) return cached;
  const file = join(modelDir, "tokenizer.json");
  const configFile = join(modelDir, "tokenizer_config.json");
  const modelConfigFile = join(modelDir, "config.json");
  const readJson = (f: string): Record<string, unknown> =>
    existsSync(f) ? (JSON.parse(readFileSync(f, "utf8")) as Record<string, unknown>) : {};
  if (!existsSync(file)) throw new Error(`${file}: missing; constrained decoding needs the tokenizer`);
  const vocabSize = Number(readJson(modelConfigFile).vocab_size) || 0;
  const vocabulary = vocabularyOf(readJson(file), readJson(configFile), vocabSize);
  loaded.set(modelDir, vocabulary);
  return vocabulary;
}

/**
 * UTF-8 as a small automaton over bytes, strict as a decoder is (no overlong forms, no surrogates, nothing past
 * U+10FFFF): 0 = between characters; 1-3 = that many continuation bytes owed; 4-7 = the second byte of a
 * character whose range is narrowed (after E0, ED, F0, F4). A grammar that lets a reply hold bytes a decoder
 * turns into U+FFFD would let it break a string's length and content.
 */
export function utf8Next(byte: number, state: number): number {
  switch (state) {
    case 0:
      if (byte < 0x80) return 0;
      if (byte >= 0xc2 && byte <= 0xdf) return 1;
      if (byte === 0xe0) return 4;
      if (byte === 0xed) return 5;
      if (byte >= 0xe1 && byte <= 0xef) return 2;
      if (byte === 0xf0) return 6;
      if (byte >= 0xf1 && byte <= 0xf3) return 3;
      if (byte === 0xf4) return 7;
      return -1;
    case 4:
      return byte >= 0xa0 && byte <= 0xbf ? 1 : -1;
    case 5:
      return byte >= 0x80 && byte <= 0x9f ? 1 : -1;
    case 6:
      return byte >= 0x90 && byte <= 0xbf ? 2 : -1;
    case 7:
      return byte >= 0x80 && byte <= 0x8f ? 2 : -1;
    default:
      return (byte & 0xc0) === 0x80 ? state - 1 : -1;
  }
}

/** The UTF-8 state after `bytes` (one char per byte) from `state`; -1 when they break UTF-8. */
export function utf8After(bytes: string, state: number): number {
  let s = state;
  for (let i = 0; i < bytes.length && s >= 0; i++) s = utf8Next(bytes.charCodeAt(i), s);
  return s;
}

export const UTF8_STATES = 8;

const utf8Tables = new WeakMap<TokenVocabulary, Int8Array>();

/** table[id * UTF8_STATES + state]: the UTF-8 state after token id (-1: it breaks UTF-8), made once. */
export function utf8Table(vocab: TokenVocabulary): Int8Array {
  let table = utf8Tables.get(vocab);
  if (!table) {
    const t = new Int8Array(vocab.bytes.length * UTF8_STATES);
    vocab.bytes.forEach((b, id) => {
      for (let s = 0; s < UTF8_STATES; s++) t[id * UTF8_STATES + s] = utf8After(b, s);
    });
    table = t;
    utf8Tables.set(vocab, t);
  }
  return table;
}
