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
