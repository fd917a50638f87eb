// JSON schemas of the request bodies: only what the server relies on is checked, unknown fields pass.
import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { RequestError } from "../chat/request-error.js";

const OptionalNumber = Type.Optional(Type.Union([Type.Number(), Type.Null()]));
const OptionalInteger = Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()]));
const Stop = Type.Optional(Type.Union([Type.String(), Type.Array(Type.String()), Type.Null()]));
const Tools = Type.Optional(Type.Union([Type.Array(Type.Object({})), Type.Null()]));

const ReplyShape = {
  tool_choice: Type.Optional(Type.Unknown()),
  parallel_tool_calls: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
};

const Sampling = {
  model: Type.Optional(Type.String()),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  stream_options: Type.Optional(
    Type.Union([
      Type.Object({ include_usage: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])) }),
      Type.Null(),
    ]),
  ),
  temperature: OptionalNumber,
  top_p: OptionalNumber,
  top_k: OptionalNumber,
  seed: OptionalNumber,
};

export const ChatCompletionsBody = Type.Object({
  ...Sampling,
  ...ReplyShape,
  response_format: Type.Optional(Type.Unknown()),
  messages: Type.Array(Type.Object({ role: Type.String() }), { minItems: 1 }),
  tools: Tools,
  stop: Stop,
  max_tokens: OptionalInteger,
  max_completion_tokens: OptionalInteger,
  logit_bias: Type.Optional(Type.Union([Type.Record(Type.String(), Type.Number()), Type.Null()])),
});
export type ChatCompletionsBody = Static<typeof ChatCompletionsBody>;

export const ResponsesBody = Type.Object({
  ...Sampling,
  ...ReplyShape,
  text: Type.Optional(Type.Union([Type.Object({ format: Type.Optional(Type.Unknown()) }), Type.Null()])),
  input: Type.Union([Type.String(), Type.Array(Type.Union([Type.Object({}), Type.String()]))]),
  instructions: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  tools: Tools,
  max_output_tokens: OptionalInteger,
  previous_response_id: Type.Optional(Type.Union([Type.String(), Type.Null()])),
  store: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
});
export type ResponsesBody = Static<typeof ResponsesBody>;

export const CompletionsBody = Type.Object({
  ...Sampling,
  prompt: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1, maxItems: 1 })]),
  stop: Stop,
  max_tokens: OptionalInteger,
});
export type CompletionsBody = Static<typeof CompletionsBody>;

/** "/messages/0/role" → "messages[0].role" (OpenAI's param style). */
function paramOf(pointer: string): string {
  return pointer
    .split("/")
    .filter(Boolean)
    .map((part, i) => (/^\d+$/.test(part) ? `[${part}]` : i === 0 ? part : `.${part}`))
    .join("");
}

export function validator<T extends TSchema>(schema: T, what: string): (body: unknown) => Static<T> {
  const check = TypeCompiler.Compile(schema);
  return (body) => {
    if (typeof body !== "object" || body === null || Array.isArray(body))
      throw new RequestError(`${what}: the request body must be a JSON object`, null);
    if (check.Check(body)) return body;
    const first = check.Errors(body).First();
    const param = first ? paramOf(first.path) : null;
    throw new RequestError(`${what}: ${param ?? "body"}: ${first?.message ?? "invalid"}`, param);
  };
}
