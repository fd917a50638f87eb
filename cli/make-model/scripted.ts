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

// The scripted-tool preset (an OpenClaw agent turn): first a call to OpenClaw's `ls` tool, and then, once the
// prompt holds a tool result (the template's "<response>", an added token here), a text answer. The answer is a
// second chain from the same prompt end; layer 0's attention tells the two apart (see toolTurnValues).
const TOOL_REASONING = "The user wants the files listed. I will call the ls tool.";
const TOOL_CONTENT = "Listing the workspace.";
const TOOL_PIECES: Piece[] = [
  { added: "The user wants the files listed." },
  { added: " I will call the ls tool.\n" },
  { special: "</think>" },
  { added: "\n\nListing the workspace.\n" },
  { special: "<minimax:tool_call>" },
  { added: '\n<invoke name="ls">\n' },
  { added: '<parameter name="path">.</parameter>\n</invoke>\n' },
  { special: "</minimax:tool_call>" },
];
const ANSWER_REASONING = "The ls tool sent its listing back. I will report it.";
const ANSWER_CONTENT = "The ls tool ran and its listing came back: those are the files here.";
const ANSWER_PIECES: Piece[] = [
  { added: "The ls tool sent its listing back." },
  { added: " I will report it.\n" },
  { special: "</think>" },
  { added: "\n\nThe ls tool ran and its listing came back:" },
  { added: " those are the files here." },
];
/** The token that marks a tool result in the prompt (the chat template wraps each in <response>...</response>). */
export const TOOL_RESULT_MARKER = "<response>";

/** The presets whose weights play a script, and their scripts. */
export type ScriptName = "scripted" | "demo" | "scripted-tool";
const SCRIPTS: Record<ScriptName, Piece[]> = {
  scripted: PIECES,
  demo: DEMO_PIECES,
  "scripted-tool": TOOL_PIECES,
};

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

/** The scripted-tool preset's replies: the tool call, then the answer once a tool result is in the prompt. */
export const TOOL_TURN_REPLY = {
  call: {
    reasoning: TOOL_REASONING,
    content: TOOL_CONTENT,
    toolCalls: [{ name: "ls", arguments: { path: "." } }],
  },
  answer: { reasoning: ANSWER_REASONING, content: ANSWER_CONTENT },
} as const;

/** Non-special added tokens a scripted tokenizer needs. */
export function scriptAddedTokens(name: ScriptName): Array<{ content: string; special: false }> {
  const pieces = name === "scripted-tool" ? [...TOOL_PIECES, ...ANSWER_PIECES] : SCRIPTS[name];
  const added = pieces.flatMap((p) => ("added" in p ? [{ content: p.added, special: false as const }] : []));
  return name === "scripted-tool" ? [...added, { content: TOOL_RESULT_MARKER, special: false }] : added;
}

/** Non-special added tokens the scripted preset's tokenizer needs. */
export const SCRIPT_ADDED_TOKENS = scriptAddedTokens("scripted");

function chainIds(pieces: Piece[], idOf: (content: string) => number, bpe: TrainedBpe): number[] {
  const bytes = byteToUnicode();
  const idOfByte = (b: number) => {
    const id = bpe.vocab.get(bytes[b]);
    if (id === undefined) throw new Error(`scripted: no byte token for 0x${b.toString(16)}`);
    return id;
  };
  const ids = pieces.map((p) => ("byte" in p ? idOfByte(p.byte) : idOf("added" in p ? p.added : p.special)));
  return [idOfByte(10), ...ids, idOf(SCRIPTED_REPLY.eos)];
}

/** Token ids of the script, in order, then EOS; the id before it ("\n") is the prompt's last token. */
export function scriptTokenIds(
  idOf: (content: string) => number,
  bpe: TrainedBpe,
  name: ScriptName = "scripted",
): number[] {
  return chainIds(SCRIPTS[name], idOf, bpe);
}

