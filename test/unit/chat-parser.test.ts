import { describe, expect, it } from "vitest";
import type { TemplateTool } from "../../chat/conversation.js";
import { IncrementalDetokenizer } from "../../chat/detokenizer.js";
import { type ReplyEvent, ReplyParser } from "../../chat/reply-parser.js";
import { StopStringMatcher } from "../../chat/stop-strings.js";
import { convertArguments, convertParameter } from "../../chat/tool-arguments.js";
import { byteLevelTokenizer } from "../helpers/chat-byte-tokenizer.js";

const TOOLS: TemplateTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      parameters: {
        type: "object",
        properties: {
          city: { type: "string" },
          days: { type: "integer" },
          hourly: { type: "boolean" },
          scale: { type: "number" },
          opts: { type: "object" },
          list: { type: "array" },
          note: { type: ["string", "null"] },
        },
      },
    },
  },
  {
    type: "function",
    function: { name: "ls", parameters: { type: "object", properties: { path: { type: "string" } } } },
  },
];

const REPLY =
  "The user wants weather.\nI will call tools.\n</think>\n\nLet me check — é中😀.\n<minimax:tool_call>\n" +
  '<invoke name="get_weather">\n<parameter name="city">Paris 12</parameter>\n<parameter name="days">3</parameter>\n' +
  '<parameter name="hourly">true</parameter>\n<parameter name="scale">1.5</parameter>\n' +
  '<parameter name="opts">{"unit": "C"}</parameter>\n<parameter name="list">[1, "a"]</parameter>\n' +
  '<parameter name="note">null</parameter>\n</invoke>\n<invoke name="ls">\n<parameter name="path">\n/tmp/a b\n</parameter>\n</invoke>\n</minimax:tool_call>';

interface Collected {
  reasoning: string;
  text: string;
  calls: Array<{ name: string; arguments: unknown }>;
}

function collect(events: ReplyEvent[], into: Collected): void {
  for (const e of events) {
    if (e.type === "reasoning") into.reasoning += e.delta;
    else if (e.type === "text") into.text += e.delta;
    else into.calls.push({ name: e.name, arguments: JSON.parse(e.arguments) });
  }
}

function parseInPieces(pieces: string[]): Collected {
  const parser = new ReplyParser(TOOLS);
  const out: Collected = { reasoning: "", text: "", calls: [] };
  for (const piece of pieces) collect(parser.push(piece), out);
  collect(parser.finish(), out);
  return out;
}

const EXPECTED: Collected = {
  reasoning: "The user wants weather.\nI will call tools.",
  text: "Let me check — é中😀.",
  calls: [
    {
      name: "get_weather",
      arguments: {
        city: "Paris 12",
        days: 3,
        hourly: true,
        scale: 1.5,
        opts: { unit: "C" },
        list: [1, "a"],
        note: null,
      },
    },
    { name: "ls", arguments: { path: "/tmp/a b" } },
  ],
};

describe("ReplyParser", () => {
  it("separates reasoning, text and tool calls in one piece", () => {
    expect(parseInPieces([REPLY])).toEqual(EXPECTED);
  });

  it("gives the same result when the reply is split at every offset", () => {
    for (let at = 1; at < REPLY.length; at++) {
      expect(parseInPieces([REPLY.slice(0, at), REPLY.slice(at)]), `split at ${at}`).toEqual(EXPECTED);
    }
  });

  it("gives the same result one character at a time, and never shows markup", () => {
    const parser = new ReplyParser(TOOLS);
    const out: Collected = { reasoning: "", text: "", calls: [] };
    for (const ch of REPLY) {
      const events = parser.push(ch);
      for (const e of events)
        if (e.type !== "tool_call") expect(e.delta).not.toMatch(/<\/?(think|minimax|invoke|parameter)/);
      collect(events, out);
    }
    collect(parser.finish(), out);
    expect(out).toEqual(EXPECTED);
  });

  it("keeps a '<' that is ordinary text and text after a tool block", () => {
    const out = parseInPieces(["r</think>a < b <x> c", "\n<minimax:tool_call>\n</minimax:tool_call>tail"]);
    expect(out).toEqual({ reasoning: "r", text: "a < b <x> ctail", calls: [] });
  });

  it("swallows a repeated <think> at the start of the reply", () => {
    expect(parseInPieces(["<thi", "nk>\nabc</think>\n\nhi"])).toEqual({
      reasoning: "abc",
      text: "hi",
      calls: [],
    });
  });

  it("reports reasoning state and drops a tool call cut off by the token limit", () => {
    const parser = new ReplyParser(TOOLS);
    expect(parser.inReasoning).toBe(true);
    parser.push('x</think>ok\n<minimax:tool_call>\n<invoke name="ls">\n<parameter name="path">/t');
    expect(parser.inReasoning).toBe(false);
    expect(parser.finish()).toEqual([]);
  });

  it("drops a tool tag cut short and then closed, stray closers, and a tag start the reply ends in", () => {
    // What a model cut short in its tool tag (the mask forbade the call) wrote, at every split offset.
    const cases: Array<[string, string]> = [
      ["r</think>Checking.\n<minimax:to</minimax:tool_call>", "Checking."],
      ["r</think>Checking.\n<minimax:to</minimax:tool_call>\nMore.", "Checking.\n\nMore."],
      ["r</think>a </minimax:tool_call>b</think>c", "a bc"],
      ["r</think>Checking.\n<minimax:tox", "Checking.\n<minimax:tox"],
      ["r</think>Checking.\n<minimax:to", "Checking."],
      ["r</think>a <m", "a "],
      ["r</think>a < b </x> <", "a < b </x> <"],
    ];
    for (const [reply, text] of cases)
      for (let at = 1; at < reply.length; at++) {
        const out = parseInPieces([reply.slice(0, at), reply.slice(at)]);
        expect(out, `${JSON.stringify(reply)} split at ${at}`).toEqual({ reasoning: "r", text, calls: [] });
      }
  });

  it("gives arguments {} for a call without parameters", () => {
    const out = parseInPieces(['</think><minimax:tool_call><invoke name="ls"></invoke></minimax:tool_call>']);
    expect(out.calls).toEqual([{ name: "ls", arguments: {} }]);
  });
});

