// The trained byte-level BPE tokenizer and the chat template of generated checkpoints.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { beforeAll, describe, expect, it } from "vitest";
import { CHAT_TEMPLATE, GENERATION_PROMPT, SPECIAL_TOKENS } from "../../cli/make-model/chat-template.js";
import { generateCorpus } from "../../cli/make-model/corpus.js";
import { buildTokenizer } from "../../cli/make-model/index.js";
import { PRESETS } from "../../cli/make-model/presets.js";
import { SCRIPT_ADDED_TOKENS } from "../../cli/make-model/scripted.js";
import { trainBpe } from "../../cli/make-model/tokenizer-trainer.js";

const fixtures = join(import.meta.dirname, "..", "..", "shared", "fixtures");
const openclaw = join(fixtures, "openclaw");
const fixtureTemplate = join(fixtures, "minimax-m2-chat-template.jinja");

const load = (json: Record<string, unknown>) => new Tokenizer(json, { clean_up_tokenization_spaces: false });

const SAMPLES = [
  "Hello, world! It's 2026-11-21 and the time is 07:35.",
  "emoji 😀🚀👍🏽 and family 👨‍👩‍👧 and flags 🇫🇷",
  "中文文本，日本語のテキスト、한국어 텍스트",
  "combining: e\u0301 vs é; zero width\u200bjoin; RTL: שלום עולם",
  "  leading spaces, trailing spaces   \n\n\n\ttabs\r\nwindows lines\u00a0nbsp",
  '{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2.5e-3, null, true]}}',
  '<minimax:tool_call>\n<invoke name="f">\n<parameter name="x">1</parameter>\n</invoke>\n</minimax:tool_call>',
  "]~!b[]~b]system\nYou are helpful.[e~[\n]~b]ai\n<think>\nhmm\n</think>\n\nok[e~[",
  "\u0000\u0001\u007f bytes \uFFFD replacement and lone surrogates are not text",
  "x".repeat(3000),
];

describe("tiny tokenizer", () => {
  const built = buildTokenizer("tiny", 0);
  const tok = load(built.json);

  it("has the preset's vocabulary size, special tokens included", () => {
    expect(built.size).toBe(PRESETS.tiny.vocabSize);
    expect(tok.get_vocab().size).toBe(PRESETS.tiny.vocabSize);
  });

  it("round-trips arbitrary UTF-8 text exactly", () => {
    for (const text of SAMPLES) {
      const ids = tok.encode(text, { add_special_tokens: false }).ids;
      expect(ids.every((id: number) => id >= 0 && id < built.size)).toBe(true);
      expect(tok.decode(ids, { skip_special_tokens: false })).toBe(text);
    }
  });

  it("encodes each special token as one id", () => {
    for (const special of SPECIAL_TOKENS) {
      const ids = tok.encode(`a${special}b`, { add_special_tokens: false }).ids;
      expect(ids).toContain(built.idOf(special));
      expect(tok.decode([built.idOf(special)], { skip_special_tokens: false })).toBe(special);
    }
  });

  it("merges common words into single tokens", () => {
    expect(tok.encode(" the", { add_special_tokens: false }).ids).toHaveLength(1);
    const text = generateCorpus(99, 20000);
    const n = tok.encode(text, { add_special_tokens: false }).ids.length;
    expect(text.length / n).toBeGreaterThan(2);
  });

  it("is deterministic for a seed and changes with the seed", () => {
    const again = buildTokenizer("tiny", 0);
    expect(again.bpe.merges).toEqual(built.bpe.merges);
    const other = buildTokenizer("tiny", 1);
    expect(other.bpe.merges).not.toEqual(built.bpe.merges);
  });

  it("stops cleanly when the corpus runs out of pairs", () => {
    const bpe = trainBpe("ab ab ab", 100);
    expect(bpe.merges.length).toBeLessThan(100);
    expect(bpe.vocab.size).toBe(256 + bpe.merges.length);
  });
});

describe("bench/scripted tokenizer", () => {
  let built: ReturnType<typeof buildTokenizer>;
  let tok: Tokenizer;
  beforeAll(() => {
    built = buildTokenizer("scripted", 0);
    tok = load(built.json);
  });

  it("holds the script's pieces as added (non-special) tokens and round-trips text", () => {
    expect(built.size).toBe(PRESETS.scripted.vocabSize);
    for (const piece of SCRIPT_ADDED_TOKENS) expect(built.idOf(piece.content)).toBeGreaterThan(0);
    for (const text of SAMPLES) {
      const ids = tok.encode(text, { add_special_tokens: false }).ids;
      expect(tok.decode(ids, { skip_special_tokens: false })).toBe(text);
    }
  });

  const present = existsSync(openclaw);
  if (!present) console.warn(`tokenizer compression test skipped: ${openclaw} is not present`);
  it.skipIf(!present)("compresses OpenClaw's long system prompts to >= 3.5 characters per token", () => {
    for (const file of readdirSync(openclaw).filter((f) => f.endsWith(".json"))) {
      const body = JSON.parse(readFileSync(join(openclaw, file), "utf8"));
      const first = body.messages?.[0] ?? body.input?.[0];
      const content = first.content;
      const text: string =
        typeof content === "string" ? content : content.map((p: { text: string }) => p.text).join("");
      expect(text.length).toBeGreaterThan(20000);
      const n = tok.encode(text, { add_special_tokens: false }).ids.length;
      console.log(
        `${file}: ${text.length} characters, ${n} tokens, ${(text.length / n).toFixed(3)} characters/token`,
      );
      expect(text.length / n).toBeGreaterThanOrEqual(3.5);
    }
  });
});

const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: 'Weather for a city, "quoted" and ünïcode',
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
  {
    type: "function",
    function: { name: "ls", description: "List files", parameters: { type: "object", properties: {} } },
  },
];

