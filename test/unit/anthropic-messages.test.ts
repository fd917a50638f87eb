// The Anthropic request → template conversation mapping (chat/anthropic-messages.ts) and the Anthropic error
// shapes (api/anthropic-errors.ts), without a server: block order, turn splits, tool_choice, refusals naming
// Anthropic's field paths, and the status each server error becomes.
import { describe, expect, it } from "vitest";
import { fromApiError, toAnthropicError } from "../../api/anthropic-errors.js";
import { apiError, contextLengthError } from "../../api/errors.js";
import { anthropicToolChoice, fromAnthropicMessages } from "../../chat/anthropic-messages.js";
import { fromChatCompletions } from "../../chat/conversation.js";
import { RequestError } from "../../chat/request-error.js";
import { ClusterError } from "../../common/errors.js";

const WEATHER = {
  name: "get_weather",
  description: "Weather for a city",
  input_schema: { type: "object", properties: { city: { type: "string" } } },
};

describe("fromAnthropicMessages", () => {
  it("maps system blocks, thinking, text, tool_use and tool_result onto the template's turns", () => {
    const { conversation } = fromAnthropicMessages({
      system: [
        { type: "text", text: "Be brief." },
        { type: "text", text: "Use tools." },
      ],
      tools: [WEATHER, { type: "web_search_20250305", name: "web_search", max_uses: 2 }],
      messages: [
        { role: "user", content: "Weather in Paris and Rome?" },
        {
          role: "assistant",
          content: [
            { type: "redacted_thinking", data: "opaque" },
            { type: "thinking", thinking: "Two calls.", signature: "sig" },
            { type: "text", text: "Checking." },
            { type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "Paris" } },
            { type: "tool_use", id: "toolu_2", name: "get_weather", input: { city: "Rome" } },
          ],
        },
        {
          role: "user",
          content: [
            { type: "tool_result", tool_use_id: "toolu_1", content: "sunny" },
            {
              type: "tool_result",
              tool_use_id: "toolu_2",
              content: [{ type: "text", text: "no data" }],
              is_error: true,
            },
            { type: "text", text: "And tomorrow?" },
            { type: "text", text: "Thanks." },
          ],
        },
      ],
    });
    expect(conversation.messages).toEqual([
      { role: "system", content: "Be brief.\n\nUse tools." },
      { role: "user", content: "Weather in Paris and Rome?" },
      {
        role: "assistant",
        content: "Checking.",
        reasoning_content: "Two calls.",
        tool_calls: [
          {
            id: "toolu_1",
            type: "function",
            function: { name: "get_weather", arguments: { city: "Paris" } },
          },
          { id: "toolu_2", type: "function", function: { name: "get_weather", arguments: { city: "Rome" } } },
        ],
      },
      { role: "tool", tool_call_id: "toolu_1", content: "sunny" },
      { role: "tool", tool_call_id: "toolu_2", content: "Error: no data" },
      { role: "user", content: "And tomorrow?\n\nThanks." },
    ]);
    // The server tool runs on Anthropic's side only: it is not offered to this model.
    expect(conversation.tools).toEqual([
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Weather for a city",
          parameters: WEATHER.input_schema,
        },
      },
    ]);
  });

  it("gives the same conversation, key order included, as the same exchange through Chat Completions", () => {
    // The template prints tools and arguments as JSON: a different key order is a different prompt.
    const anthropic = fromAnthropicMessages({
      system: "Be brief.",
      tools: [WEATHER],
      messages: [
        { role: "user", content: "Weather in Paris?" },
        {
          role: "assistant",
          content: [
            { type: "thinking", thinking: "Call it.", signature: "s" },
            { type: "text", text: "Checking." },
            { type: "tool_use", id: "toolu_1", name: "get_weather", input: { city: "Paris" } },
          ],
        },
        { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_1", content: "sunny" }] },
      ],
    }).conversation;
    const chat = fromChatCompletions(
      [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Weather in Paris?" },
        {
          role: "assistant",
          content: "Checking.",
          reasoning_content: "Call it.",
          tool_calls: [
            {
              id: "toolu_1",
              type: "function",
              function: { name: "get_weather", arguments: '{"city":"Paris"}' },
            },
          ],
        },
        { role: "tool", tool_call_id: "toolu_1", content: "sunny" },
      ],
      [
        {
          type: "function",
          function: {
            name: WEATHER.name,
            description: WEATHER.description,
            parameters: WEATHER.input_schema,
          },
        },
      ],
    );
    expect(JSON.stringify(anthropic)).toBe(JSON.stringify(chat));
  });

  it("starts a new assistant step for text after calls and for thinking after text", () => {
    const { conversation } = fromAnthropicMessages({
      tools: [WEATHER],
      messages: [
        { role: "user", content: "hi" },
        {
          role: "assistant",
          content: [
            { type: "text", text: "First." },
            { type: "thinking", thinking: "Then call.", signature: "" },
            { type: "tool_use", id: "toolu_a", name: "get_weather", input: {} },
            { type: "text", text: "After." },
          ],
        },
      ],
    });
    expect(conversation.messages.slice(1)).toEqual([
      { role: "assistant", content: "First." },
      {
        role: "assistant",
        content: "",
        reasoning_content: "Then call.",
        tool_calls: [{ id: "toolu_a", type: "function", function: { name: "get_weather", arguments: {} } }],
      },
      { role: "assistant", content: "After." },
    ]);
  });

  it("joins a system message in front to the system prompt and keeps a later one in place as a user turn", () => {
    // Claude Code's mid-conversation system messages: the prompt before them must not change.
    const { conversation } = fromAnthropicMessages({
      system: "Be brief.",
      messages: [
        { role: "system", content: [{ type: "text", text: "Date: today." }] },
        { role: "user", content: "hi" },
        { role: "system", content: "Agents: claude, Explore." },
        { role: "assistant", content: "Hello." },
      ],
    });
    expect(conversation.messages).toEqual([
      { role: "system", content: "Be brief.\n\nDate: today." },
      { role: "user", content: "hi" },
      { role: "user", content: "Agents: claude, Explore." },
      { role: "assistant", content: "Hello." },
    ]);
    const chat = fromChatCompletions(
      [
        { role: "system", content: "Be brief." },
        { role: "system", content: "Date: today." },
        { role: "user", content: "hi" },
        { role: "system", content: "Agents: claude, Explore." },
        { role: "assistant", content: "Hello." },
      ],
      [],
    );
    expect(JSON.stringify(conversation)).toBe(JSON.stringify(chat));
  });

  it("turns an image in a tool result into a note, and refuses one the user sends", () => {
    const history = [
      { role: "user", content: "Look at the chart." },
      {
        role: "assistant",
        content: [{ type: "tool_use", id: "toolu_r", name: "read", input: { path: "chart.png" } }],
      },
    ];
    const image = { type: "image", source: { type: "base64", media_type: "image/png", data: "AAAA" } };
    const { conversation } = fromAnthropicMessages({
      messages: [
        ...history,
        {
          role: "user",
          content: [
            {
              type: "tool_result",
              tool_use_id: "toolu_r",
              content: [{ type: "text", text: "chart.png:" }, image],
            },
          ],
        },
      ],
    });
    expect(conversation.messages[2]).toEqual({
      role: "tool",
      content: "chart.png:\n\n[image omitted: this model reads text only]",
      tool_call_id: "toolu_r",
    });
    expect(() => fromAnthropicMessages({ messages: [{ role: "user", content: [image] }] })).toThrow(
      /text-only/,
    );
  });

  it("leaves the tools out for tool_choice none and keeps them otherwise", () => {
    const messages = [{ role: "user", content: "hi" }];
    const none = fromAnthropicMessages({ tools: [WEATHER], tool_choice: { type: "none" }, messages });
    expect(none.conversation.tools).toEqual([]);
    expect(none.choice.toolChoice).toEqual({ mode: "none" });
    const auto = fromAnthropicMessages({ tools: [WEATHER], messages });
    expect(auto.conversation.tools).toHaveLength(1);
  });

  it.each([
    [{ messages: [] }, "messages: at least one message is required"],
    [
      { messages: [{ role: "robot", content: "x" }] },
      "messages.0.role: Input should be 'user', 'assistant' or 'system'",
    ],
    [
      { messages: [{ role: "user", content: [{ type: "image", source: {} }] }] },
      'messages.0.content.0.type: content of type "image" is not supported: this model is text-only',
    ],
    [
      {
        messages: [
          { role: "user", content: [{ type: "tool_result", tool_use_id: "toolu_9", content: "x" }] },
        ],
      },
      'messages.0.content.0.tool_use_id: no earlier tool_use block has the id "toolu_9"',
    ],
    [
      { messages: [{ role: "assistant", content: [{ type: "tool_use", name: "f", input: {} }] }] },
      "messages.0.content.0.id: a tool_use block needs an `id`",
    ],
    [
      { messages: [{ role: "assistant", content: [{ type: "tool_use", id: "t", name: "f", input: [1] }] }] },
      "messages.0.content.0.input: must be an object",
    ],
    [{ system: 5, messages: [{ role: "user", content: "x" }] }, "system: must be a string or an array"],
    [
      { tools: [{ name: "f" }], messages: [{ role: "user", content: "x" }] },
      "tools.0.input_schema: a tool needs an `input_schema` object",
    ],
  ])("refuses %j naming the field", (body, message) => {
    expect(() => fromAnthropicMessages(body)).toThrow(RequestError);
    expect(() => fromAnthropicMessages(body)).toThrow(message);
  });
});