describe("tool argument conversion by JSON schema", () => {
  it("converts each declared type and keeps strings raw", () => {
    expect(convertParameter("42", { type: "integer" })).toBe(42);
    expect(convertParameter("4.5", { type: "integer" })).toBe("4.5");
    expect(convertParameter(" 4.5 ", { type: "number" })).toBe(4.5);
    expect(convertParameter("False", { type: "boolean" })).toBe(false);
    expect(convertParameter("null", { type: "null" })).toBeNull();
    expect(convertParameter('{"a":[1]}', { type: "object" })).toEqual({ a: [1] });
    expect(convertParameter("[1,2]", { type: "array" })).toEqual([1, 2]);
    expect(convertParameter("[1,2]", { type: "string" })).toBe("[1,2]");
    expect(convertParameter("007", { type: "string" })).toBe("007");
    expect(convertParameter("5", { anyOf: [{ type: "string" }, { type: "integer" }] })).toBe(5);
    expect(convertParameter("auto", { enum: ["auto", "sandbox"] })).toBe("auto");
    expect(convertParameter("{bad", { type: "object" })).toBe("{bad");
    expect(convertParameter("12", undefined)).toBe("12");
  });

  it("builds the arguments object from the function's parameters schema", () => {
    const schema = { type: "object", properties: { n: { type: "integer" }, s: { type: "string" } } };
    expect(
      convertArguments(
        [
          ["n", "7"],
          ["s", "7"],
          ["extra", "x"],
        ],
        schema,
      ),
    ).toEqual({ n: 7, s: "7", extra: "x" });
  });
});

describe("IncrementalDetokenizer", () => {
  const tokenizer = byteLevelTokenizer();

  it("never emits a broken character when characters span several byte tokens", () => {
    const text = "héllo 中文 😀 done</think>";
    const ids = tokenizer.encode(text);
    expect(ids.length).toBeGreaterThan([...text].length); // multi-byte characters really are split
    const detok = new IncrementalDetokenizer(tokenizer);
    let out = "";
    for (const id of ids) {
      const delta = detok.push(id);
      expect(delta).not.toContain("\uFFFD");
      out += delta;
    }
    out += detok.flush();
    expect(out).toBe(text);
  });

  it("flushes an incomplete character at the very end instead of losing it", () => {
    const ids = tokenizer.encode("a😀").slice(0, 3); // "a" + 2 of the emoji's 4 bytes
    const detok = new IncrementalDetokenizer(tokenizer);
    const out = ids.map((id) => detok.push(id)).join("");
    expect(out).toBe("a");
    expect(detok.flush()).toContain("\uFFFD");
  });

  it("keeps long replies exact (window trimming)", () => {
    const text = "ünïcödé ".repeat(50);
    const detok = new IncrementalDetokenizer(tokenizer);
    const out =
      tokenizer
        .encode(text)
        .map((id) => detok.push(id))
        .join("") + detok.flush();
    expect(out).toBe(text);
  });
});

describe("detokenizer + parser, one byte token at a time", () => {
  const tokenizer = byteLevelTokenizer();

  function run(ids: number[]): Collected {
    const detok = new IncrementalDetokenizer(tokenizer);
    const parser = new ReplyParser(TOOLS);
    const out: Collected = { reasoning: "", text: "", calls: [] };
    for (const id of ids) collect(parser.push(detok.push(id)), out);
    collect(parser.push(detok.flush()), out);
    collect(parser.finish(), out);
    return out;
  }

  it("parses the reply when every tag and every multi-byte character is split into bytes", () => {
    // Character by character, so added tokens never match: tags arrive as single bytes.
    const ids = [...REPLY].flatMap((ch) => tokenizer.encode(ch));
    expect(ids.length).toBe(new TextEncoder().encode(REPLY).length);
    expect(run(ids)).toEqual(EXPECTED);
  });

  it("parses the reply when tags are whole special tokens", () => {
    expect(run(tokenizer.encode(REPLY))).toEqual(EXPECTED);
  });
});

describe("StopStringMatcher", () => {
  it("stops at a stop string split across pieces and holds back possible starts", () => {
    const m = new StopStringMatcher(["STOP", "\n\n"]);
    expect(m.push("abc S")).toBe("abc ");
    expect(m.push("TO")).toBe("");
    expect(m.push("P and more")).toBe("");
    expect(m.hasStopped).toBe(true);
  });

  it("releases held text when no stop string follows", () => {
    const m = new StopStringMatcher(["STOP"]);
    expect(m.push("xST")).toBe("x");
    expect(m.push("ay")).toBe("STay");
    expect(m.push("S")).toBe("");
    expect(m.flush()).toBe("S");
  });
});
