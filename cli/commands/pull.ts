// `cluster pull <org/name[@revision]>`: downloads a whole model from the Hugging Face hub into the Hugging Face
// cache (resumable, every file checked for its size and hash, the layout the hub's own tools read), and nothing
// else. `cluster up --model org/name` then finds it there, as do mlx-lm and the hf CLI.
import type { Command } from "commander";
import { errorMessage } from "../../common/errors.js";
import { hubEnv } from "../../weights/hub-env.js";
import { parseHubRef } from "../../weights/model-ref.js";
import { pullSnapshot } from "../../weights/pull.js";
import { createTransferBar } from "../progress.js";

export async function runPull(id: string): Promise<void> {
  const ref = parseHubRef(id);
  if (!ref) throw new Error(`"${id}" is not a Hugging Face model id (org/name or org/name@revision)`);
  const env = hubEnv();
  const bar = createTransferBar(ref.repo);
  const abort = new AbortController();
  process.once("SIGINT", () => abort.abort());
  try {
    const snapshot = await pullSnapshot(ref, {
      env,
      signal: abort.signal,
      onProgress: (p) => bar.update(p.done, p.total, p.file),
      log: (line) => process.stderr.write(`${line}\n`),
    });
    bar.stop();
    process.stdout.write(
      `${snapshot.fromCache ? "already complete in the cache" : `downloaded ${snapshot.downloaded} bytes`}: ${ref.repo}@${snapshot.commit}\n${snapshot.dir}\n`,
    );
  } finally {
    bar.stop();
  }
}

export function register(program: Command): void {
  program
    .command("pull")
    .description(
      "Download a model from the Hugging Face hub into the Hugging Face cache (resumable, verified)",
    )
    .argument("<model>", "a hub model id: org/name or org/name@revision")
    .addHelpText(
      "after",
      "\nHonours HF_ENDPOINT, HF_TOKEN (or the token file `hf auth login` writes), HF_HUB_OFFLINE, HF_HOME and HF_HUB_CACHE.",
    )
    .action(async (model: string) => {
      try {
        await runPull(model);
        process.exit(0);
      } catch (err) {
        process.stderr.write(`cluster pull: ${errorMessage(err)}\n`);
        process.exit(1);
      }
    });
}