describe("anthropicToolChoice", () => {
  const declared = ["get_weather", "get_time"];

  it("maps auto / any / tool / none and disable_parallel_tool_use", () => {
    expect(anthropicToolChoice(undefined, declared)).toEqual({
      toolChoice: { mode: "auto" },
      parallelToolCalls: true,
    });
    expect(anthropicToolChoice({ type: "any", disable_parallel_tool_use: true }, declared)).toEqual({
      toolChoice: { mode: "required" },
      parallelToolCalls: false,
    });
    expect(anthropicToolChoice({ type: "tool", name: "get_time" }, declared)).toEqual({
      toolChoice: { mode: "function", name: "get_time" },
      parallelToolCalls: true,
    });
    expect(anthropicToolChoice({ type: "none" }, []).toolChoice).toEqual({ mode: "none" });
  });

  it("refuses a tool that is not declared, any without tools, and unknown types", () => {
    expect(() => anthropicToolChoice({ type: "tool", name: "launch" }, declared)).toThrow(
      "tool_choice.name: names the tool 'launch'",
    );
    expect(() => anthropicToolChoice({ type: "any" }, [])).toThrow("tool_choice.type");
    expect(() => anthropicToolChoice({ type: "required" }, declared)).toThrow(
      'tool_choice.type: type must be "auto", "any", "tool" or "none"',
    );
    expect(() => anthropicToolChoice("auto", declared)).toThrow("tool_choice: must be an object");
  });
});

