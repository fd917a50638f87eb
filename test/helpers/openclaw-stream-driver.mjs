// Run on OpenClaw's own Node by test/helpers/openclaw-cli.ts: streams one user message through OpenClaw's
// streaming runtime (@openclaw/ai from the installed CLI, its built-in providers) and prints each event as a
// JSON line, without the `partial` snapshots. argv: the @openclaw/ai dist folder, the model (JSON), the message.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [aiDist, modelJson, message] = process.argv.slice(2);
const ai = await import(pathToFileURL(join(aiDist, "index.mjs")).href);
const providers = await import(pathToFileURL(join(aiDist, "providers.mjs")).href);
const runtime = ai.createLlmRuntime();
providers.registerBuiltInApiProviders(runtime.registry);
const { apiKey, ...model } = JSON.parse(modelJson);
const context = { messages: [{ role: "user", content: message, timestamp: Date.now() }] };
for await (const event of runtime.streamSimple(model, context, { apiKey, reasoning: "medium" })) {
  const { partial: _partial, ...rest } = event;
  process.stdout.write(`${JSON.stringify(rest)}\n`);
}
