// `cluster openclaw-config`: prints the provider block for ~/.openclaw/openclaw.json that points OpenClaw at
// this cluster, with the model's real context window read from its config.json.
import type { Command } from "commander";
import { modelIdOf, readModelConfig, replyTokenLimit } from "../../common/model-config.js";

export type OpenClawApi = "openai-responses" | "openai-completions" | "anthropic-messages";
/** What --api takes: one kind ("anthropic" names anthropic-messages), both OpenAI kinds, or all three. */
export type OpenClawApiChoice = OpenClawApi | "both" | "all";

export interface OpenClawConfigOptions {
  modelDir: string;
  baseUrl: string;
  apiKey?: string;
  api: OpenClawApiChoice;
  /**
   * Largest reply OpenClaw asks for (default replyTokenLimit: 32768, at most a quarter of the window, the
   * limit GET /v1/models advertises; never more than the context window).
   */
  maxTokens?: number;
}

const PROVIDER_NAMES: Record<OpenClawApi, string> = {
  "openai-responses": "studio",
  "openai-completions": "studio-chat",
  "anthropic-messages": "studio-anthropic",
};

const APIS_OF: Record<OpenClawApiChoice, OpenClawApi[]> = {
  "openai-responses": ["openai-responses"],
  "openai-completions": ["openai-completions"],
  "anthropic-messages": ["anthropic-messages"],
  both: ["openai-responses", "openai-completions"],
  all: ["openai-responses", "openai-completions", "anthropic-messages"],
};

/**
 * The base URL a provider of this kind wants. OpenAI clients append `/responses` to `…/v1`; Anthropic's SDK
 * (which OpenClaw's anthropic-messages providers use, as Claude Code does) appends `/v1/messages` itself, so
 * its base is the server's root.
 */
function baseUrlFor(api: OpenClawApi, baseUrl: string): string {
  if (api !== "anthropic-messages") return baseUrl;
  return baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "");
}

/** The JSON to merge into openclaw.json: one provider per API kind, and the first one as default model. */
export function openClawConfig(opts: OpenClawConfigOptions): Record<string, unknown> {
  const config = readModelConfig(opts.modelDir);
  const modelId = modelIdOf(opts.modelDir);
  const contextWindow = config.maxPositionEmbeddings;
  const maxTokens = Math.min(opts.maxTokens ?? replyTokenLimit(contextWindow), contextWindow);
  const apis = APIS_OF[opts.api];
  const providers: Record<string, unknown> = {};
  for (const api of apis) {
    providers[PROVIDER_NAMES[api]] = {
      baseUrl: baseUrlFor(api, opts.baseUrl),
      // OpenClaw always sends a key; the server ignores it unless it was started with --api-key.
      apiKey: opts.apiKey ?? "studio-cluster-local",
      api,
      models: [
        {
          id: modelId,
          name: `${modelId} (studio-cluster)`,
          reasoning: true,
          input: ["text"],
          cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
          contextWindow,
          maxTokens,
        },
      ],
    };
  }
  return {
    models: { mode: "merge", providers },
    agents: { defaults: { model: { primary: `${PROVIDER_NAMES[apis[0]]}/${modelId}` } } },
  };
}

function parseApi(value: string): OpenClawApiChoice {
  if (value === "anthropic") return "anthropic-messages";
  if (Object.hasOwn(APIS_OF, value)) return value as OpenClawApiChoice;
  throw new Error(
    `--api must be openai-responses, openai-completions, anthropic (anthropic-messages), both or all (got "${value}")`,
  );
}

function parseMaxTokens(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0)
    throw new Error(`--max-tokens must be a positive integer (got "${value}")`);
  return n;
}

export function register(program: Command): void {
  program
    .command("openclaw-config")
    .description(
      "print the provider block for ~/.openclaw/openclaw.json that points OpenClaw at this cluster",
    )
    .option("--model <dir>", "model directory (for its id and context window)", ".")
    .option(
      "--base-url <url>",
      "the cluster's OpenAI endpoint (an anthropic-messages provider gets it without /v1)",
      "http://127.0.0.1:8080/v1",
    )
    .option("--api-key <key>", "API key the cluster was started with")
    .option(
      "--api <kind>",
      "openai-responses, openai-completions, anthropic (OpenClaw's anthropic-messages), both (the two OpenAI kinds) or all",
      parseApi,
      "openai-responses",
    )
    .option("--max-tokens <n>", "largest reply OpenClaw may ask for", parseMaxTokens)
    .action(
      (options: {
        model: string;
        baseUrl: string;
        apiKey?: string;
        api: OpenClawApiChoice;
        maxTokens?: number;
      }) => {
        const block = openClawConfig({
          modelDir: options.model,
          baseUrl: options.baseUrl,
          apiKey: options.apiKey,
          api: options.api,
          maxTokens: options.maxTokens,
        });
        process.stdout.write(`${JSON.stringify(block, null, 2)}\n`);
      },
    );
}
