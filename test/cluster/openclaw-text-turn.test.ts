// The README's demo through the real OpenClaw CLI (see helpers/openclaw-cli.ts): a two-node `cluster up` pair
// serving the demo checkpoint (the real model's window; reasoning that ends, then a visible reply), configured
// with `cluster openclaw-config --api all`:
// - a text turn (`openclaw agent --local`): the reply shown once, the reasoning stored once and never shown;
// - for each of OpenClaw's three API kinds, the live display: the same message streamed through OpenClaw's own streaming runtime (@openclaw/ai), whose
//   thinking and text deltas are what OpenClaw draws while a reply streams; each must add up to the reasoning
//   and the reply once (a server that sent each reasoning piece in two event kinds had it drawn twice).
// Skips only when npm cannot install the package, saying why.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEMO_REPLY } from "../../cli/make-model/scripted.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, runCli, startNodePair } from "../helpers/cluster-up.js";
import {
  blocksOf,
  ensureOpenClaw,
  messagesOf,
  OPENCLAW_VERSION,
  type OpenClawCli,
  type OpenClawModel,
  occurrences,
  openClawAgentTurn,
  openClawStream,
  openClawTranscript,
} from "../helpers/openclaw-cli.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const clusterHome = mkdtempSync(join(tmpdir(), "openclaw-text-cluster-"));
const openclawHome = mkdtempSync(join(tmpdir(), "openclaw-text-home-"));
const env = { STUDIO_CLUSTER_HOME: clusterHome };
const running: CliProcess[] = [];

let cli: OpenClawCli | undefined;
let skipReason = "";
/** Provider name -> its model entry, from `cluster openclaw-config --api all`. */
const models = new Map<string, OpenClawModel>();

interface ProviderBlock {
  baseUrl: string;
  apiKey: string;
  api: string;
  models: Array<{ id: string; [key: string]: unknown }>;
}

beforeAll(async () => {
  const install = await ensureOpenClaw();
  if (!install.ok) {
    skipReason = `openclaw-text-turn: skipping, the npm package could not be installed: ${install.reason}`;
    console.warn(skipReason);
    return;
  }
  cli = install.cli;
  const modelDir = await ensureModel("demo-4bit", "demo");
  const { coordinatorUrl } = await startNodePair(modelDir, env, running, generateClusterKey());
  const config = runCli(
    ["openclaw-config", "--model", modelDir, "--base-url", `${coordinatorUrl}/v1`, "--api", "all"],
    env,
  );
  expect(await config.exited, config.output()).toBe(0);
  const text = config.stdout.join("\n");
  mkdirSync(join(openclawHome, ".openclaw", "workspace"), { recursive: true });
  writeFileSync(join(openclawHome, ".openclaw", "openclaw.json"), text);
  const block = JSON.parse(text) as { models: { providers: Record<string, ProviderBlock> } };
  for (const [name, provider] of Object.entries(block.models.providers)) {
    const { baseUrl, apiKey, api } = provider;
    models.set(name, { ...provider.models[0], provider: name, api, baseUrl, apiKey });
  }
}, 25 * 60_000);

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(clusterHome, { recursive: true, force: true });
  rmSync(openclawHome, { recursive: true, force: true });
});

function providerFor(api: string): [string, OpenClawModel] {
  const found = [...models].find(([, m]) => m.api === api);
  if (!found) throw new Error(`openclaw-config --api all printed no ${api} provider: ${[...models.keys()]}`);
  return found;
}

async function checkTextTurn(api: string): Promise<void> {
  const [provider, model] = providerFor(api);
  const sessionId = `${api}-text-turn`;
  const result = await openClawAgentTurn(cli!, openclawHome, `${provider}/${model.id}`, sessionId, "hi");
  const meta = result.meta as Record<string, unknown>;
  expect((meta.completion as Record<string, unknown>).stopReason).toBe("stop");

  // What OpenClaw shows: the reply, once, and none of the reasoning.
  const shown = (result.payloads as Array<{ text?: string }>).map((p) => p.text ?? "").join("\n");
  expect(occurrences(shown, DEMO_REPLY.content), shown).toBe(1);
  expect(shown).not.toContain(DEMO_REPLY.reasoning);
  expect(meta.finalAssistantVisibleText).toBe(DEMO_REPLY.content);

  // What it stored: one assistant message, its reasoning once as one thinking block, the reply as one text block.
  const messages = messagesOf(await openClawTranscript(cli!, openclawHome, sessionId));
  expect(messages.map((m) => m.role)).toEqual(["user", "assistant"]);
  const answer = messages[1];
  expect(blocksOf(answer, "thinking").map((b) => b.thinking)).toEqual([DEMO_REPLY.reasoning]);
  expect(blocksOf(answer, "text").map((b) => b.text)).toEqual([DEMO_REPLY.content]);
  expect(blocksOf(answer, "toolCall")).toEqual([]);
}

async function checkLiveDisplay(api: string): Promise<void> {
  const [, model] = providerFor(api);
  const events = await openClawStream(cli!, model, "hi");
  const kinds = events.map((e) => e.type);
  const errors = events.filter((e) => e.type === "error").map((e) => e.error?.errorMessage);
  expect(errors, JSON.stringify(events.slice(-3))).toEqual([]);
  expect(kinds.at(-1)).toBe("done");
  // One thinking block and one text block, in that order, each opened and closed once.
  expect(kinds.filter((k) => k.endsWith("_start") || k.endsWith("_end"))).toEqual([
    "thinking_start",
    "thinking_end",
    "text_start",
    "text_end",
  ]);
  const live = (type: string) =>
    events
      .filter((e) => e.type === type)
      .map((e) => e.delta)
      .join("");
  // What is drawn while the reply streams. OpenClaw itself adds a blank line after a Responses reasoning
  // summary part, hence the trim; a piece sent twice would leave the reasoning in it twice.
  expect(live("thinking_delta").trim()).toBe(DEMO_REPLY.reasoning);
  expect(live("text_delta")).toBe(DEMO_REPLY.content);
  const final = events.at(-1)?.message?.content ?? [];
  expect(final.filter((b) => b.type === "thinking").map((b) => b.thinking)).toEqual([DEMO_REPLY.reasoning]);
  expect(final.filter((b) => b.type === "text").map((b) => b.text)).toEqual([DEMO_REPLY.content]);
}

describe(`openclaw ${OPENCLAW_VERSION}: the demo's text turn`, () => {
  // One agent turn through the CLI (each costs OpenClaw's own start-up, most of a minute on 2 cores); the tool
  // turns of openclaw-cli.test.ts run the CLI on all three kinds, their follow-ups being text replies.
  it("openai-responses (openclaw-config's default): the turn completes, the reply shown once and the reasoning stored once", async (ctx) => {
    if (!cli) return ctx.skip(skipReason);
    await checkTextTurn("openai-responses");
  }, 360_000);

  for (const api of ["openai-responses", "openai-completions", "anthropic-messages"]) {
    it(`${api}: OpenClaw's live stream draws the reasoning and the reply once each`, async (ctx) => {
      if (!cli) return ctx.skip(skipReason);
      await checkLiveDisplay(api);
    }, 180_000);
  }
});
