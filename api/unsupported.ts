// Request fields the cluster cannot honour, refused with a 400 naming the field (OpenAI's `param`) rather than
// silently ignored: a client that asked for several choices or for token log probabilities would otherwise
// read a reply that lacks them as if it had them.
import { RequestError } from "../chat/request-error.js";

type Body = Record<string, unknown>;

function isSet(value: unknown): boolean {
  return value !== undefined && value !== null && value !== false && value !== 0;
}

/** n (and best_of) above 1: the cluster generates one choice per request. */
function refuseSeveralChoices(body: Body): void {
  for (const param of ["n", "best_of"]) {
    const value = body[param];
    if (value === undefined || value === null || value === 1) continue;
    throw new RequestError(
      `${param}=${JSON.stringify(value)} is not supported: this server generates one choice per request (send ${param}: 1, or several requests)`,
      param,
    );
  }
}

function refuseLogprobs(param: string): never {
  throw new RequestError(
    `${param} is not supported: this server does not return token log probabilities`,
    param,
  );
}

/** Chat Completions: n, logprobs, top_logprobs. */
export function refuseUnsupportedChat(body: Body): void {
  refuseSeveralChoices(body);
  if (isSet(body.logprobs)) refuseLogprobs("logprobs");
  if (isSet(body.top_logprobs)) refuseLogprobs("top_logprobs");
}

/** Completions: n, best_of, logprobs (an integer there). */
export function refuseUnsupportedCompletions(body: Body): void {
  refuseSeveralChoices(body);
  if (isSet(body.logprobs)) refuseLogprobs("logprobs");
}

/** Responses: top_logprobs and include: ["message.output_text.logprobs"]. */
export function refuseUnsupportedResponses(body: Body): void {
  if (isSet(body.top_logprobs)) refuseLogprobs("top_logprobs");
  if (Array.isArray(body.include) && body.include.includes("message.output_text.logprobs"))
    throw new RequestError(
      'include "message.output_text.logprobs" is not supported: this server does not return token log probabilities',
      "include",
    );
}
