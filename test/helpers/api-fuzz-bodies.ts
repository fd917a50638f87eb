// Seeded malformed request bodies for test/api/api-fuzz.test.ts: bad JSON, invalid UTF-8, wrong types, values out
// of range or huge, missing fields, non-object bodies, unknown tool-call ids. Every body here is one a correct
// server must refuse with a 4xx; each says what is wrong with it, for the failure message.
import type { Rng } from "./seeded-rng.js";

export interface FuzzBody {
  path: "/chat/completions" | "/responses" | "/completions";
  body: Buffer;
  contentType: string;
  what: string;
}

type Api = FuzzBody["path"];
type Json = Record<string, unknown>;

function base(api: Api, model: string, stream: boolean): Json {
  if (api === "/chat/completions")
    return { model, messages: [{ role: "user", content: "hi" }], max_tokens: 4, stream };
  if (api === "/responses") return { model, input: "hi", max_output_tokens: 4, stream };
  return { model, prompt: "hi", max_tokens: 4, stream };
}

const maxTokensField: Record<Api, string> = {
  "/chat/completions": "max_tokens",
  "/responses": "max_output_tokens",
  "/completions": "max_tokens",
};

const BAD_SAMPLING: Array<[string, unknown[]]> = [
  // Paths are never model names: the server serves its own model directory only (404 for any other name).
  ["model", [5, {}, [], true, "/etc/passwd", "../../models/other", "file:///tmp/model"]],
  ["stream", ["yes", 1, {}, []]],
  ["temperature", ["0.5", {}, [], -1, 3, 1e308, true]],
  ["top_p", ["a", 0, 2, -1, 1e300, {}]],
  ["top_k", ["a", {}, true, []]],
  ["seed", ["a", {}, [], true]],
  ["tools", ["x", 5, {}, [1], [{ type: "function" }], [{ type: "function", function: { name: "" } }]]],
];
const BAD_MAX_TOKENS = [0, -5, 1.5, "4", {}, [], true];
const BAD_STOP = [5, [1], {}, [null], true];

