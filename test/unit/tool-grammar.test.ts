// The tool-call grammar the last stage masks by (common/tool-grammar.ts), on the real tokenizer of a generated
// model: the scripted reply passes it, and random walks that only ever pick tokens its masks allow always give
// replies that obey tool_choice none / required / a named function and parallel_tool_calls: false, as the
// reply parser reads them.
import { Ajv } from "ajv";
import { beforeAll, describe, expect, it } from "vitest";
import { type ReplyConstraints, toolConstraintSpec } from "../../chat/constraints.js";
import type { TemplateTool } from "../../chat/conversation.js";
import { type ReplyEvent, ReplyParser } from "../../chat/reply-parser.js";
import { ModelTokenizer } from "../../chat/tokenizer.js";
import { SCRIPTED_REPLY } from "../../cli/make-model/scripted.js";
import { loadVocabulary, type TokenVocabulary } from "../../common/token-vocabulary.js";
import {
  type TokenMask,
  ToolConstraint,
  type ToolConstraintSpec,
  ToolGrammar,
} from "../../common/tool-grammar.js";
import { ReplyConstraint } from "../../node-agent/reply-constraint.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const TOOLS: TemplateTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
  {
    type: "function",
    function: {
      name: "get_time",
      parameters: {
        type: "object",
        properties: { zone: { type: "string" }, utc_offset: { type: "integer" } },
        required: ["zone"],
      },
    },
  },
  { type: "function", function: { name: "ls", parameters: { type: "object", properties: {} } } },
];

function spec(over: Partial<ReplyConstraints>, tools = TOOLS): ToolConstraintSpec {
  return toolConstraintSpec(
    { toolChoice: { mode: "auto" }, parallelToolCalls: true, responseFormat: { type: "text" }, ...over },
    tools,
  );
}

function allows(mask: TokenMask | undefined, id: number): boolean {
  if (!mask) return true;
  return "allow" in mask ? mask.allow.includes(id) : !mask.ban.includes(id);
}

let tokenizer: ModelTokenizer;
let vocab: TokenVocabulary;
beforeAll(async () => {
  const dir = await ensureModel("tiny-4bit", "tiny");
  tokenizer = ModelTokenizer.fromModelDir(dir);
  vocab = loadVocabulary(dir);
}, 120_000);

/** A seeded stand-in for a model: picks among the ids a mask allows, favouring tags so replies end. */
async function randomWalk(s: ToolConstraintSpec, seed: number, steps = 600): Promise<number[]> {
  let x = seed * 2654435761 + 1;
  const rand = () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
  // The whole reply's constraint, as the last stage keeps it: JSON parameter values take xgrammar's masks.
  const constraint = new ReplyConstraint(new ToolConstraint(new ToolGrammar(s), vocab), vocab, s);
  const tagIds = vocab.bytes.flatMap((b, id) => (b.startsWith("<") || b.startsWith("</") ? [id] : []));
  const out: number[] = [];
  for (let n = 0; n < steps; n++) {
    const mask = await constraint.mask();
    const banned = new Set(mask && "ban" in mask ? mask.ban : []);
    const allowed =
      mask && "allow" in mask
        ? [...mask.allow]
        : vocab.bytes.map((_, id) => id).filter((id) => !banned.has(id));
    expect(allowed.length).toBeGreaterThan(0);
    const favoured = allowed.filter((id) => tagIds.includes(id) || vocab.stopIds.includes(id));
    const pool = favoured.length > 0 && rand() < 0.4 ? favoured : allowed;
    const token = pool[Math.floor(rand() * pool.length)];
    out.push(token);
    constraint.accept(token);
    expect(constraint.alive).toBe(true);
    if (vocab.stopIds.includes(token)) break;
  }
  constraint.dispose();
  return out;
}

