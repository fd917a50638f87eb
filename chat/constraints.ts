// What a request asks of the shape of its reply, in one form whatever API it came through: which tools the
// model may call (OpenAI tool_choice and parallel_tool_calls, Anthropic tool_choice) and the format of the
// visible text (OpenAI response_format / text.format). The routes parse their fields into ReplyConstraints;
// generation enforces them.
import type { ToolConstraintSpec, ToolValue } from "../common/tool-grammar.js";
import type { TemplateTool } from "./conversation.js";
import { RequestError } from "./request-error.js";

export type ToolChoice =
  | { mode: "auto" }
  | { mode: "none" }
  | { mode: "required" }
  | { mode: "function"; name: string };

export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | {
      type: "json_schema";
      name: string;
      schema: Record<string, unknown>;
      strict: boolean;
      /** The request field the schema came in (for an error about it). */
      param: string;
    };

export interface ReplyConstraints {
  toolChoice: ToolChoice;
  /** false: at most one tool call per reply. */
  parallelToolCalls: boolean;
  responseFormat: ResponseFormat;
}

export const unconstrained: ReplyConstraints = {
  toolChoice: { mode: "auto" },
  parallelToolCalls: true,
  responseFormat: { type: "text" },
};

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * OpenAI's tool_choice: "auto" | "none" | "required", or a named function (`{type: "function", function:
 * {name}}` on Chat Completions, `{type: "function", name}` on Responses). A named function must be declared.
 */
export function openAiToolChoice(
  value: unknown,
  declared: readonly string[],
  param = "tool_choice",
): ToolChoice {
  if (value === undefined || value === null || value === "auto") return { mode: "auto" };
  if (value === "none") return { mode: value };
  if (value === "required") {
    if (declared.length === 0)
      throw new RequestError(`${param} is "required" but the request declares no tools`, param);
    return { mode: value };
  }
  if (isObject(value) && value.type === "function") {
    const inner = isObject(value.function) ? value.function : value;
    const name = inner.name;
    if (typeof name !== "string" || name === "")
      throw new RequestError(`${param} names no function: give {"type": "function", "name": "..."}`, param);
    if (!declared.includes(name))
      throw new RequestError(
        `${param} names the function '${name}', which is not among the request's tools`,
        param,
      );
    return { mode: "function", name };
  }
  throw new RequestError(`${param} must be "auto", "none", "required" or a function to call`, param);
}

/**
 * OpenAI's reply format: Chat Completions' response_format (`{type: "json_schema", json_schema: {name, schema,
 * strict}}`) or Responses' text.format (`{type: "json_schema", name, schema, strict}`), or json_object / text.
 */
export function openAiResponseFormat(value: unknown, param: string): ResponseFormat {
  if (value === undefined || value === null) return { type: "text" };
  if (!isObject(value)) throw new RequestError(`${param} must be an object with a type`, param);
  if (value.type === "text") return { type: "text" };
  if (value.type === "json_object") return { type: "json_object" };
  if (value.type !== "json_schema")
    throw new RequestError(`${param}.type must be "text", "json_object" or "json_schema"`, `${param}.type`);
  const spec = isObject(value.json_schema) ? value.json_schema : value;
  if (!isObject(spec.schema))
    throw new RequestError(`${param} of type json_schema needs a schema object`, `${param}.schema`);
  return {
    type: "json_schema",
    name: typeof spec.name === "string" ? spec.name : "response",
    schema: spec.schema,
    strict: spec.strict === true,
    param: value.json_schema === undefined ? `${param}.schema` : `${param}.json_schema.schema`,
  };
}

/**
 * What the last stage enforces while it samples (common/tool-grammar.ts): the tool choice, parallel_tool_calls,
 * and that only the declared functions (and their declared parameter names) can be called at all, so a call to
 * an undeclared function cannot be generated, with or without tools.
 */
