// Is a folder a complete MLX checkpoint? Cheap (headers only) and strict enough to catch what other tools leave
// half done: a missing or dangling shard, a truncated file, an index naming tensors a shard lacks.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { errorMessage } from "../common/errors.js";
import { readModelConfig } from "../common/model-config.js";
import { readIndex, readSafetensorsHeader } from "../common/safetensors.js";

const tokenizerFiles = ["tokenizer.json", "tokenizer.model"];

/** Why dir is not a complete checkpoint, or undefined when it is. */
export function checkpointProblem(dir: string): string | undefined {
  if (!existsSync(dir)) return `${dir}: missing`;
  try {
    readModelConfig(dir);
  } catch (err) {
    return errorMessage(err);
  }
  const hasTokenizer =
    tokenizerFiles.some((f) => existsSync(join(dir, f))) ||
    readdirSync(dir).some((f) => f.endsWith(".tiktoken"));
  if (!hasTokenizer) return `${dir}: no tokenizer (tokenizer.json, tokenizer.model or *.tiktoken)`;
  try {
    const index = readIndex(dir);
    const byFile = new Map<string, string[]>();
    for (const [name, file] of Object.entries(index.weightMap))
      byFile.set(file, [...(byFile.get(file) ?? []), name]);
    for (const [file, names] of byFile) {
      const path = join(dir, file);
      // existsSync follows links: a dangling cache pointer counts as missing.
      if (!existsSync(path)) return `${path}: missing`;
      const header = readSafetensorsHeader(path);
      let end = header.dataStart;
      for (const t of header.tensors.values()) end = Math.max(end, t.byteOffset + t.byteLength);
      const size = statSync(path).size;
      if (end !== size) return `${path}: ${size} bytes but its header describes ${end} (incomplete?)`;
      const absent = names.find((n) => !header.tensors.has(n));
      if (absent) return `${path}: the index names tensor "${absent}" but the file does not hold it`;
    }
  } catch (err) {
    return errorMessage(err);
  }
  return undefined;
}
