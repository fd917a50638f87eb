// The Anthropic Messages API's request (system, messages of content blocks, tools with input_schema,
// tool_choice) mapped onto the conversation shape the model's chat template takes (chat/conversation.ts), so
// both APIs render the same prompt for the same exchange. Field paths in errors are Anthropic's
// ("messages.1.content.0.type").
import type { ToolChoice } from "./constraints.js";
import type { Conversation, TemplateMessage, TemplateTool, TemplateToolCall } from "./conversation.js";
import { RequestError } from "./request-error.js";

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function bad(message: string, param: string): RequestError {
  return new RequestError(`${param}: ${message}`, param);
}

const UNSUPPORTED_MEDIA = new Set(["image", "document", "file", "container_upload", "search_result"]);

/**
 * A text field given as a string or as a list of text blocks (system, tool_result content). In a tool's result
 * (`mediaInPlace`) an image or document becomes a note in the text: the client's tool read a file the model
 * cannot see, and refusing the whole request would stop the agent's loop.
 */
function blocksText(value: unknown, param: string, mediaInPlace = false): string {
  if (value === undefined || value === null) return "";
  if (typeof value === "string") return value;
  if (!Array.isArray(value)) throw bad("must be a string or an array of content blocks", param);
  return value
    .map((block, i) => {
      const p = `${param}.${i}`;
      if (!isObject(block)) throw bad("must be an object", p);
      if (block.type === "text") {
        if (typeof block.text !== "string") throw bad("a text block needs a string `text`", `${p}.text`);
        return block.text;
      }
      if (typeof block.type === "string" && UNSUPPORTED_MEDIA.has(block.type)) {
        if (mediaInPlace) return `[${block.type} omitted: this model reads text only]`;
        throw bad(`content of type "${block.type}" is not supported: this model is text-only`, `${p}.type`);
      }
      throw bad(`unexpected content block type ${JSON.stringify(block.type)} here`, `${p}.type`);
    })
    .join("\n\n");
}

/** A new assistant turn (a step of the reply the template renders on its own). */
function assistantTurn(out: TemplateMessage[]): TemplateMessage {
  const fresh: TemplateMessage = { role: "assistant", content: "" };
  out.push(fresh);
  return fresh;
}

function assistantBlocks(content: unknown, param: string, out: TemplateMessage[]): void {
  // A new assistant message always starts a new turn, even right after another one.
  let turn = assistantTurn(out);
  if (typeof content === "string") {
    turn.content = content;
    return;
  }
  if (!Array.isArray(content)) throw bad("must be a string or an array of content blocks", param);
  content.forEach((block, j) => {
    const p = `${param}.${j}`;
    if (!isObject(block)) throw bad("must be an object", p);
    switch (block.type) {
      case "thinking": {
        // Reasoning after text or calls belongs to the next step of the turn: the template renders one
        // reasoning per assistant message, in front.
        if (turn.content !== "" || turn.tool_calls) turn = assistantTurn(out);
        if (typeof block.thinking !== "string")
          throw bad("a thinking block needs `thinking`", `${p}.thinking`);
        turn.reasoning_content = (turn.reasoning_content ?? "") + block.thinking;
        return;
      }
      case "redacted_thinking":
        return; // encrypted reasoning of another provider: nothing this model can read
      case "text": {
        if (typeof block.text !== "string") throw bad("a text block needs a string `text`", `${p}.text`);
        // Text after calls starts a new step: the template renders content before calls.
        if (turn.tool_calls) turn = assistantTurn(out);
        turn.content += block.text;
        return;
      }
      case "tool_use": {
        if (typeof block.id !== "string" || block.id === "")
          throw bad("a tool_use block needs an `id`", `${p}.id`);
        if (typeof block.name !== "string" || block.name === "")
          throw bad("a tool_use block needs a `name`", `${p}.name`);
        const input = block.input === undefined || block.input === null ? {} : block.input;
        if (!isObject(input)) throw bad("must be an object", `${p}.input`);
        const call: TemplateToolCall = {
          id: block.id,
          type: "function",
          function: { name: block.name, arguments: input },
        };
        turn.tool_calls = [...(turn.tool_calls ?? []), call];
        return;
      }
      default:
        if (typeof block.type === "string" && UNSUPPORTED_MEDIA.has(block.type))
          throw bad(`content of type "${block.type}" is not supported: this model is text-only`, `${p}.type`);
        throw bad(
          `content block type ${JSON.stringify(block.type)} is not supported in an assistant message`,
          `${p}.type`,
        );
    }
  });
}

