// The conversation in the shape the model's chat template expects, built from either API's request body.
// Templates are written for Hugging Face's message dicts, so both APIs are mapped onto that one shape here.
import { RequestError } from "./request-error.js";

export type JsonSchema = Record<string, unknown>;

export interface TemplateToolCall {
  id: string;
  type: "function";
  /** Arguments as an object: templates test `arguments is mapping` to render each parameter. */
  function: { name: string; arguments: Record<string, unknown> };
}

export interface TemplateMessage {
  role: "system" | "user" | "assistant" | "tool";
  /** Always a string: a null content would render as "None" in some templates. */
  content: string;
  reasoning_content?: string;
  tool_calls?: TemplateToolCall[];
  tool_call_id?: string;
  name?: string;
}

export interface TemplateTool {
  type: "function";
  function: { name: string; description?: string; parameters?: JsonSchema };
}

export interface Conversation {
  messages: TemplateMessage[];
  tools: TemplateTool[];
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function badRequest(message: string, param: string): RequestError {
  return new RequestError(message, param);
}

/** Text of a message content: a string, or parts of type text / input_text / output_text. Images are refused. */
export function contentText(content: unknown, param: string): string {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) throw badRequest(`${param} must be a string or an array of parts`, param);
  let text = "";
  content.forEach((part, i) => {
    if (typeof part === "string") {
      text += part;
      return;
    }
    if (!isObject(part)) throw badRequest(`${param}[${i}] must be an object`, `${param}[${i}]`);
    const type = part.type;
    if (type === "input_image" || type === "image_url" || type === "image" || type === "input_file")
      throw badRequest(
        `${param}[${i}]: content of type "${String(type)}" is not supported: this model is text-only`,
        `${param}[${i}]`,
      );
    if (typeof part.text === "string") text += part.text;
    else if (typeof part.refusal === "string") text += part.refusal;
  });
  return text;
}

/** OpenAI sends tool arguments as a JSON string; the template wants the object. */
function argumentsObject(raw: unknown, param: string): Record<string, unknown> {
  if (isObject(raw)) return raw;
  if (raw === undefined || raw === null || raw === "") return {};
  if (typeof raw !== "string") throw badRequest(`${param} must be a JSON string`, param);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw badRequest(`${param} is not valid JSON`, param);
  }
  if (!isObject(parsed)) throw badRequest(`${param} must encode a JSON object`, param);
  return parsed;
}

function toolCall(id: string, name: unknown, args: unknown, param: string): TemplateToolCall {
  if (typeof name !== "string" || name === "") throw badRequest(`${param}: missing function name`, param);
  return { id, type: "function", function: { name, arguments: argumentsObject(args, `${param}.arguments`) } };
}

function roleOf(role: unknown, param: string): TemplateMessage["role"] {
  // The template knows no developer role: it is the system prompt under another name.
  if (role === "developer" || role === "system") return "system";
  if (role === "user" || role === "assistant" || role === "tool") return role;
  throw badRequest(`${param}: unknown role ${JSON.stringify(role)}`, param);
}

/** Tools in either API's shape → the template's {type:"function", function:{...}} list. */
export function normalizeTools(tools: unknown, param = "tools"): TemplateTool[] {
  if (tools === undefined || tools === null) return [];
  if (!Array.isArray(tools)) throw badRequest(`${param} must be an array`, param);
  const out: TemplateTool[] = [];
  tools.forEach((tool, i) => {
    if (!isObject(tool)) throw badRequest(`${param}[${i}] must be an object`, `${param}[${i}]`);
    if (tool.type !== undefined && tool.type !== "function") return; // built-in tools have no meaning here
    const fn = isObject(tool.function) ? tool.function : tool;
    if (typeof fn.name !== "string" || fn.name === "")
      throw badRequest(`${param}[${i}]: missing function name`, `${param}[${i}]`);
    const entry: TemplateTool["function"] = { name: fn.name };
    if (typeof fn.description === "string") entry.description = fn.description;
    if (isObject(fn.parameters)) entry.parameters = fn.parameters;
    out.push({ type: "function", function: entry });
  });
  return out;
}

/** Leading system/developer messages merge into one: the template only honours a system message in front. */
function mergeLeadingSystem(messages: TemplateMessage[]): TemplateMessage[] {
  const out: TemplateMessage[] = [];
  for (const m of messages) {
    const prev = out[out.length - 1];
    if (m.role === "system" && prev?.role === "system" && out.length === 1) {
      prev.content = `${prev.content}\n\n${m.content}`;
      continue;
    }
    if (m.role === "system" && out.length > 0) {
      // A system message in the middle has no place in the template; keep its words as a user turn.
      out.push({ role: "user", content: m.content });
      continue;
    }
    out.push({ ...m });
  }
  return out;
}

