// The model directory's own chat template, rendered the way transformers renders it (trim_blocks and
// lstrip_blocks on, tojson without key sorting or HTML escaping), which is what @huggingface/jinja implements.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import type { Conversation } from "./conversation.js";
import { RequestError } from "./request-error.js";

export interface RenderOptions {
  addGenerationPrompt: boolean;
}

function templateFromConfig(config: Record<string, unknown>, file: string): string | undefined {
  const raw = config.chat_template;
  if (typeof raw === "string") return raw;
  if (!Array.isArray(raw)) return undefined;
  // The list form names several templates; "default" is the chat one.
  const named = raw.find((t) => t && typeof t === "object" && (t as { name?: unknown }).name === "default");
  const template = (named ?? raw[0]) as { template?: unknown } | undefined;
  if (typeof template?.template === "string") return template.template;
  throw new Error(`${file}: chat_template list holds no template`);
}

/** chat_template.jinja wins over tokenizer_config.json's chat_template, as in transformers. */
export function readChatTemplateSource(modelDir: string): string {
  const jinjaFile = join(modelDir, "chat_template.jinja");
  if (existsSync(jinjaFile)) return readFileSync(jinjaFile, "utf8");
  const configFile = join(modelDir, "tokenizer_config.json");
  if (existsSync(configFile)) {
    const source = templateFromConfig(JSON.parse(readFileSync(configFile, "utf8")), configFile);
    if (source !== undefined) return source;
  }
  throw new Error(
    `${modelDir}: no chat template (neither chat_template.jinja nor tokenizer_config.json chat_template)`,
  );
}

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    source: string,
    private readonly specialTokens: { bos_token?: string; eos_token?: string } = {},
  ) {
    this.template = new Template(source);
  }

  static fromModelDir(
    modelDir: string,
    specialTokens: { bos_token?: string; eos_token?: string } = {},
  ): ChatTemplate {
    return new ChatTemplate(readChatTemplateSource(modelDir), specialTokens);
  }

  render(conversation: Conversation, options: RenderOptions): string {
    const context: Record<string, unknown> = {
      messages: conversation.messages,
      add_generation_prompt: options.addGenerationPrompt,
      ...this.specialTokens,
    };
    // Templates test `if tools`: an empty list and no list must render the same.
    if (conversation.tools.length > 0) context.tools = conversation.tools;
    try {
      return this.template.render(context);
    } catch (err) {
      // raise_exception() in the template reports a conversation the model cannot take (e.g. a stray tool turn).
      throw new RequestError(
        `the conversation cannot be rendered by the model's chat template: ${(err as Error).message}`,
        "messages",
      );
    }
  }
}
