// tokenizer.json + tokenizer_config.json of the model directory, loaded once: encode prompts, decode replies.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";

/** MiniMax-M2's end-of-turn token: the reply ends when the model produces it. */
export const MINIMAX_EOS = "[e~[";

function readJson(file: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${file}: cannot read tokenizer file (${(err as Error).message})`);
  }
}

function tokenContent(raw: unknown): string | undefined {
  if (typeof raw === "string") return raw;
  if (raw && typeof raw === "object" && typeof (raw as { content?: unknown }).content === "string")
    return (raw as { content: string }).content;
  return undefined;
}

export class ModelTokenizer {
  readonly stopTokenIds: number[];
  readonly bosToken?: string;
  readonly eosToken?: string;
  private readonly tokenizer: Tokenizer;

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown>) {
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    this.bosToken = tokenContent(tokenizerConfig.bos_token);
    this.eosToken = tokenContent(tokenizerConfig.eos_token);
    const stops = new Set<number>();
    for (const token of [MINIMAX_EOS, this.eosToken]) {
      const id = token === undefined ? undefined : this.tokenizer.token_to_id(token);
      if (id !== undefined) stops.add(id);
    }
    if (stops.size === 0) throw new Error(`tokenizer has no end-of-turn token (${MINIMAX_EOS} or eos_token)`);
    this.stopTokenIds = [...stops];
  }

  static fromModelDir(modelDir: string): ModelTokenizer {
    const tokenizerFile = join(modelDir, "tokenizer.json");
    const configFile = join(modelDir, "tokenizer_config.json");
    const config = existsSync(configFile) ? readJson(configFile) : {};
    const tokenizer = readJson(tokenizerFile);
    // The library's own messages ("Tokenizer must be a valid object") do not say which file is at fault.
    if (typeof tokenizer !== "object" || tokenizer === null || Array.isArray(tokenizer))
      throw new Error(`${tokenizerFile}: not a tokenizer (expected a JSON object)`);
    try {
      return new ModelTokenizer(tokenizer, config);
    } catch (err) {
      throw new Error(`${tokenizerFile}: not a usable tokenizer (${(err as Error).message})`);
    }
  }

  /** The template already wrote the special tokens (bos included): add none. */
  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /** Special tokens stay: the reply parser needs tags such as </think> even when they are added tokens. */
  decode(ids: number[]): string {
    if (ids.length === 0) return "";
    return this.tokenizer.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }
}