/** POST /v1/chat/completions `messages` + `tools`. */
export function fromChatCompletions(messages: unknown, tools: unknown): Conversation {
  if (!Array.isArray(messages) || messages.length === 0)
    throw badRequest("messages must be a non-empty array", "messages");
  const out: TemplateMessage[] = [];
  messages.forEach((raw, i) => {
    const param = `messages[${i}]`;
    if (!isObject(raw)) throw badRequest(`${param} must be an object`, param);
    const role = roleOf(raw.role, `${param}.role`);
    const message: TemplateMessage = { role, content: contentText(raw.content, `${param}.content`) };
    if (role === "assistant") {
      const reasoning = raw.reasoning_content ?? raw.reasoning;
      if (typeof reasoning === "string" && reasoning !== "") message.reasoning_content = reasoning;
      if (Array.isArray(raw.tool_calls) && raw.tool_calls.length > 0) {
        message.tool_calls = raw.tool_calls.map((call, j) => {
          const p = `${param}.tool_calls[${j}]`;
          if (!isObject(call) || !isObject(call.function)) throw badRequest(`${p}: missing function`, p);
          const id = typeof call.id === "string" ? call.id : `call_${i}_${j}`;
          return toolCall(id, call.function.name, call.function.arguments, `${p}.function`);
        });
      }
    }
    if (role === "tool" && typeof raw.tool_call_id === "string") {
      checkCallId(out, raw.tool_call_id, `${param}.tool_call_id`);
      message.tool_call_id = raw.tool_call_id;
    }
    out.push(message);
  });
  return { messages: mergeLeadingSystem(out), tools: normalizeTools(tools) };
}

/**
 * A tool result must answer a call made earlier in the conversation: an unknown id is a client bug (a lost
 * or edited history) that the model would otherwise see as a result out of nowhere.
 */
function checkCallId(earlier: TemplateMessage[], id: string, param: string): void {
  for (const m of earlier) if (m.tool_calls?.some((call) => call.id === id)) return;
  throw badRequest(`${param}: no earlier tool call has the id ${JSON.stringify(id)}`, param);
}

function reasoningText(item: Json): string {
  const parts = Array.isArray(item.content) ? item.content : [];
  const content = parts
    .filter((p): p is Json => isObject(p) && typeof p.text === "string")
    .map((p) => p.text as string)
    .join("");
  if (content !== "") return content;
  const summary = Array.isArray(item.summary) ? item.summary : [];
  return summary
    .filter((p): p is Json => isObject(p) && typeof p.text === "string")
    .map((p) => p.text as string)
    .join("\n\n");
}

/** The assistant turn being assembled from consecutive reasoning / message / function_call items. */
function openAssistant(out: TemplateMessage[]): TemplateMessage {
  const last = out[out.length - 1];
  if (last?.role === "assistant") return last;
  const fresh: TemplateMessage = { role: "assistant", content: "" };
  out.push(fresh);
  return fresh;
}

function responsesItem(item: Json, param: string, out: TemplateMessage[]): void {
  const type = item.type ?? (item.role !== undefined ? "message" : undefined);
  if (type === "message") {
    const role = roleOf(item.role, `${param}.role`);
    const text = contentText(item.content, `${param}.content`);
    if (role !== "assistant") {
      out.push({ role, content: text });
      return;
    }
    const turn = openAssistant(out);
    // A message after tool calls starts a new assistant turn: the template renders content before calls.
    if (turn.tool_calls) out.push({ role: "assistant", content: text });
    else turn.content += text;
    return;
  }
  if (type === "reasoning") {
    let turn = openAssistant(out);
    if (turn.content !== "" || turn.tool_calls) {
      turn = { role: "assistant", content: "" };
      out.push(turn);
    }
    turn.reasoning_content = (turn.reasoning_content ?? "") + reasoningText(item);
    return;
  }
  if (type === "function_call") {
    const turn = openAssistant(out);
    const id = typeof item.call_id === "string" ? item.call_id : typeof item.id === "string" ? item.id : "";
    turn.tool_calls = [...(turn.tool_calls ?? []), toolCall(id, item.name, item.arguments, param)];
    return;
  }
  if (type === "function_call_output") {
    const output =
      typeof item.output === "string" ? item.output : contentText(item.output, `${param}.output`);
    const message: TemplateMessage = { role: "tool", content: output };
    if (typeof item.call_id === "string") {
      checkCallId(out, item.call_id, `${param}.call_id`);
      message.tool_call_id = item.call_id;
    }
    out.push(message);
    return;
  }
  if (type === "item_reference")
    throw badRequest(`${param}: item_reference needs stored responses (store is not supported)`, param);
  throw badRequest(`${param}: unknown input item type ${JSON.stringify(type)}`, `${param}.type`);
}

/** POST /v1/responses `instructions` + `input` + `tools`. */
export function fromResponses(instructions: unknown, input: unknown, tools: unknown): Conversation {
  const out: TemplateMessage[] = [];
  if (typeof instructions === "string" && instructions !== "")
    out.push({ role: "system", content: instructions });
  if (typeof input === "string") out.push({ role: "user", content: input });
  else if (Array.isArray(input)) {
    input.forEach((item, i) => {
      if (typeof item === "string") out.push({ role: "user", content: item });
      else if (isObject(item)) responsesItem(item, `input[${i}]`, out);
      else throw badRequest(`input[${i}] must be an object`, `input[${i}]`);
    });
  } else if (input !== undefined && input !== null)
    throw badRequest("input must be a string or an array", "input");
  if (out.length === 0) throw badRequest("input must not be empty", "input");
  return { messages: mergeLeadingSystem(out), tools: normalizeTools(tools) };
}

/** The names of the functions a conversation declares. */
export function toolNames(conversation: Conversation): string[] {
  return conversation.tools.map((t) => t.function.name);
}
