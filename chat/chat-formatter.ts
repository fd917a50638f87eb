// Everything the API needs from a model directory to turn a conversation into token ids and back.
// Loaded once per directory: the tokenizer of a ~200k vocabulary takes a while to build.
import type { Conversation } from "./conversation.js";
import { IncrementalDetokenizer } from "./detokenizer.js";
import { encodeWithin } from "./prompt-budget.js";
import { ChatTemplate } from "./template.js";
import { ModelTokenizer } from "./tokenizer.js";

export class ChatFormatter {
  private static readonly byDir = new Map<string, ChatFormatter>();

  private constructor(
    readonly tokenizer: ModelTokenizer,
    readonly template: ChatTemplate,
  ) {}

  static forModelDir(modelDir: string): ChatFormatter {
    const cached = ChatFormatter.byDir.get(modelDir);
    if (cached) return cached;
    const tokenizer = ModelTokenizer.fromModelDir(modelDir);
    const template = ChatTemplate.fromModelDir(modelDir, {
      bos_token: tokenizer.bosToken,
      eos_token: tokenizer.eosToken,
    });
    const formatter = new ChatFormatter(tokenizer, template);
    ChatFormatter.byDir.set(modelDir, formatter);
    return formatter;
  }

  /** The prompt text, ending with the generation prompt (which opens the reasoning). */
  render(conversation: Conversation): string {
    return this.template.render(conversation, { addGenerationPrompt: true });
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text);
  }

  /** A conversation (rendered) or a plain text as token ids; with `limit`, within that budget (prompt-budget.ts). */
  encodePrompt(input: { conversation: Conversation } | { text: string }, limit?: number): number[] {
    const text = "conversation" in input ? this.render(input.conversation) : input.text;
    return limit === undefined ? this.encode(text) : encodeWithin((t) => this.encode(t), text, limit);
  }

  get stopTokenIds(): number[] {
    return this.tokenizer.stopTokenIds;
  }

  detokenizer(): IncrementalDetokenizer {
    return new IncrementalDetokenizer(this.tokenizer);
  }
}