export function toolConstraintSpec(
  constraints: ReplyConstraints,
  tools: readonly TemplateTool[],
): ToolConstraintSpec {
  const choice = constraints.toolChoice;
  const format = constraints.responseFormat;
  if (format.type !== "text" && (choice.mode === "required" || choice.mode === "function"))
    throw new RequestError(
      `tool_choice "${choice.mode === "function" ? choice.name : "required"}" cannot be combined with a ${format.type} response format: the reply is either JSON text or tool calls`,
      "tool_choice",
    );
  return {
    ...(format.type === "json_object" ? { format: { type: "json_object" } } : {}),
    ...(format.type === "json_schema" ? { format: { type: "json_schema", schema: format.schema } } : {}),
    choice: choice.mode === "function" ? { name: choice.name } : choice.mode,
    parallel: constraints.parallelToolCalls,
    tools: tools.map((tool) => {
      const schema = tool.function.parameters;
      const properties =
        isObject(schema) && isObject(schema.properties) ? Object.keys(schema.properties) : null;
      const required =
        isObject(schema) && Array.isArray(schema.required)
          ? schema.required.filter((p): p is string => typeof p === "string")
          : [];
      const values = isObject(schema) ? toolValues(schema) : {};
      return {
        name: tool.function.name,
        parameters: properties,
        required,
        ...(Object.keys(values).length > 0 ? { values } : {}),
      };
    }),
  };
}

/** The JSON types a value of this schema can take (as chat/tool-arguments.ts reads them); [] when unknown. */
function valueTypes(schema: Record<string, unknown>): string[] {
  const type = schema.type;
  if (typeof type === "string") return [type];
  if (Array.isArray(type)) return type.filter((t): t is string => typeof t === "string");
  const alternatives = [schema.anyOf, schema.oneOf].find(Array.isArray) as unknown[] | undefined;
  if (alternatives) {
    const types = alternatives.map((alt) => (isObject(alt) ? valueTypes(alt) : []));
    return types.some((t) => t.length === 0) ? [] : types.flat();
  }
  if (Array.isArray(schema.enum) && schema.enum.length > 0)
    return [
      ...new Set(schema.enum.map((v) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v))),
    ];
  if (isObject(schema.properties)) return ["object"];
  if (schema.items !== undefined) return ["array"];
  return [];
}

/**
 * How each parameter's value is constrained (common/tool-grammar.ts ToolValue). MiniMax writes a string raw and
 * any other value as JSON, and the reply parser reads it back by the schema's types; so a parameter whose schema
 * is all strings is raw text (its length bounds, or one of its enum's values), one that admits no string is
 * JSON of its own schema (the tool's $defs along, for its $refs), and one that mixes strings with other types,
 * or says nothing of its type, stays free text. A pattern or format on a string is not enforced.
 */
export function toolValues(parameters: Record<string, unknown>): Record<string, ToolValue> {
  const out: Record<string, ToolValue> = {};
  if (!isObject(parameters.properties)) return out;
  const shared: Record<string, unknown> = {};
  for (const key of ["$defs", "definitions"])
    if (parameters[key] !== undefined) shared[key] = parameters[key];
  for (const [name, property] of Object.entries(parameters.properties)) {
    if (!isObject(property)) continue;
    const types = valueTypes(property);
    if (types.length === 0 || property.$ref !== undefined) continue;
    if (types.every((t) => t === "string")) {
      if (Array.isArray(property.enum)) {
        const values = property.enum.filter((v): v is string => typeof v === "string");
        if (values.length > 0) out[name] = { kind: "enum", values };
        continue;
      }
      const bound = (v: unknown) => (typeof v === "number" && v >= 0 ? Math.floor(v) : undefined);
      const minLength = bound(property.minLength);
      const maxLength = bound(property.maxLength);
      // No bounds, or bounds no value meets: free text (a grammar with no way out would stall the reply).
      if (minLength === undefined && maxLength === undefined) continue;
      if (minLength !== undefined && maxLength !== undefined && minLength > maxLength) continue;
      out[name] = {
        kind: "string",
        ...(minLength !== undefined ? { minLength } : {}),
        ...(maxLength !== undefined ? { maxLength } : {}),
      };
    } else if (!types.includes("string")) out[name] = { kind: "json", schema: { ...property, ...shared } };
  }
  return out;
}
