// A deterministic training corpus for the tokenizer: pseudo-English prose from the word lists (with inflections,
// capitals, compounds, paths), markdown, XML-ish blocks, JSON (indented and compact like Jinja's tojson), code and
// shell snippets, and a little non-Latin text.
import {
  BROAD_WORDS,
  DOC_WORDS,
  EXTRA_WORDS,
  FUNCTION_WORDS,
  SYLLABLES,
  TECH_WORDS,
  words,
} from "./corpus-words.js";
import { Random } from "./random.js";

const VOCABULARY = [
  ...new Set([
    ...words(FUNCTION_WORDS),
    ...words(EXTRA_WORDS),
    ...words(TECH_WORDS),
    ...words(BROAD_WORDS),
    ...words(DOC_WORDS),
  ]),
];
const TECH = words(TECH_WORDS);
const SYLLABLE_LIST = words(SYLLABLES);
const FOREIGN = [
  "café",
  "naïve",
  "résumé",
  "Zürich",
  "São Paulo",
  "北京",
  "東京",
  "こんにちは",
  "世界",
  "你好",
  "Привет",
  "мир",
  "😀",
  "🚀",
  "✅",
  "👍",
  "—",
  "…",
  "→",
  "°C",
  "€",
];

class CorpusWriter {
  private readonly parts: string[] = [];
  private length = 0;

  constructor(private readonly rng: Random) {}

  get size(): number {
    return this.length;
  }

  push(text: string): void {
    this.parts.push(text);
    this.length += text.length;
  }

  text(): string {
    return this.parts.join("");
  }

  pick<T>(items: readonly T[]): T {
    return this.rng.pick(items);
  }

  /** Half Zipf-like (common words first), half uniform so that every listed word becomes a token. */
  word(list: readonly string[] = VOCABULARY): string {
    const u = this.rng.next();
    return list[Math.floor(list.length * (this.rng.next() < 0.4 ? u * u : u))];
  }

  /** Regular English endings, so that inflected forms of known words compress too. */
  inflect(w: string): string {
    const stem = w.endsWith("e") ? w.slice(0, -1) : w;
    const r = this.rng.next();
    if (r < 0.45) return w.endsWith("s") ? `${w}es` : `${w}s`;
    if (r < 0.7) return `${stem}ed`;
    if (r < 0.88) return `${stem}ing`;
    if (r < 0.94) return `${w}ly`;
    return `${stem}er`;
  }

  pseudoWord(): string {
    const n = 2 + this.rng.int(3);
    let w = "";
    for (let i = 0; i < n; i++) w += this.rng.pick(SYLLABLE_LIST);
    return w;
  }

  identifier(): string {
    const a = this.word(this.rng.next() < 0.5 ? TECH : VOCABULARY);
    const b = this.word(this.rng.next() < 0.5 ? TECH : VOCABULARY);
    switch (this.rng.int(4)) {
      case 0:
        return `${a}_${b}`;
      case 1:
        return a + b[0].toUpperCase() + b.slice(1);
      case 2:
        return `${a}-${b}`;
      default:
        return a;
    }
  }

