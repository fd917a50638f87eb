// The scripted-tool checkpoint (cli/make-model/scripted.ts) through a real two-stage cluster: a prompt without a
// tool result gets the call to OpenClaw's `ls`, the same conversation with the tool's result appended gets the
// text answer instead, on short prompts and on the bodies OpenClaw recorded (when shared/fixtures has them).
// The OpenClaw CLI test (test/cluster/openclaw-cli.test.ts) depends on this switch; here it is checked
// without npm.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TOOL_TURN_REPLY } from "../../cli/make-model/scripted.js";
import { type ApiCluster, startApiCluster } from "../helpers/api-cluster.js";

let cluster: ApiCluster;

beforeAll(async () => {
  cluster = await startApiCluster({ preset: "scripted-tool", stages: 2, contextWindow: 65_536 });
}, 300_000);
afterAll(async () => {
  await cluster?.stop();
});

type Json = Record<string, unknown>;

async function chat(body: Json): Promise<Json> {
  const response = await fetch(`${cluster.baseUrl}/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${cluster.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ ...body, model: cluster.modelId, stream: false }),
  });
  const json = (await response.json()) as Json;
  expect(response.status, JSON.stringify(json)).toBe(200);
  return json;
}

function messageOf(reply: Json): { content: string; reasoning_content: string; tool_calls?: Json[] } {
  return (reply.choices as Array<{ message: never }>)[0].message;
}

const LS = {
  type: "function",
  function: {
    name: "ls",
    description: "List directory entries.",
    parameters: { type: "object", properties: { path: { type: "string" } } },
  },
};

describe("the scripted-tool model", () => {
  it("calls ls first, and answers with text once a tool result is in the prompt", async () => {
    const user = { role: "user", content: "List the files here" };
    const first = await chat({ messages: [user], tools: [LS] });
    const call = messageOf(first);
    expect(call.reasoning_content).toBe(TOOL_TURN_REPLY.call.reasoning);
    expect(call.content).toBe(TOOL_TURN_REPLY.call.content);
    const calls = call.tool_calls as Array<{ id: string; function: { name: string; arguments: string } }>;
    expect(calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)])).toEqual([
      ["ls", { path: "." }],
    ]);
    expect((first.choices as Json[])[0].finish_reason).toBe("tool_calls");

    const second = await chat({
      messages: [
        user,
        { role: "assistant", content: call.content, tool_calls: call.tool_calls },
        { role: "tool", tool_call_id: calls[0].id, content: '"a.txt"\n"b.txt"' },
      ],
      tools: [LS],
    });
    const answer = messageOf(second);
    expect(answer.reasoning_content).toBe(TOOL_TURN_REPLY.answer.reasoning);
    expect(answer.content).toBe(TOOL_TURN_REPLY.answer.content);
    expect(answer.tool_calls ?? []).toEqual([]);
    expect((second.choices as Json[])[0].finish_reason).toBe("stop");

    // A new conversation without a result calls the tool again: the switch is the result, not the history.
    expect(messageOf(await chat({ messages: [user], tools: [LS] })).tool_calls).toHaveLength(1);
  });

  const fixtures = join(process.cwd(), "..", "shared", "fixtures", "openclaw");
  const recorded = ["chat-turn1-request.json", "chat-turn2-tool-result-request.json"];
  it("does the same on OpenClaw's recorded ~16k-token requests", async (ctx) => {
    if (!recorded.every((f) => existsSync(join(fixtures, f)))) {
      console.warn(`scripted-tool-model: skipping the recorded requests, none in ${fixtures}`);
      return ctx.skip();
    }
    const [turn1, turn2] = recorded.map((f) => JSON.parse(readFileSync(join(fixtures, f), "utf8")) as Json);
    delete turn1.stream_options;
    delete turn2.stream_options;
    const call = messageOf(await chat(turn1));
    expect((call.tool_calls as Array<{ function: { name: string } }>).map((c) => c.function.name)).toEqual([
      "ls",
    ]);
    const answer = messageOf(await chat(turn2));
    expect(answer.content).toBe(TOOL_TURN_REPLY.answer.content);
    expect(answer.tool_calls ?? []).toEqual([]);
  });
});