function callIdKnown(earlier: TemplateMessage[], id: string): boolean {
  return earlier.some((m) => m.tool_calls?.some((call) => call.id === id));
}

function userBlocks(content: unknown, param: string, out: TemplateMessage[]): void {
  if (typeof content === "string") {
    out.push({ role: "user", content });
    return;
  }
  if (!Array.isArray(content)) throw bad("must be a string or an array of content blocks", param);
  // Consecutive text blocks make one user turn; each tool_result is a tool turn, in the order given.
  let text: TemplateMessage | undefined;
  content.forEach((block, j) => {
    const p = `${param}.${j}`;
    if (!isObject(block)) throw bad("must be an object", p);
    if (block.type === "text") {
      if (typeof block.text !== "string") throw bad("a text block needs a string `text`", `${p}.text`);
      if (text) text.content += `\n\n${block.text}`;
      else {
        text = { role: "user", content: block.text };
        out.push(text);
      }
      return;
    }
    if (block.type === "tool_result") {
      text = undefined;
      const id = block.tool_use_id;
      if (typeof id !== "string" || id === "")
        throw bad("a tool_result block needs `tool_use_id`", `${p}.tool_use_id`);
      if (!callIdKnown(out, id))
        throw bad(`no earlier tool_use block has the id ${JSON.stringify(id)}`, `${p}.tool_use_id`);
      const result = blocksText(block.content, `${p}.content`, true);
      // The template has no error flag: say it in words the model reads.
      out.push({
        role: "tool",
        content: block.is_error === true ? `Error: ${result}` : result,
        tool_call_id: id,
      });
      return;
    }
    if (typeof block.type === "string" && UNSUPPORTED_MEDIA.has(block.type))
      throw bad(`content of type "${block.type}" is not supported: this model is text-only`, `${p}.type`);
    throw bad(
      `content block type ${JSON.stringify(block.type)} is not supported in a user message`,
      `${p}.type`,
    );
  });
}

/**
 * A system message inside `messages` (Claude Code sends them mid-conversation, under the
 * "mid-conversation-system" beta, so the prompt before them stays cacheable): in front of every turn it joins
 * the system prompt; later it stays where it is, as a user turn, since the template honours a system message
 * only in front (the same rule as chat/conversation.ts for OpenAI's system and developer messages).
 */
function systemMessage(text: string, out: TemplateMessage[]): void {
  const first = out[0];
  if (out.length === 0) out.push({ role: "system", content: text });
  else if (out.length === 1 && first.role === "system") first.content = `${first.content}\n\n${text}`;
  else out.push({ role: "user", content: text });
}

/**
 * Tools with `input_schema` → the template's function list. Anthropic's server tools (a `type` such as
 * "web_search_20250305") run on Anthropic's side; nothing here can run them, so they are left out.
 */