const CONVERSATIONS: Record<string, Record<string, unknown>> = {
  "user only": { messages: [{ role: "user", content: "hi" }], add_generation_prompt: true },
  "no generation prompt": { messages: [{ role: "user", content: "hi" }], add_generation_prompt: false },
  "system + tools": {
    messages: [
      { role: "system", content: "You are a bot." },
      { role: "user", content: "weather?" },
    ],
    tools: TOOLS,
    add_generation_prompt: true,
  },
  "content parts": {
    messages: [
      {
        role: "system",
        content: [
          { type: "text", text: "Sys " },
          { type: "text", text: "parts" },
        ],
      },
      {
        role: "user",
        content: [
          { type: "text", text: "a" },
          { type: "image_url", image_url: {} },
          { type: "text", text: "b" },
        ],
      },
    ],
    add_generation_prompt: true,
  },
  "tool round trip": {
    messages: [
      { role: "system", content: "S" },
      { role: "user", content: "weather in Paris and the time?" },
      {
        role: "assistant",
        content: null,
        reasoning_content: "I should call tools.",
        tool_calls: [
          {
            id: "c1",
            type: "function",
            function: { name: "get_weather", arguments: { city: "Paris", days: 2, opts: { unit: "C" } } },
          },
          { id: "c2", type: "function", function: { name: "ls", arguments: {} } },
        ],
      },
      { role: "tool", tool_call_id: "c1", content: "sunny" },
      { role: "tool", tool_call_id: "c2", content: [{ type: "text", text: "a.txt" }] },
    ],
    tools: TOOLS,
    add_generation_prompt: true,
  },
  "reasoning dropped before the last user turn": {
    messages: [
      { role: "user", content: "one" },
      { role: "assistant", content: "first", reasoning_content: "old thoughts" },
      { role: "user", content: "two" },
      { role: "assistant", content: "second", reasoning_content: "new thoughts" },
    ],
    add_generation_prompt: false,
  },
  "reasoning inlined in content": {
    messages: [
      { role: "user", content: "q" },
      { role: "assistant", content: "<think>\nhidden\n</think>\n\nvisible" },
    ],
    add_generation_prompt: false,
  },
  "arguments as a JSON string": {
    messages: [
      { role: "user", content: "q" },
      {
        role: "assistant",
        content: "calling",
        tool_calls: [{ function: { name: "ls", arguments: '{"path": "."}' } }],
      },
      { role: "tool", content: "ok" },
    ],
    add_generation_prompt: true,
  },
  "dates and location": {
    messages: [
      { role: "system", content: "S", current_date: "2026-11-21", current_location: "Paris" },
      { role: "user", content: "hi" },
    ],
    add_generation_prompt: true,
  },
};

describe("chat template", () => {
  const ours = new Template(CHAT_TEMPLATE);

  it("renders the MiniMax layout with the generation prompt", () => {
    const text = ours.render(CONVERSATIONS["system + tools"]);
    expect(text.startsWith("]~!b[]~b]system\nYou are a bot.\n\n# Tools\n")).toBe(true);
    expect(text).toContain('<tool>{"name": "get_weather", ');
    expect(text).toContain("[e~[\n]~b]user\nweather?[e~[\n");
    expect(text.endsWith(GENERATION_PROMPT)).toBe(true);
  });

  it("renders tool calls as MiniMax XML and tool results as responses", () => {
    const text = ours.render(CONVERSATIONS["tool round trip"]);
    expect(text).toContain(
      ']~b]ai\n<think>\nI should call tools.\n</think>\n\n\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n<parameter name="opts">{"unit": "C"}</parameter>\n</invoke>\n<invoke name="ls">\n</invoke>\n</minimax:tool_call>\n[e~[\n',
    );
    expect(text).toContain("]~b]tool\n<response>sunny</response>\n<response>a.txt\n</response>[e~[\n");
  });

  it("treats a leading developer message as the system prompt", () => {
    const text = ours.render({
      messages: [
        { role: "developer", content: "Dev rules" },
        { role: "user", content: "x" },
      ],
    });
    expect(text.startsWith("]~!b[]~b]system\nDev rules[e~[\n]~b]user\nx")).toBe(true);
  });

  it("refuses a tool message without an earlier tool call", () => {
    expect(() =>
      ours.render({
        messages: [
          { role: "user", content: "x" },
          { role: "tool", content: "y" },
        ],
      }),
    ).toThrow(/tool message/);
  });

  const present = existsSync(fixtureTemplate);
  if (!present) console.warn(`chat template comparison skipped: ${fixtureTemplate} is not present`);
  it.skipIf(!present)("renders byte-for-byte what the public MiniMax-M2 template renders", () => {
    const reference = new Template(readFileSync(fixtureTemplate, "utf8"));
    for (const [name, input] of Object.entries(CONVERSATIONS)) {
      expect(ours.render(input), name).toBe(reference.render(input));
    }
  });

  it.skipIf(!present || !existsSync(openclaw))(
    "matches the public template on OpenClaw's chat requests",
    () => {
      const reference = new Template(readFileSync(fixtureTemplate, "utf8"));
      for (const file of ["chat-turn1-request.json", "chat-turn2-tool-result-request.json"]) {
        const body = JSON.parse(readFileSync(join(openclaw, file), "utf8"));
        // OpenAI sends arguments as JSON text; a server parses them before templating
        for (const m of body.messages)
          for (const call of m.tool_calls ?? [])
            call.function.arguments = JSON.parse(call.function.arguments);
        const input = { messages: body.messages, tools: body.tools, add_generation_prompt: true };
        expect(ours.render(input), file).toBe(reference.render(input));
      }
    },
  );
});