function parse(ids: number[], tools = TOOLS): { events: ReplyEvent[]; ended: boolean } {
  const ended = vocab.stopIds.includes(ids[ids.length - 1]);
  const text = tokenizer.decode(ended ? ids.slice(0, -1) : ids);
  const parser = new ReplyParser(tools);
  return { events: [...parser.push(text), ...parser.finish()], ended };
}

const calls = (events: ReplyEvent[]) => events.filter((e) => e.type === "tool_call");

describe("token vocabulary", () => {
  it("gives each token's bytes as the tokenizer decodes them", () => {
    const text = 'Hello <think>wörld</think>\n<minimax:tool_call>\n<invoke name="ls">\n';
    const ids = tokenizer.encode(text);
    const bytes = ids.map((id) => vocab.bytes[id]).join("");
    expect(Buffer.from(bytes, "latin1").toString("utf8")).toBe(text);
    expect(vocab.stopIds).toContain(tokenizer.stopTokenIds[0]);
  });
});

describe("tool grammar", () => {
  it("lets the scripted reply through under auto with its tools, token by token", async () => {
    // Its utc_offset is an integer: a JSON value, masked by xgrammar within the whole reply's constraint.
    const s = spec({});
    const constraint = new ReplyConstraint(new ToolConstraint(new ToolGrammar(s), vocab), vocab, s);
    for (const id of [...tokenizer.encode(SCRIPTED_REPLY.text), tokenizer.stopTokenIds[0]]) {
      expect(allows(await constraint.mask(), id)).toBe(true);
      constraint.accept(id);
      expect(constraint.alive).toBe(true);
    }
  });

  it("masks the tool block under none, and without tools, however it is spelled", () => {
    const toolOpen = tokenizer.encode("<minimax:tool_call>");
    expect(toolOpen).toHaveLength(1);
    for (const s of [spec({ toolChoice: { mode: "none" } }), spec({}, [])]) {
      const constraint = new ToolConstraint(new ToolGrammar(s), vocab);
      for (const id of tokenizer.encode("thinking</think>\n\nSome text ")) constraint.accept(id);
      expect(allows(constraint.mask(), toolOpen[0])).toBe(false);
      // Spelled byte by byte, the last byte is what the mask refuses.
      const grammar = new ToolGrammar(s);
      const state = grammar.feed(grammar.start, "x</think>\n<minimax:tool_call");
      expect(state).not.toBeNull();
      expect(grammar.feed(state, ">")).toBeNull();
    }
  });

  it("a token that stops inside the tool tag commits the reply: to its end where no block may open", () => {
    for (const s of [spec({ toolChoice: { mode: "none" } }), spec({}, [])]) {
      const g = new ToolGrammar(s);
      const text = g.feed(g.start, "r</think>\n\nSome text ");
      for (const cut of [g.token(text, "<minimax:to"), g.token(g.token(text, "<mini"), "max:")]) {
        expect(cut).not.toBeNull();
        const state = cut as NonNullable<typeof cut>;
        // Only the end of turn, or the tag's closer and then the end: nothing more for the text.
        expect(g.acceptsEnd(state)).toBe(true);
        for (const more of ["x", "ol_call>", "\n", " text"]) expect(g.token(state, more)).toBeNull();
        const closed = g.token(state, "</minimax:tool_call>");
        expect(closed).not.toBeNull();
        expect(g.acceptsEnd(closed as NonNullable<typeof closed>)).toBe(true);
        expect(g.token(closed, "more text")).toBeNull();
      }
      // Short of `<minimax:`, it is text: "<m" + "eta>" and "<minimax" + "ed" go on as text.
      expect(g.token(g.token(g.token(text, "<m"), "eta>"), " more")).not.toBeNull();
      expect(g.token(g.token(g.token(text, "<minimax"), "ed"), " more")).not.toBeNull();
      // The mask after "<minimax:" (however the tokenizer splits it) allows only the closer's bytes and the end.
      const constraint = new ToolConstraint(g, vocab);
      for (const id of tokenizer.encode("thinking</think>\n\nSome text <minimax:")) constraint.accept(id);
      const mask = constraint.mask();
      expect(mask && "allow" in mask).toBe(true);
      const allowed = mask && "allow" in mask ? [...mask.allow] : [];
      expect(allowed).toEqual(expect.arrayContaining(vocab.stopIds));
      for (const id of allowed)
        if (!vocab.stopIds.includes(id))
          expect("</minimax:tool_call>".startsWith(vocab.bytes[id])).toBe(true);
    }
  });

  it("where a block may open, a token that stops inside the tool tag commits to the tag or to the end", () => {
    const g = new ToolGrammar(spec({}));
    const text = g.feed(g.start, "r</think>\n\nSome text ");
    const cut = g.token(text, "<minimax:to");
    expect(cut).not.toBeNull();
    expect(g.acceptsEnd(cut as NonNullable<typeof cut>)).toBe(true);
    for (const more of ["x", "\n", " text"]) expect(g.token(cut, more)).toBeNull();
    expect(g.token(g.token(cut, "</minimax:tool_call>"), "more text")).toBeNull();
    expect(g.token(cut, 'ol_call>\n<invoke name="ls">')).not.toBeNull();
    expect(g.token(g.token(cut, "ol_"), 'call>\n<invoke name="ls">')).not.toBeNull();
    // Still only declared tools: the tag completed is the tool block.
    expect(g.token(cut, 'ol_call>\n<invoke name="rm">')).toBeNull();
    // Text that only starts like the tag does not commit: "<m" + "eta>" stays text, and the reply may end.
    const meta = g.token(g.token(text, "<m"), "eta>");
    expect(meta).not.toBeNull();
    expect(g.acceptsEnd(meta as NonNullable<typeof meta>)).toBe(true);
  });

  it("under none, the scripted model's cut tag ends the reply and leaves nothing in its text", async () => {
    const dir = await ensureModel("scripted-4bit", "scripted");
    const scripted = ModelTokenizer.fromModelDir(dir);
    const words = loadVocabulary(dir);
    const constraint = new ToolConstraint(new ToolGrammar(spec({ toolChoice: { mode: "none" } })), words);
    // The script's text up to its "<minimax:to" token (an added token of that tokenizer), then that token.
    const cut = words.bytes.indexOf("<minimax:to");
    const closer = words.bytes.indexOf("</minimax:tool_call>");
    const rest = words.bytes.indexOf('ol_call>\n<invoke name="get_weather">\n');
    expect(Math.min(cut, closer, rest)).toBeGreaterThan(0);
    const before = scripted.encode(SCRIPTED_REPLY.text.slice(0, SCRIPTED_REPLY.text.indexOf("<minimax:")));
    for (const id of [...before, cut]) {
      expect(allows(constraint.mask(), id)).toBe(true);
      constraint.accept(id);
    }
    // What main let through here (its closer, then the end) is all that is left, and the parser drops it.
    expect(allows(constraint.mask(), rest)).toBe(false);
    expect(allows(constraint.mask(), closer)).toBe(true);
    constraint.accept(closer);
    expect(allows(constraint.mask(), scripted.stopTokenIds[0])).toBe(true);
    const parser = new ReplyParser(TOOLS);
    const text = [...parser.push(scripted.decode([...before, cut, closer])), ...parser.finish()]
      .map((e) => (e.type === "text" ? e.delta : ""))
      .join("");
    expect(text).toBe(SCRIPTED_REPLY.content);
  }, 120_000);

  it("refuses an undeclared function name and a second invoke when parallel_tool_calls is false", () => {
    const g = new ToolGrammar(spec({ parallelToolCalls: false }));
    const head = g.feed(g.start, 'r</think>\n<minimax:tool_call>\n<invoke name="');
    expect(g.feed(head, 'rm">')).toBeNull();
    const one = g.feed(head, 'ls">\n</invoke>\n');
    expect(one).not.toBeNull();
    expect(g.feed(one, '<invoke name="')).toBeNull();
    expect(g.feed(one, "</minimax:tool_call>")).not.toBeNull();
    // A required parameter must come before </invoke>; an undeclared one never.
    const weather = g.feed(head, 'get_weather">\n');
    expect(g.feed(weather, "</invoke>")).toBeNull();
    expect(g.feed(weather, '<parameter name="town">')).toBeNull();
    expect(g.feed(weather, '<parameter name="city">Paris</parameter>\n</invoke>')).not.toBeNull();
  });

  const seeds = Array.from({ length: 40 }, (_, i) => i + 1);

  it("random walks under none never call a tool, and leave no tool markup in the text", async () => {
    for (const seed of seeds) {
      const { events } = parse(await randomWalk(spec({ toolChoice: { mode: "none" } }), seed));
      expect(calls(events)).toEqual([]);
      for (const e of events) if (e.type === "text") expect(e.delta).not.toMatch(/<\/?minimax|<\/think>/);
    }
  });

  it("random walks under a named function call only it, once when parallel is off", async () => {
    let ended = 0;
    for (const seed of seeds) {
      const s = spec({ toolChoice: { mode: "function", name: "ls" }, parallelToolCalls: false });
      const reply = parse(await randomWalk(s, seed));
      if (!reply.ended) continue;
      ended++;
      const made = calls(reply.events);
      expect(made).toHaveLength(1);
      expect(made[0]).toMatchObject({ name: "ls", arguments: "{}" });
    }
    expect(ended).toBeGreaterThan(seeds.length / 2);
  });

  it("random walks under required end only after a call to a declared tool with its required arguments", async () => {
    let ended = 0;
    for (const seed of seeds) {
      const reply = parse(await randomWalk(spec({ toolChoice: { mode: "required" } }), seed));
      if (!reply.ended) continue;
      ended++;
      const made = calls(reply.events);
      expect(made.length).toBeGreaterThan(0);
      for (const call of made) {
        expect(["get_weather", "get_time", "ls"]).toContain(call.type === "tool_call" && call.name);
        const args = JSON.parse(call.type === "tool_call" ? call.arguments : "{}");
        if (call.type === "tool_call" && call.name === "get_weather") expect(args).toHaveProperty("city");
        if (call.type === "tool_call" && call.name === "get_time") expect(args).toHaveProperty("zone");
      }
    }
    // Free-text argument values may run past the walk's length; enough walks end to make the point.
    expect(ended).toBeGreaterThan(5);
  });

  it("random walks under required give arguments that validate against each tool's schema", async () => {
    const parameters = {
      type: "object",
      properties: {
        count: { type: "integer", minimum: -3, maximum: 40 },
        flag: { type: "boolean" },
        color: { enum: ["red", "dark blue", "grün"] },
        name: { type: "string", minLength: 2, maxLength: 3 },
        list: { type: "array", items: { type: "number" }, maxItems: 2 },
        nothing: { type: "null" },
      },
      required: ["count", "color", "name"],
      additionalProperties: false,
    };
    const tools: TemplateTool[] = [{ type: "function", function: { name: "typed", parameters } }];
    const ajv = new Ajv({ strict: false });
    let ended = 0;
    for (const seed of seeds) {
      const reply = parse(
        await randomWalk(spec({ toolChoice: { mode: "required" } }, tools), seed, 800),
        tools,
      );
      if (!reply.ended) continue;
      ended++;
      for (const call of calls(reply.events)) {
        const args = JSON.parse(call.type === "tool_call" ? call.arguments : "{}");
        expect(
          ajv.validate(parameters, args),
          `seed ${seed}: ${JSON.stringify(args)} ${ajv.errorsText()}`,
        ).toBe(true);
      }
    }
    expect(ended).toBeGreaterThan(seeds.length / 2);
  });
});