  sentence(): string {
    const n = 4 + this.rng.int(14);
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = this.rng.next();
      let w: string;
      if (r < 0.01) w = this.pseudoWord();
      else if (r < 0.03) w = this.word() + this.word();
      else if (r < 0.07) w = `\`${this.identifier()}\``;
      else if (r < 0.085) w = String(this.rng.int(r < 0.08 ? 100 : 10000));
      else if (r < 0.09) w = this.rng.pick(FOREIGN);
      else if (r < 0.1) w = `"${this.word()}"`;
      else if (r < 0.125) w = `(${this.word()})`;
      else if (r < 0.13) w = this.path();
      else if (r < 0.15) w = this.word().toUpperCase();
      else if (r < 0.19) w = this.capitalized(this.word());
      else if (r < 0.29) w = this.inflect(this.word());
      else w = this.word();
      if (i > 0 && i < n - 1 && this.rng.next() < 0.07) w += this.rng.pick([",", ";", ":", " -", ","]);
      out.push(w);
    }
    out[0] = out[0][0].toUpperCase() + out[0].slice(1);
    return out.join(" ") + this.rng.pick([".", ".", ".", ".", "?", "!", ":"]);
  }

  paragraph(): string {
    const n = 1 + this.rng.int(5);
    const s: string[] = [];
    for (let i = 0; i < n; i++) s.push(this.sentence());
    return s.join(" ");
  }

  markdown(): string {
    const lines: string[] = [`${"#".repeat(1 + this.rng.int(3))} ${this.titleCase()}`];
    const items = 2 + this.rng.int(6);
    for (let i = 0; i < items; i++) {
      const r = this.rng.next();
      if (r < 0.25) lines.push(`- ${this.identifier()}: ${this.sentence()}`);
      else if (r < 0.4) lines.push(`- ${this.word()} (${this.word()}): ${this.sentence()}`);
      else if (r < 0.6) lines.push(`${i + 1}. **${this.titleCase()}** ${this.sentence()}`);
      else if (r < 0.7) lines.push(`  - ${this.sentence()}`);
      else lines.push(this.paragraph());
    }
    return lines.join("\n");
  }

  /** A file path: words joined by slashes, sometimes with a dot-folder and an extension. */
  path(): string {
    const n = 1 + this.rng.int(4);
    const parts: string[] = [];
    for (let i = 0; i < n; i++) parts.push(this.rng.next() < 0.8 ? this.word() : this.identifier());
    const start = this.pick(["/", "~/", "./", "~/.", ""]);
    const ext = this.pick(["", "", ".md", ".json", ".ts", ".txt", "/"]);
    return start + parts.join("/") + ext;
  }

  capitalized(w: string): string {
    return w[0].toUpperCase() + w.slice(1);
  }

  titleCase(): string {
    const n = 1 + this.rng.int(4);
    const w: string[] = [];
    for (let i = 0; i < n; i++) {
      const x = this.word();
      w.push(x[0].toUpperCase() + x.slice(1));
    }
    return w.join(" ");
  }

  jsonValue(depth: number): unknown {
    const r = this.rng.next();
    if (depth < 2 && r < 0.25) {
      const o: Record<string, unknown> = {};
      const n = 1 + this.rng.int(4);
      for (let i = 0; i < n; i++) o[this.identifier()] = this.jsonValue(depth + 1);
      return o;
    }
    if (depth < 2 && r < 0.3) return [this.jsonValue(depth + 1), this.jsonValue(depth + 1)];
    if (r < 0.55) return this.sentence();
    if (r < 0.7) return this.rng.int(10000);
    if (r < 0.8) return this.rng.next() < 0.5;
    return this.word(TECH);
  }

  schema(): string {
    const props: Record<string, unknown> = {};
    const n = 1 + this.rng.int(4);
    for (let i = 0; i < n; i++) {
      props[this.identifier()] = {
        type: this.rng.pick(["string", "integer", "number", "boolean", "array", "object"]),
        description: this.sentence(),
      };
    }
    return JSON.stringify({
      name: this.identifier(),
      description: this.paragraph(),
      parameters: { type: "object", required: Object.keys(props).slice(0, 1), properties: props },
    });
  }

  json(): string {
    const value = { [this.identifier()]: this.jsonValue(0), [this.identifier()]: this.jsonValue(0) };
    switch (this.rng.int(3)) {
      case 0:
        return JSON.stringify(value, null, 2);
      case 1:
        // Jinja's tojson separators: ", " and ": "
        return JSON.stringify(value).replace(/","/g, '", "').replace(/":/g, '": ');
      default:
        return this.schema().replace(/","/g, '", "').replace(/":/g, '": ');
    }
  }

  /** XML-ish blocks, as prompts list skills, documents and tool calls. */
  xml(): string {
    const outer = this.word();
    const lines = [`<${outer}>`];
    const n = 1 + this.rng.int(4);
    for (let i = 0; i < n; i++) {
      const tag = this.rng.next() < 0.7 ? this.word() : this.identifier().replace(/-/g, "_");
      const body = this.rng.next() < 0.5 ? this.sentence() : this.path();
      lines.push(`  <${tag}>${body}</${tag}>`);
    }
    lines.push(`</${outer}>`);
    return lines.join("\n");
  }

  code(): string {
    const f = this.identifier().replace(/-/g, "_");
    const a = this.word(this.rng.next() < 0.5 ? TECH : VOCABULARY);
    const b = this.word(this.rng.next() < 0.5 ? TECH : VOCABULARY);
    switch (this.rng.int(4)) {
      case 0:
        return `function ${f}(${a}, ${b}) {\n  const ${a}Value = ${a}.${b} ?? ${this.rng.int(100)};\n  if (!${a}Value) return null;\n  return ${a}Value + ${b};\n}`;
      case 1:
        return `def ${f}(${a}, ${b}=None):\n    """${this.sentence()}"""\n    for item in ${a}:\n        print(item, ${b})\n    return ${a}`;
      case 2:
        return `$ ${this.rng.pick(["ls", "cd", "cat", "git", "npm", "grep", "rm", "mkdir"])} -${this.rng.pick(["la", "r", "n", "f"])} ~/${this.word(TECH)}/${this.identifier()}.${this.rng.pick(["ts", "js", "json", "md", "py", "txt"])}`;
      default:
        return `<invoke name="${f}">\n<parameter name="${a}">${this.sentence()}</parameter>\n</invoke>`;
    }
  }
}

/** About `chars` characters of mixed text, the same for the same seed. */
export function generateCorpus(seed: number, chars: number): string {
  const w = new CorpusWriter(new Random(seed, "corpus"));
  while (w.size < chars) {
    const kind = w.pick(["p", "p", "p", "m", "j", "c", "p", "m", "x"]);
    if (kind === "p") w.push(w.paragraph());
    else if (kind === "m") w.push(w.markdown());
    else if (kind === "x") w.push(w.xml());
    else if (kind === "j") w.push(w.json());
    else w.push(w.code());
    w.push(w.pick(["\n\n", "\n", " ", "\n\n"]));
  }
  return w.text();
}
