// Bearer-key check for the /v1 routes. Without a configured key any (dummy) key is accepted: the server
// then listens on loopback only (see server.ts). And the one exemption: a follower's request relayed by this
// process's own node agent (docs/architecture.md "Relayed requests").
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { FastifyRequest } from "fastify";
import { RELAY_TOKEN_HEADER } from "../common/wire/http-relay.js";
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

/** Requests this process's node agent relayed for a follower (checkRelay said "trusted"). */
const relayed = new WeakSet<IncomingMessage>();

/**
 * The one route outside /v1 a relay may read: the coordinator's live snapshot (health, plan, request figures),
 * which a follower's dashboard, `cluster status` and `cluster bench` show (docs/architecture.md "Relayed
 * requests"). It is a GET route that only reads; it tells a node holding the cluster key nothing it could not
 * already learn as a member (every member gets every heartbeat and may send /v1 requests through the relay), and
 * the follower serves it under its own API key.
 */
export const RELAYED_SNAPSHOT_PATH = "/dashboard/snapshot.json";

/**
 * Routes a relay may reach, by the route that matched (never the URL's text): the /v1 API, /props, the snapshot,
 * and no route at all (the not-found handlers, which answer 404 and nothing else: a follower relays unknown /v1
 * paths).
 */
function relayableRoute(route: string | undefined): boolean {
  return (
    route === undefined || route.startsWith("/v1/") || route === "/props" || route === RELAYED_SNAPSHOT_PATH
  );
}

/**
 * A request carrying the relay header: "trusted" when it holds this process's relay secret (only the node
 * agent, after the follower's gRPC call proved the cluster key, sends it) and matched a relayable route; refused with
 * 401 when it holds anything else, so a loopback client cannot pass for a relay. Without the header: "none",
 * and the API key rules apply (a forwarded marker alone proves nothing).
 */
export function checkRelay(
  request: FastifyRequest,
  relayToken: string | undefined,
): "none" | "trusted" | ApiError {
  const given = request.headers[RELAY_TOKEN_HEADER];
  if (given === undefined) return "none";
  if (typeof given !== "string" || !relayToken || !sameKey(given, relayToken))
    return apiError(
      401,
      `${RELAY_TOKEN_HEADER} is reserved for this node's own agent relaying a follower's request`,
      "invalid_api_key",
    );
  if (!relayableRoute(request.routeOptions.url)) return "none";
  relayed.add(request.raw);
  return "trusted";
}

/** Whether checkRelay trusted this request as relayed by this process's node agent. */
export function isRelayed(request: FastifyRequest | IncomingMessage): boolean {
  return relayed.has("raw" in request ? request.raw : request);
}
