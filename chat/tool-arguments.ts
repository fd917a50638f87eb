// MiniMax writes every tool parameter as text: raw for strings, JSON for everything else. The tool's JSON
// schema says which, so a value becomes the type the client declared (and stays a string when unsure).
import type { JsonSchema } from "./conversation.js";

type Converted = { ok: true; value: unknown } | { ok: false };

function declaredTypes(schema: JsonSchema | undefined): string[] {
  if (!schema) return [];
  const type = schema.type;
  if (typeof type === "string") return [type];
  if (Array.isArray(type)) return type.filter((t): t is string => typeof t === "string");
  const alternatives = [schema.anyOf, schema.oneOf].find(Array.isArray) as unknown[] | undefined;
  if (alternatives)
    return alternatives.flatMap((alt) =>
      declaredTypes(alt && typeof alt === "object" ? (alt as JsonSchema) : undefined),
    );
  if (Array.isArray(schema.enum) && schema.enum.length > 0)
    return [...new Set(schema.enum.map((v) => (v === null ? "null" : typeof v)))];
  if (schema.properties) return ["object"];
  if (schema.items) return ["array"];
  return [];
}

function parseJson(raw: string): Converted {
  try {
    return { ok: true, value: JSON.parse(raw) };
  } catch {
    return { ok: false };
  }
}

function convertAs(type: string, raw: string): Converted {
  const text = raw.trim();
  switch (type) {
    case "string":
      return { ok: true, value: raw };
    case "integer": {
      const value = Number(text);
      return text !== "" && Number.isInteger(value) ? { ok: true, value } : { ok: false };
    }
    case "number": {
      const value = Number(text);
      return text !== "" && Number.isFinite(value) ? { ok: true, value } : { ok: false };
    }
    case "boolean":
      if (text.toLowerCase() === "true") return { ok: true, value: true };
      if (text.toLowerCase() === "false") return { ok: true, value: false };
      return { ok: false };
    case "null":
      return text === "null" || text === "" ? { ok: true, value: null } : { ok: false };
    case "object":
    case "array": {
      const parsed = parseJson(text);
      if (!parsed.ok) return parsed;
      const isArray = Array.isArray(parsed.value);
      const isObject = typeof parsed.value === "object" && parsed.value !== null && !isArray;
      return (type === "array" ? isArray : isObject) ? parsed : { ok: false };
    }
    default:
      return { ok: false };
  }
}

/** One parameter's raw text → its value under the parameter's schema. */
export function convertParameter(raw: string, schema: JsonSchema | undefined): unknown {
  const types = declaredTypes(schema);
  // Non-string types first: with ["string","integer"], "5" is more likely meant as 5.
  const ordered = [...types.filter((t) => t !== "string"), ...types.filter((t) => t === "string")];
  for (const type of ordered) {
    const converted = convertAs(type, raw);
    if (converted.ok) return converted.value;
  }
  return raw;
}

/** All parameters of one call → its arguments object, by the function's `parameters` schema. */
export function convertArguments(
  params: Array<[name: string, raw: string]>,
  parametersSchema: JsonSchema | undefined,
): Record<string, unknown> {
  const properties = (parametersSchema?.properties ?? {}) as Record<string, JsonSchema>;
  const args: Record<string, unknown> = {};
  for (const [name, raw] of params) args[name] = convertParameter(raw, properties[name]);
  return args;
}
