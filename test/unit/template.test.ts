// The fixture template (a public MiniMax-M2 template) rendered through our conversation mapping must give
// exactly the text Python's Jinja2 gives under transformers, written out here by hand from docs/model.md's format.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { fromChatCompletions, fromResponses } from "../../chat/conversation.js";
import { ChatTemplate } from "../../chat/template.js";
import { makeModel } from "../../cli/make-model/index.js";

const FIXTURE = join(process.cwd(), "..", "shared", "fixtures", "minimax-m2-chat-template.jinja");
const haveFixture = existsSync(FIXTURE);
if (!haveFixture) console.warn(`template.test: skipping fixture checks, ${FIXTURE} is absent`);

const SYSTEM = "You are a test assistant.";
const TOOL = {
  name: "get_weather",
  description: "Weather for a city",
  parameters: {
    type: "object",
    properties: { city: { type: "string" }, days: { type: "integer" } },
    required: ["city"],
  },
};

const CHAT_MESSAGES = [
  { role: "system", content: SYSTEM },
  { role: "user", content: "What is the weather in Paris?" },
  {
    role: "assistant",
    content: "Checking.",
    reasoning_content: "The user wants weather.",
    tool_calls: [
      {
        id: "call_1",
        type: "function",
        function: { name: "get_weather", arguments: '{"city":"Paris","days":2}' },
      },
    ],
  },
  { role: "tool", tool_call_id: "call_1", content: '{"temp": 21}' },
];

const RESPONSES_INPUT = [
  { type: "message", role: "user", content: [{ type: "input_text", text: "What is the weather in Paris?" }] },
  {
    type: "reasoning",
    id: "rs_1",
    summary: [],
    content: [{ type: "reasoning_text", text: "The user wants weather." }],
  },
  {
    type: "message",
    role: "assistant",
    content: [{ type: "output_text", text: "Checking.", annotations: [] }],
  },
  { type: "function_call", call_id: "call_1", name: "get_weather", arguments: '{"city":"Paris","days":2}' },
  { type: "function_call_output", call_id: "call_1", output: '{"temp": 21}' },
];

// Written by hand from docs/model.md's chat format. Two quirks of this template, which Python renders the same way:
// a newline between </minimax:tool_call> and [e~[ (a comment tag follows it), and the tool JSON in
// json.dumps style (", " and ": " separators, keys in the order given).
const EXPECTED =
  "]~!b[]~b]system\nYou are a test assistant.\n\n# Tools\n" +
  "You may call one or more tools to assist with the user query.\nHere are the tools available in JSONSchema format:\n\n" +
  "<tools>\n" +
  '<tool>{"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": ' +
  '{"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}</tool>\n' +
  "</tools>\n\n" +
  "When making tool calls, use XML format to invoke tools and pass parameters:\n\n" +
  '<minimax:tool_call>\n<invoke name="tool-name-1">\n<parameter name="param-key-1">param-value-1</parameter>\n' +
  '<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n</minimax:tool_call>[e~[\n' +
  "]~b]user\nWhat is the weather in Paris?[e~[\n" +
  "]~b]ai\n<think>\nThe user wants weather.\n</think>\n\nChecking.\n<minimax:tool_call>\n" +
  '<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n<parameter name="days">2</parameter>\n' +
  "</invoke>\n</minimax:tool_call>\n[e~[\n" +
  ']~b]tool\n<response>{"temp": 21}</response>[e~[\n' +
  "]~b]ai\n<think>\n";

describe.skipIf(!haveFixture)("the fixture MiniMax-M2 template", () => {
  const template = haveFixture ? new ChatTemplate(readFileSync(FIXTURE, "utf8")) : undefined;

  it("renders a chat-completions tool conversation exactly", () => {
    const conversation = fromChatCompletions(CHAT_MESSAGES, [{ type: "function", function: TOOL }]);
    expect(template!.render(conversation, { addGenerationPrompt: true })).toBe(EXPECTED);
  });

  it("renders the same conversation given as Responses items exactly", () => {
    const conversation = fromResponses(SYSTEM, RESPONSES_INPUT, [{ type: "function", ...TOOL }]);
    expect(template!.render(conversation, { addGenerationPrompt: true })).toBe(EXPECTED);
  });

  it("drops reasoning of turns before the last user message and renders null content as nothing", () => {
    const conversation = fromChatCompletions(
      [
        { role: "developer", content: "Sys." },
        { role: "user", content: "a" },
        { role: "assistant", content: null, reasoning_content: "old", tool_calls: [] },
        { role: "user", content: [{ type: "text", text: "b" }] },
      ],
      undefined,
    );
    expect(template!.render(conversation, { addGenerationPrompt: false })).toBe(
      "]~!b[]~b]system\nSys.[e~[\n]~b]user\na[e~[\n]~b]ai\n[e~[\n]~b]user\nb[e~[\n",
    );
  });

  it("reports a tool result without a preceding call as a bad request naming messages", () => {
    // With an id, the conversation mapping already refuses it (no earlier call has that id).
    expect(() => fromChatCompletions([{ role: "tool", tool_call_id: "x", content: "r" }], undefined)).toThrow(
      /messages\[0\]\.tool_call_id: no earlier tool call has the id "x"/,
    );
    const conversation = fromChatCompletions([{ role: "tool", content: "r" }], undefined);
    expect(() => template!.render(conversation, { addGenerationPrompt: true })).toThrow(
      /chat template.*tool role/,
    );
  });
});

describe("conversation mapping", () => {
  it("refuses images with a clear message naming the part", () => {
    expect(() =>
      fromResponses(
        undefined,
        [{ role: "user", content: [{ type: "input_image", image_url: "data:image/png;base64,AA" }] }],
        [],
      ),
    ).toThrow(/input\[0\]\.content\[0\].*text-only/);
  });

  it("refuses tool-call arguments that are not a JSON object", () => {
    expect(() =>
      fromChatCompletions(
        [
          {
            role: "assistant",
            content: "",
            tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "[1]" } }],
          },
        ],
        [],
      ),
    ).toThrow(/arguments must encode a JSON object/);
  });

  it("takes a plain string input and instructions", () => {
    expect(fromResponses("be brief", "hi", undefined).messages).toEqual([
      { role: "system", content: "be brief" },
      { role: "user", content: "hi" },
    ]);
  });
});

describe("the generated model's own template", () => {
  const dir = mkdtempSync(join(tmpdir(), "template-test-"));
  beforeAll(async () => {
    await makeModel({ dir, preset: "tiny" });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("renders the same conversation to the same string, and its tokenizer round-trips the prompt", () => {
    const formatter = ChatFormatter.forModelDir(dir);
    const prompt = formatter.render(
      fromChatCompletions(CHAT_MESSAGES, [{ type: "function", function: TOOL }]),
    );
    expect(prompt).toBe(EXPECTED);
    const ids = formatter.encode(prompt);
    expect(formatter.tokenizer.decode(ids)).toBe(prompt);
    // The special tokens are single tokens (the scheduler stops on the end-of-turn id).
    expect(ids[0]).toBe(formatter.tokenizer.encode("]~!b[")[0]);
    expect(formatter.tokenizer.encode("[e~[")).toEqual([formatter.stopTokenIds[0]]);
  });
});
