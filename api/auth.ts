// Bearer-key check for the /v1 routes. Without a configured key any (dummy) key is accepted: the server
// then listens on loopback only (see server.ts).
import { timingSafeEqual } from "node:crypto";
import { type ApiError, apiError } from "./errors.js";

function sameKey(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** undefined when the request may pass, else the 401 to send. */
export function checkBearer(
  authorization: string | undefined,
  apiKey: string | undefined,
): ApiError | undefined {
  if (!apiKey) return undefined;
  if (!authorization)
    return apiError(401, "Missing API key: send 'Authorization: Bearer <key>'.", "invalid_api_key");
  const match = /^Bearer\s+(.+)$/i.exec(authorization.trim());
  if (match && sameKey(match[1].trim(), apiKey)) return undefined;
  return apiError(401, "Incorrect API key provided.", "invalid_api_key");
}

/**
 * The /v1 rule: the key as `Authorization: Bearer KEY` (OpenAI's clients, Claude Code's ANTHROPIC_AUTH_TOKEN) or
 * as `x-api-key: KEY` (Anthropic's SDK, Claude Code's ANTHROPIC_API_KEY). Either one that matches passes.
 */
export function checkApiKey(
  headers: { authorization?: string; "x-api-key"?: string | string[] },
  apiKey: string | undefined,
): ApiError | undefined {
  if (!apiKey) return undefined;
  const xKey = headers["x-api-key"];
  if (typeof xKey === "string" && xKey.trim() !== "") {
    if (sameKey(xKey.trim(), apiKey)) return undefined;
    if (!headers.authorization) return apiError(401, "Incorrect API key provided.", "invalid_api_key");
  }
  return checkBearer(headers.authorization, apiKey);
}
