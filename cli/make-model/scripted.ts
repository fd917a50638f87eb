// The scripted preset: a model that, by ordinary greedy decoding, answers ANY prompt ending in the generation
// prompt "]~b]ai\n<think>\n" with one fixed reply (reasoning, </think>, text, two tool calls, EOS).
// How: the reply is a chain of tokens in which every id occurs once; each token's lm_head row of its successor
// is aligned with its own (large, random) embedding, and attention/expert outputs are kept small, so the final
// hidden state points at the current token's embedding and the argmax is its successor. The prompt's last
// token ("\n") starts the chain. Some pieces split a tag ("<minimax:to" + "ol_call>") or a multi-byte UTF-8
// character (three byte tokens) so that API tests meet both.
import type { ModelShape } from "./presets.js";
import { byteToUnicode, type TrainedBpe } from "./tokenizer-trainer.js";
import { seededValues, type WeightDef } from "./weights.js";

const REASONING = "The user wants the weather in Paris and the time in CET. I will call both tools.";
const CONTENT = "Checking both now \u2600 for you.";

/** One step of the script: an added token's text, a special token, or one raw byte (byte-level token). */
type Piece = { added: string } | { special: string } | { byte: number };

const SUN_BYTES = [...new TextEncoder().encode("\u2600")];

const PIECES: Piece[] = [
  { added: "The user wants the weather in Paris and the time in CET." },
  { added: " I will call both tools.\n" },
  { special: "</think>" },
  { added: "\n\nChecking both now " },
  ...SUN_BYTES.map((byte) => ({ byte })),
  { added: " for you.\n" },
  { added: "<minimax:to" },
  { added: 'ol_call>\n<invoke name="get_weather">\n' },
  { added: '<parameter name="city">Paris</parameter>\n</invoke>\n' },
  { added: '<invoke name="get_time">\n<parameter name="zone">CET</parameter>\n' },
  { added: '<parameter name="utc_offset">' },
  { byte: "1".charCodeAt(0) },
  { added: "</parameter>\n</invoke>\n" },
  { special: "</minimax:tool_call>" },
];

// The demo preset (`cluster up --demo`): reasoning that ends, then visible text, then EOS, so that a client
// such as OpenClaw completes a turn and shows a reply. No tool calls: the demo cannot know a client's tools.
const DEMO_REASONING =
  "This is the studio-cluster demo model: generated weights that give one fixed reply. No real model runs here, so the reasoning ends.";
const DEMO_CONTENT =
  "Hello from studio-cluster! This demo model always gives this same reply; serve MiniMax M2.1 with `cluster up --model mlx-community/MiniMax-M2.1-4bit` for real answers.";

const DEMO_PIECES: Piece[] = [
  { added: "This is the studio-cluster demo model: generated weights that give one fixed reply." },
  { added: " No real model runs here, so the reasoning ends.\n" },
  { special: "</think>" },
  { added: "\n\nHello from studio-cluster!" },
  { added: " This demo model always gives this same reply;" },
  {
    added: " serve MiniMax M2.1 with `cluster up --model mlx-community/MiniMax-M2.1-4bit` for real answers.",
  },
];

/** The presets whose weights play a script, and their scripts. */
export type ScriptName = "scripted" | "demo";
const SCRIPTS: Record<ScriptName, Piece[]> = { scripted: PIECES, demo: DEMO_PIECES };

export function isScripted(preset: string): preset is ScriptName {
  return Object.hasOwn(SCRIPTS, preset);
}

function pieceText(p: Piece): string {
  if ("added" in p) return p.added;
  if ("special" in p) return p.special;
  return String.fromCharCode(p.byte);
}

/** The fixed reply, for tests to compare against what the API returns. */
export const SCRIPTED_REPLY = {
  reasoning: REASONING,
  content: CONTENT,
  toolCalls: [
    { name: "get_weather", arguments: { city: "Paris" } },
    { name: "get_time", arguments: { zone: "CET", utc_offset: 1 } },
  ],
  /** Everything the model emits before EOS, decoded. */
  text: `${REASONING}\n</think>\n\n${CONTENT}\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n</invoke>\n<invoke name="get_time">\n<parameter name="zone">CET</parameter>\n<parameter name="utc_offset">1</parameter>\n</invoke>\n</minimax:tool_call>`,
  /** The token-by-token pieces (byte pieces as latin-1 placeholders of their byte value). */
  pieces: PIECES.map(pieceText),
  /** Tokens the model emits after the script (EOS). */
  eos: "[e~[",
} as const;

/** The demo preset's fixed reply, as the API returns it. */
export const DEMO_REPLY = {
  reasoning: DEMO_REASONING,
  content: DEMO_CONTENT,
  pieces: DEMO_PIECES.map(pieceText),
} as const;

/** Non-special added tokens a scripted tokenizer needs. */
export function scriptAddedTokens(name: ScriptName): Array<{ content: string; special: false }> {
  return SCRIPTS[name].flatMap((p) => ("added" in p ? [{ content: p.added, special: false as const }] : []));
}

/** Non-special added tokens the scripted preset's tokenizer needs. */
export const SCRIPT_ADDED_TOKENS = scriptAddedTokens("scripted");

/** Token ids of the script, in order, then EOS; the id before it ("\n") is the prompt's last token. */
export function scriptTokenIds(
  idOf: (content: string) => number,
  bpe: TrainedBpe,
  name: ScriptName = "scripted",
): number[] {
  const bytes = byteToUnicode();
  const idOfByte = (b: number) => {
    const id = bpe.vocab.get(bytes[b]);
    if (id === undefined) throw new Error(`scripted: no byte token for 0x${b.toString(16)}`);
    return id;
  };
  const ids = SCRIPTS[name].map((p) =>
    "byte" in p ? idOfByte(p.byte) : idOf("added" in p ? p.added : p.special),
  );
  return [idOfByte(10), ...ids, idOf(SCRIPTED_REPLY.eos)];
}

/** Float values of every module of the scripted model. */
export function scriptedValues(
  shape: ModelShape,
  seed: number,
  idOf: (content: string) => number,
  bpe: TrainedBpe,
  name: ScriptName = "scripted",
): (def: WeightDef) => Float32Array {
  const chain = scriptTokenIds(idOf, bpe, name);
  if (new Set(chain).size !== chain.length) throw new Error("scripted: a token occurs twice in the script");
  const h = shape.hiddenSize;
  return (def) => {
    if (def.path.endsWith("norm.weight") || def.path.endsWith("layernorm.weight"))
      return seededValues({ ...def, mean: 1, std: 0 }, seed);
    // Attention and expert outputs stay small next to the embedding, so they cannot move the argmax.
    if (def.path.endsWith("o_proj") || def.path.endsWith("down_proj"))
      return seededValues({ ...def, std: def.std * 0.04 }, seed);
    if (def.path !== "lm_head") return seededValues(def, seed);
    const embedDef: WeightDef = { ...def, path: "model.embed_tokens", std: 1 };
    const embed = seededValues(embedDef, seed);
    const head = seededValues({ ...def, std: 0.01 }, seed);
    for (let i = 0; i + 1 < chain.length; i++) {
      const from = chain[i] * h;
      const to = chain[i + 1] * h;
      let norm = 0;
      for (let k = 0; k < h; k++) norm += embed[from + k] ** 2;
      norm = Math.sqrt(norm);
      for (let k = 0; k < h; k++) head[to + k] = embed[from + k] / norm;
    }
    return head;
  };
}