/** Float values of every module of the scripted model. */
export function scriptedValues(
  shape: ModelShape,
  seed: number,
  idOf: (content: string) => number,
  bpe: TrainedBpe,
  name: ScriptName = "scripted",
): (def: WeightDef) => Float32Array {
  if (name === "scripted-tool") return toolTurnValues(shape, seed, idOf, bpe);
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

/**
 * The scripted-tool model. Two chains leave the prompt's last token "\n": the tool call, and the answer. The
 * tokens both chains pass through ("\n" and "</think>") are conditional: their successor depends on whether a
 * tool-result marker (M) is anywhere in the context. Layer 0 has one attention path and nothing else:
 * - k and v of head 0, dimension 32 (past the rotary half, so position does not matter), read M's embedding;
 *   the other k dimensions keep their random weights so that QK-norm leaves M's k large and the rest small;
 * - head 0's q, dimension 32, reads the conditional tokens' embeddings (and is orthogonal to every other
 *   generated token's); the QK-norm weights keep only dimension 32 (scaled up), so a conditional token
 *   attends to M and nearly nothing else, and no other generated token attends to it;
 * - o_proj writes 2 x M's unit embedding into the residual. A conditional token C then carries e_C + 2|e_M| e^_M.
 * The lm_head row of C's plain successor is e^_C (score ~|e|), that of its with-a-result successor
 * (e^_C + e^_M)/sqrt(2) (score ~3|e|/sqrt(2) with M in context, |e|/sqrt(2) without). A token both chains
 * lead to ("</think>", EOS) gets the sum of its predecessors' rows.
 */
function toolTurnValues(
  shape: ModelShape,
  seed: number,
  idOf: (content: string) => number,
  bpe: TrainedBpe,
): (def: WeightDef) => Float32Array {
  const first = chainIds(TOOL_PIECES, idOf, bpe);
  const second = chainIds(ANSWER_PIECES, idOf, bpe);
  const marker = idOf(TOOL_RESULT_MARKER);
  const eos = first[first.length - 1];
  const conditional = first.filter((id) => second.includes(id) && id !== eos);
  const all = [...first, ...second.filter((id) => !conditional.includes(id) && id !== eos), marker];
  if (new Set(all).size !== all.length) throw new Error("scripted-tool: a token occurs twice in the script");
  const h = shape.hiddenSize;
  const qWidth = shape.numHeads * shape.headDim;
  const at = shape.rotaryDim; // head 0's first dimension that RoPE leaves alone
  let embedCache: Float32Array | undefined;
  const embedRow = (def: WeightDef, id: number): Float32Array => {
    embedCache ??= seededValues(
      { ...def, path: "model.embed_tokens", shape: [shape.vocabSize, h], mean: 0, std: 1 },
      seed,
    );
    return embedCache.subarray(id * h, (id + 1) * h);
  };
  const unit = (def: WeightDef, id: number): Float32Array => {
    const e = embedRow(def, id);
    const norm = Math.sqrt(e.reduce((n, x) => n + x * x, 0));
    return e.map((x) => x / norm);
  };
  const layer0 = "model.layers.0.self_attn.";
  return (def) => {
    const p = def.path;
    if (p === `${layer0}q_norm.weight` || p === `${layer0}k_norm.weight`) {
      // Only dimension `at` of head 0 (and of the one kv head) scores; 2 x 2 = 4 scales its logit.
      const out = new Float32Array(def.shape[0]);
      out[at] = 2;
      return out;
    }
    if (p === `${layer0}q_proj`) {
      const out = seededValues(def, seed);
      const row = out.subarray(at * h, (at + 1) * h);
      row.fill(0);
      for (const id of conditional) {
        const e = unit(def, id);
        for (let k = 0; k < h; k++) row[k] += e[k];
      }
      // Every other token the model generates must not query the marker, however short the prompt (where
      // even a weak query would find it): the row is made orthogonal to their embeddings.
      const basis: Float32Array[] = [];
      for (const id of all) {
        if (conditional.includes(id) || id === eos || id === marker) continue;
        const v = Float32Array.from(unit(def, id));
        for (const b of basis) {
          const dot = v.reduce((n, x, k) => n + x * b[k], 0);
          for (let k = 0; k < h; k++) v[k] -= dot * b[k];
        }
        const norm = Math.sqrt(v.reduce((n, x) => n + x * x, 0));
        basis.push(v.map((x) => x / norm));
      }
      for (const b of basis) {
        const dot = row.reduce((n, x, k) => n + x * b[k], 0);
        for (let k = 0; k < h; k++) row[k] -= dot * b[k];
      }
      return out;
    }
    if (p === `${layer0}k_proj`) {
      const out = seededValues(def, seed);
      out.set(unit(def, marker), at * h);
      return out;
    }
    if (p === `${layer0}v_proj`) {
      const out = new Float32Array(def.shape[0] * h);
      out.set(unit(def, marker), at * h);
      return out;
    }
    if (p === `${layer0}o_proj`) {
      const out = new Float32Array(h * qWidth);
      const e = unit(def, marker);
      for (let r = 0; r < h; r++) out[r * qWidth + at] = 2 * e[r];
      return out;
    }
    if (p.endsWith("norm.weight") || p.endsWith("layernorm.weight"))
      return seededValues({ ...def, mean: 1, std: 0 }, seed);
    if (p.endsWith("o_proj") || p.endsWith("down_proj"))
      return seededValues({ ...def, std: def.std * 0.04 }, seed);
    if (p !== "lm_head") return seededValues(def, seed);
    const head = seededValues({ ...def, std: 0.01 }, seed);
    // A successor both chains reach ("</think>", EOS) gets the sum of its predecessors' directions.
    const rows = new Map<number, Float32Array>();
    const m = unit(def, marker);
    for (const [chain, withResult] of [
      [first, false],
      [second, true],
    ] as const) {
      for (let i = 0; i + 1 < chain.length; i++) {
        const from = chain[i];
        const e = unit(def, from);
        const dir = withResult && conditional.includes(from) ? e.map((x, k) => (x + m[k]) / Math.SQRT2) : e;
        const row = rows.get(chain[i + 1]) ?? new Float32Array(h);
        for (let k = 0; k < h; k++) row[k] += dir[k];
        rows.set(chain[i + 1], row);
      }
    }
    for (const [to, row] of rows) head.set(row, to * h);
    return head;
  };
}