const BAD_MESSAGES: unknown[] = [
  5,
  "hi",
  {},
  [],
  [5],
  [{}],
  [{ role: 5, content: "x" }],
  [{ role: "robot", content: "x" }],
  [{ role: "user", content: 5 }],
  [{ role: "user", content: {} }],
  [{ role: "user", content: [5] }],
  [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,AA" } }] }],
  [{ role: "assistant", content: "", tool_calls: [{}] }],
  [
    {
      role: "assistant",
      content: "",
      tool_calls: [{ id: "c1", function: { name: "f", arguments: "{oops" } }],
    },
  ],
  [{ role: "assistant", content: "", tool_calls: [{ id: "c1", function: { name: "", arguments: "{}" } }] }],
  // Unknown tool-call ids: a result with no call, and a result for another call than the one made.
  [
    { role: "user", content: "x" },
    { role: "tool", tool_call_id: "call_nope", content: "r" },
  ],
  [
    { role: "user", content: "x" },
    {
      role: "assistant",
      content: "",
      tool_calls: [{ id: "call_a", type: "function", function: { name: "f", arguments: "{}" } }],
    },
    { role: "tool", tool_call_id: "call_b", content: "r" },
  ],
];

const BAD_INPUT: unknown[] = [
  5,
  {},
  true,
  [],
  [5],
  [{ type: "computer_call" }],
  [{ type: "message", role: "robot", content: "x" }],
  [{ type: "message", role: "user", content: 5 }],
  [
    {
      type: "message",
      role: "user",
      content: [{ type: "input_image", image_url: "data:image/png;base64,AA" }],
    },
  ],
  [{ type: "function_call", call_id: "c", name: "", arguments: "{}" }],
  [{ type: "function_call", call_id: "c", name: "f", arguments: "[1]" }],
  [{ type: "item_reference", id: "x" }],
  [{ type: "function_call_output", call_id: "call_zz", output: "x" }],
  [
    { type: "function_call", call_id: "call_a", name: "f", arguments: "{}" },
    { type: "function_call_output", call_id: "call_b", output: "x" },
  ],
];

const BAD_PROMPT: unknown[] = [5, [], ["a", "b"], [1], {}, "", true];

function wrongField(rng: Rng, api: Api, body: Json): string {
  const roll = rng.int(4);
  if (roll === 0) {
    // Plain completions have no tools: an unknown field there is tolerated, as it should be.
    const [field, values] = rng.pick(
      api === "/completions" ? BAD_SAMPLING.filter(([f]) => f !== "tools") : BAD_SAMPLING,
    );
    body[field] = rng.pick(values);
    return `${field} = ${JSON.stringify(body[field])}`;
  }
  if (roll === 1) {
    const field = maxTokensField[api];
    body[field] = rng.pick(BAD_MAX_TOKENS);
    return `${field} = ${JSON.stringify(body[field])}`;
  }
  if (api === "/chat/completions") {
    if (roll === 2 && rng.int(2) === 0) {
      body.stop = rng.pick(BAD_STOP);
      return `stop = ${JSON.stringify(body.stop)}`;
    }
    if (roll === 2) {
      body.logit_bias = rng.pick<unknown>(["x", [1], { a: 1 }, { "5": "x" }, { "-1": 2 }]);
      return `logit_bias = ${JSON.stringify(body.logit_bias)}`;
    }
    body.messages = rng.pick(BAD_MESSAGES);
    return `messages = ${JSON.stringify(body.messages).slice(0, 120)}`;
  }
  if (api === "/responses") {
    if (roll === 2) {
      const [field, value] = rng.pick<[string, unknown]>([
        ["instructions", 5],
        ["instructions", {}],
        ["previous_response_id", "resp_1"],
        ["previous_response_id", 7],
      ]);
      body[field] = value;
      return `${field} = ${JSON.stringify(value)}`;
    }
    body.input = rng.pick(BAD_INPUT);
    return `input = ${JSON.stringify(body.input).slice(0, 120)}`;
  }
  if (roll === 2) {
    body.stop = rng.pick(BAD_STOP);
    return `stop = ${JSON.stringify(body.stop)}`;
  }
  body.prompt = rng.pick(BAD_PROMPT);
  return `prompt = ${JSON.stringify(body.prompt)}`;
}

const requiredField: Record<Api, string> = {
  "/chat/completions": "messages",
  "/responses": "input",
  "/completions": "prompt",
};

/** Bytes that are not UTF-8, put inside the text the model would see. */
const BAD_UTF8 = [
  [0xff],
  [0xfe, 0xff],
  [0x80],
  [0xc0, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xe2, 0x82],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
];

function invalidUtf8(rng: Rng, api: Api, body: Json): Buffer {
  const marker = "@@BYTES@@";
  const text = `he${marker}llo`;
  if (api === "/chat/completions") body.messages = [{ role: "user", content: text }];
  else if (api === "/responses") body.input = text;
  else body.prompt = text;
  const [before, after] = JSON.stringify(body).split(marker);
  return Buffer.concat([Buffer.from(before), Buffer.from(rng.pick(BAD_UTF8)), Buffer.from(after)]);
}

function badJson(rng: Rng, body: Json): [string, string] {
  const text = JSON.stringify(body);
  switch (rng.int(7)) {
    case 0:
      return [text.slice(0, 1 + rng.int(text.length - 2)), "truncated"];
    case 1:
      return [`${text}${rng.pick(["x", "}", ",", "]", "{}"])}`, "trailing garbage"];
    case 2:
      return [`${rng.pick(["x", "]", ":", "'"])}${text}`, "leading garbage"];
    case 3:
      return [text.replace(/"/g, "'"), "single quotes"];
    case 4:
      return [text.replace(/}$/, ',"temperature":NaN}'), "NaN literal"];
    case 5:
      return [text.replace(/}$/, ",}"), "trailing comma"];
    default:
      return ["{not json", "not JSON at all"];
  }
}

/** One malformed body, chosen by `rng`. */
export function malformedBody(rng: Rng, model: string): FuzzBody {
  const api = rng.pick<Api>(["/chat/completions", "/responses", "/completions"]);
  const body = base(api, model, rng.int(2) === 0);
  const json = (what: string, contentType = "application/json"): FuzzBody => ({
    path: api,
    body: Buffer.from(JSON.stringify(body)),
    contentType,
    what,
  });
  const roll = rng.int(10);
  if (roll < 5) return json(wrongField(rng, api, body));
  if (roll === 5) {
    const [text, what] = badJson(rng, body);
    return {
      path: api,
      body: Buffer.from(text),
      contentType: rng.pick(["application/json", "text/plain"]),
      what,
    };
  }
  if (roll === 6)
    return {
      path: api,
      body: invalidUtf8(rng, api, body),
      contentType: "application/json",
      what: "invalid UTF-8 in the text",
    };
  if (roll === 7) {
    delete body[requiredField[api]];
    return json(`no ${requiredField[api]}`, rng.pick(["application/json", "text/plain"]));
  }
  if (roll === 8) {
    const value = rng.pick<unknown>([[], 5, "x", null, true, [body]]);
    return {
      path: api,
      body: Buffer.from(JSON.stringify(value)),
      contentType: "application/json",
      what: `body ${JSON.stringify(value).slice(0, 40)}`,
    };
  }
  // Huge: a prompt far beyond the context window, or structure nested thousands deep.
  if (rng.int(2) === 0) {
    const words = "word ".repeat(4000 + rng.int(4000));
    if (api === "/chat/completions") body.messages = [{ role: "user", content: words }];
    else if (api === "/responses") body.input = words;
    else body.prompt = words;
    return json(`a prompt of ${words.length} characters`);
  }
  const depth = 1000 + rng.int(9000);
  const nested = `${"[".repeat(depth)}${"]".repeat(depth)}`;
  const text = JSON.stringify(body).replace(/}$/, `,"${requiredField[api]}":${nested}}`);
  return {
    path: api,
    body: Buffer.from(text),
    contentType: "application/json",
    what: `arrays nested ${depth} deep`,
  };
}
