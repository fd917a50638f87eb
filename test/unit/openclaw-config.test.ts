import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Command } from "commander";
import { afterAll, describe, expect, it, vi } from "vitest";
import { openClawConfig, register } from "../../cli/commands/openclaw-config.js";

// config.json with MiniMax-M2.1's published sizes (docs/model.md).
const root = mkdtempSync(join(tmpdir(), "openclaw-config-"));
const modelDir = join(root, "MiniMax-M2.1-4bit");
const config = {
  model_type: "minimax_m2",
  hidden_size: 3072,
  num_hidden_layers: 62,
  num_attention_heads: 48,
  num_key_value_heads: 8,
  head_dim: 128,
  rotary_dim: 64,
  intermediate_size: 1536,
  num_local_experts: 256,
  num_experts_per_tok: 8,
  vocab_size: 200064,
  max_position_embeddings: 196608,
  bos_token_id: 200034,
  eos_token_id: 200020,
};
mkdirSync(modelDir);
writeFileSync(join(modelDir, "config.json"), JSON.stringify(config));
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface ModelEntry {
  id: string;
  reasoning: boolean;
  contextWindow: number;
  maxTokens: number;
}
interface Provider {
  baseUrl: string;
  apiKey: string;
  api: string;
  models: ModelEntry[];
}

async function runCli(args: string[]): Promise<string> {
  const program = new Command().exitOverride();
  register(program);
  let out = "";
  const spy = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  });
  try {
    await program.parseAsync(["node", "cluster", "openclaw-config", ...args]);
  } finally {
    spy.mockRestore();
  }
  return out;
}

describe("cluster openclaw-config", () => {
  it("prints JSON with the model's real context window, reasoning and both providers", async () => {
    const out = await runCli([
      "--model",
      modelDir,
      "--base-url",
      "http://10.0.0.5:9000/v1",
      "--api-key",
      "k1",
      "--api",
      "both",
    ]);
    const parsed = JSON.parse(out) as { models: { providers: Record<string, Provider> }; agents: unknown };
    const providers = parsed.models.providers;
    expect(Object.values(providers).map((p) => p.api)).toEqual(["openai-responses", "openai-completions"]);
    for (const p of Object.values(providers)) {
      expect(p.baseUrl).toBe("http://10.0.0.5:9000/v1");
      expect(p.apiKey).toBe("k1");
      expect(p.models[0]).toMatchObject({
        id: "MiniMax-M2.1-4bit",
        reasoning: true,
        contextWindow: 196608,
        maxTokens: 32768,
      });
    }
    expect(parsed.agents).toEqual({ defaults: { model: { primary: "studio/MiniMax-M2.1-4bit" } } });
  });

  it("defaults to one Responses provider and caps maxTokens at the context window", () => {
    const block = openClawConfig({
      modelDir,
      baseUrl: "http://127.0.0.1:8080/v1",
      api: "openai-responses",
      maxTokens: 10_000_000,
    });
    const providers = (block.models as { providers: Record<string, Provider> }).providers;
    expect(Object.keys(providers)).toEqual(["studio"]);
    expect(providers.studio.models[0].maxTokens).toBe(196608);
  });

  it("keeps the default output limit to a quarter of a small window, not the whole window", () => {
    const smallDir = join(root, "small-window");
    mkdirSync(smallDir);
    writeFileSync(
      join(smallDir, "config.json"),
      JSON.stringify({ ...config, max_position_embeddings: 8192 }),
    );
    const block = openClawConfig({ modelDir: smallDir, baseUrl: "http://127.0.0.1:8080/v1", api: "both" });
    const providers = (block.models as { providers: Record<string, Provider> }).providers;
    for (const p of Object.values(providers))
      expect(p.models[0]).toMatchObject({ contextWindow: 8192, maxTokens: 2048 });
  });

  it("prints an anthropic-messages provider at the server's root for --api anthropic", async () => {
    const out = await runCli([
      "--model",
      modelDir,
      "--base-url",
      "http://10.0.0.5:9000/v1/",
      "--api",
      "anthropic",
    ]);
    const parsed = JSON.parse(out) as { models: { providers: Record<string, Provider> }; agents: unknown };
    expect(Object.keys(parsed.models.providers)).toEqual(["studio-anthropic"]);
    const provider = parsed.models.providers["studio-anthropic"];
    // Anthropic's SDK appends /v1/messages itself.
    expect(provider).toMatchObject({ api: "anthropic-messages", baseUrl: "http://10.0.0.5:9000" });
    expect(provider.models[0]).toMatchObject({
      id: "MiniMax-M2.1-4bit",
      reasoning: true,
      contextWindow: 196608,
    });
    expect(parsed.agents).toEqual({ defaults: { model: { primary: "studio-anthropic/MiniMax-M2.1-4bit" } } });
  });

  it("--api all gives the three kinds, each with its own base URL", () => {
    const block = openClawConfig({ modelDir, baseUrl: "http://127.0.0.1:8080/v1", api: "all" });
    const providers = (block.models as { providers: Record<string, Provider> }).providers;
    expect(Object.entries(providers).map(([name, p]) => [name, p.api, p.baseUrl])).toEqual([
      ["studio", "openai-responses", "http://127.0.0.1:8080/v1"],
      ["studio-chat", "openai-completions", "http://127.0.0.1:8080/v1"],
      ["studio-anthropic", "anthropic-messages", "http://127.0.0.1:8080"],
    ]);
  });

  it("names the bad option value", async () => {
    await expect(runCli(["--model", modelDir, "--api", "grpc"])).rejects.toThrow(/--api must be/);
    expect(() => openClawConfig({ modelDir: join(root, "missing"), baseUrl: "x", api: "both" })).toThrow(
      /config\.json/,
    );
  });
});