describe("Anthropic error shapes", () => {
  it("gives each status Anthropic's type, and 529 overloaded for a full queue or a cluster not ready", () => {
    const cases: Array<[number, string, string, number]> = [
      [400, "invalid_request", "invalid_request_error", 400],
      [401, "invalid_api_key", "authentication_error", 401],
      [404, "model_not_found", "not_found_error", 404],
      [413, "invalid_request", "request_too_large", 413],
      [429, "overloaded", "overloaded_error", 529],
      [503, "cluster_not_ready", "overloaded_error", 529],
      [500, "internal", "api_error", 500],
      [504, "timeout", "timeout_error", 504],
    ];
    for (const [status, code, type, sent] of cases) {
      const converted = fromApiError(apiError(status, "why", code));
      expect(converted.status).toBe(sent);
      expect(converted.body).toEqual({ type: "error", error: { type, message: "why" } });
    }
    expect(fromApiError(apiError(503, "wait", "cluster_not_ready")).retryAfter).toBe(5);
  });

  it("words a prompt that does not fit as Claude Code's 'prompt is too long'", () => {
    expect(toAnthropicError(contextLengthError(4096, 5000))).toEqual({
      status: 400,
      body: {
        type: "error",
        error: { type: "invalid_request_error", message: "prompt is too long: 5000 tokens > 4096 maximum" },
      },
    });
    expect(toAnthropicError(new ClusterError("node_lost", "stage 1 stopped")).status).toBe(529);
    expect(toAnthropicError(new Error("boom")).body.error).toEqual({
      type: "api_error",
      message: "internal error: boom",
    });
  });
});