export function anthropicTools(tools: unknown): TemplateTool[] {
  if (tools === undefined || tools === null) return [];
  if (!Array.isArray(tools)) throw bad("must be an array", "tools");
  const out: TemplateTool[] = [];
  tools.forEach((tool, i) => {
    const p = `tools.${i}`;
    if (!isObject(tool)) throw bad("must be an object", p);
    if (tool.type !== undefined && tool.type !== null && tool.type !== "custom") return;
    if (typeof tool.name !== "string" || tool.name === "") throw bad("a tool needs a `name`", `${p}.name`);
    if (!isObject(tool.input_schema)) throw bad("a tool needs an `input_schema` object", `${p}.input_schema`);
    // Keys in the order the OpenAI mapping gives them: the template prints the object as JSON, so the same
    // tool renders the same prompt (and the same cached prefix) whichever API it came through.
    const fn: TemplateTool["function"] = { name: tool.name };
    if (typeof tool.description === "string") fn.description = tool.description;
    fn.parameters = tool.input_schema;
    out.push({ type: "function", function: fn });
  });
  return out;
}

export interface AnthropicToolChoice {
  toolChoice: ToolChoice;
  /** false when `disable_parallel_tool_use` asks for at most one call. */
  parallelToolCalls: boolean;
}

/** tool_choice {type: auto | any | tool (with name) | none, disable_parallel_tool_use}. */
export function anthropicToolChoice(value: unknown, declared: readonly string[]): AnthropicToolChoice {
  if (value === undefined || value === null) return { toolChoice: { mode: "auto" }, parallelToolCalls: true };
  if (!isObject(value)) throw bad('must be an object such as {"type": "auto"}', "tool_choice");
  const parallelToolCalls = value.disable_parallel_tool_use !== true;
  switch (value.type) {
    case "auto":
      return { toolChoice: { mode: "auto" }, parallelToolCalls };
    case "none":
      return { toolChoice: { mode: "none" }, parallelToolCalls };
    case "any":
      if (declared.length === 0) throw bad('"any" needs at least one tool in `tools`', "tool_choice.type");
      return { toolChoice: { mode: "required" }, parallelToolCalls };
    case "tool": {
      const name = value.name;
      if (typeof name !== "string" || name === "")
        throw bad('"tool" needs the tool\'s `name`', "tool_choice.name");
      if (!declared.includes(name))
        throw bad(`names the tool '${name}', which is not among the request's tools`, "tool_choice.name");
      return { toolChoice: { mode: "function", name }, parallelToolCalls };
    }
    default:
      throw bad('type must be "auto", "any", "tool" or "none"', "tool_choice.type");
  }
}

export interface AnthropicRequest {
  system?: unknown;
  messages: unknown;
  tools?: unknown;
  tool_choice?: unknown;
}

/**
 * The request → the conversation the template renders, and what the reply may do with tools. tool_choice
 * "none" leaves the tools out of the prompt (the model is not told it has any); earlier tool_use / tool_result
 * blocks still render as the exchange they were.
 */
export function fromAnthropicMessages(body: AnthropicRequest): {
  conversation: Conversation;
  choice: AnthropicToolChoice;
} {
  const tools = anthropicTools(body.tools);
  const choice = anthropicToolChoice(
    body.tool_choice,
    tools.map((t) => t.function.name),
  );
  const messages = body.messages;
  if (!Array.isArray(messages)) throw bad("must be an array", "messages");
  if (messages.length === 0) throw bad("at least one message is required", "messages");
  const out: TemplateMessage[] = [];
  const system = blocksText(body.system, "system");
  if (system !== "") out.push({ role: "system", content: system });
  messages.forEach((raw, i) => {
    const p = `messages.${i}`;
    if (!isObject(raw)) throw bad("must be an object", p);
    if (raw.role === "user") userBlocks(raw.content, `${p}.content`, out);
    else if (raw.role === "assistant") assistantBlocks(raw.content, `${p}.content`, out);
    else if (raw.role === "system") systemMessage(blocksText(raw.content, `${p}.content`), out);
    else
      throw bad(
        `Input should be 'user', 'assistant' or 'system' (got ${JSON.stringify(raw.role)})`,
        `${p}.role`,
      );
  });
  return {
    conversation: { messages: out, tools: choice.toolChoice.mode === "none" ? [] : tools },
    choice,
  };
}
