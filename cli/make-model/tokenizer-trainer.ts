// Byte-level BPE trainer and tokenizer.json writer (the Hugging Face format that @huggingface/tokenizers
// loads). Pre-tokenization uses the GPT-2 pattern of the ByteLevel pre-tokenizer, so training sees exactly the
// pieces that encoding will.

/** The ByteLevel pre-tokenizer's split pattern (same as @huggingface/tokenizers and the Rust crate). */
const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the rest to 256+. */
export function byteToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

export interface AddedToken {
  content: string;
  special: boolean;
}

export interface TrainedBpe {
  /** token string -> id, ids 0..n-1 (the 256 byte symbols first, then one per merge) */
  vocab: Map<string, number>;
  merges: [string, string][];
}

/** Max-heap of pairs keyed by count (ties: smaller key first) with lazy deletion of stale entries. */
class PairHeap {
  private readonly items: { count: number; key: number }[] = [];

  push(count: number, key: number): void {
    const a = this.items;
    a.push({ count, key });
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(a[i], a[p])) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }

  pop(): { count: number; key: number } | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.before(a[l], a[m])) m = l;
        if (r < a.length && this.before(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }

  private before(x: { count: number; key: number }, y: { count: number; key: number }): boolean {
    return x.count > y.count || (x.count === y.count && x.key < y.key);
  }
}

const PAIR_BASE = 1 << 16;

/** Splits text like the ByteLevel pre-tokenizer and counts each distinct piece (as byte symbol ids). */
function countPieces(corpus: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const piece of corpus.match(PRETOKENIZE) ?? []) counts.set(piece, (counts.get(piece) ?? 0) + 1);
  return counts;
}

/**
 * Learns `mergeCount` merges (fewer if the corpus runs out of pairs). Deterministic: ties go to the pair with
 * the smaller ids.
 */
export function trainBpe(corpus: string, mergeCount: number): TrainedBpe {
  if (mergeCount + 256 >= PAIR_BASE) throw new Error(`tokenizer: at most ${PAIR_BASE - 257} merges`);
  const bytes = byteToUnicode();
  const symbols = [...bytes];
  const encoder = new TextEncoder();
  const words: number[][] = [];
  const freq: number[] = [];
  for (const [piece, count] of countPieces(corpus)) {
    words.push(Array.from(encoder.encode(piece)));
    freq.push(count);
  }
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: number) => {
    const s = words[w];
    for (let i = 0; i + 1 < s.length; i++) {
      const key = s[i] * PAIR_BASE + s[i + 1];
      pairCount.set(key, (pairCount.get(key) ?? 0) + sign * freq[w]);
      if (sign > 0) {
        const set = pairWords.get(key);
        if (set) set.add(w);
        else pairWords.set(key, new Set([w]));
      }
    }
  };
  for (let w = 0; w < words.length; w++) addPairs(w, 1);
  const heap = new PairHeap();
  for (const [key, count] of pairCount) heap.push(count, key);

  const merges: [string, string][] = [];
  while (merges.length < mergeCount) {
    const top = heap.pop();
    if (!top) break;
    const current = pairCount.get(top.key) ?? 0;
    if (current !== top.count) {
      if (current > 0 && current < top.count) heap.push(current, top.key);
      continue;
    }
    if (current <= 0) break;
    const a = Math.floor(top.key / PAIR_BASE);
    const b = top.key % PAIR_BASE;
    const merged = symbols.length;
    symbols.push(symbols[a] + symbols[b]);
    merges.push([symbols[a], symbols[b]]);
    const touched = new Set<number>();
    for (const w of pairWords.get(top.key) ?? []) {
      const s = words[w];
      let has = false;
      for (let i = 0; i + 1 < s.length && !has; i++) has = s[i] === a && s[i + 1] === b;
      if (!has) continue;
      addPairs(w, -1);
      const next: number[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          next.push(merged);
          i++;
        } else next.push(s[i]);
      }
      words[w] = next;
      addPairs(w, 1);
      for (let i = 0; i + 1 < next.length; i++) touched.add(next[i] * PAIR_BASE + next[i + 1]);
    }
    pairWords.delete(top.key);
    pairCount.delete(top.key);
    for (const key of touched) heap.push(pairCount.get(key) ?? 0, key);
  }
  const vocab = new Map<string, number>();
  symbols.forEach((s, i) => {
    vocab.set(s, i);
  });
  return { vocab, merges };
}

/** tokenizer.json for a trained BPE plus added tokens (ids after the model vocabulary). */
export function tokenizerJson(bpe: TrainedBpe, added: AddedToken[]): Record<string, unknown> {
  const base = bpe.vocab.size;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added.map((t, i) => ({
      id: base + i,
      content: t.content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: t.special,
    })),
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(bpe.vocab),
      merges: bpe.merges,
    },
  };
}
