// Child process of test/engine/checkpoint-fuzz.test.ts: opens every engine case of a fuzz run (a JSON file of
// FuzzCase) and prints one JSON line per case: refused with which message, or accepted. Run under the
// AddressSanitizer build of the addon (STUDIO_ENGINE_ADDON + LD_PRELOAD), a bad read aborts it with a report.
import { readFileSync } from "node:fs";
import { readModelConfig } from "../../common/model-config.js";
import { openEngine } from "../../native/index.js";
import type { FuzzCase } from "./checkpoint-fuzz-cases.js";

export interface FuzzOutcome {
  id: number;
  refused: boolean;
  message: string;
}

/** Opens the case's checkpoint whole; an accepted one also runs a short forward pass. */
export async function tryCase(c: FuzzCase): Promise<FuzzOutcome> {
  try {
    const config = readModelConfig(c.dir);
    const engine = await openEngine({
      modelDir: c.dir,
      layerStart: 0,
      layerEnd: config.numLayers,
      embed: true,
      head: true,
      threads: 1,
    });
    try {
      await engine.forward([{ seq: 1, position: 0, tokens: Int32Array.from([1, 2, 3]), sampling: {} }]);
    } finally {
      await engine.close();
    }
    return { id: c.id, refused: false, message: "" };
  } catch (err) {
    return { id: c.id, refused: true, message: err instanceof Error ? err.message : String(err) };
  }
}

async function main(): Promise<void> {
  const cases = JSON.parse(readFileSync(process.argv[2], "utf8")) as FuzzCase[];
  for (const c of cases) process.stdout.write(`${JSON.stringify(await tryCase(c))}\n`);
}

if (process.argv[1]?.endsWith("checkpoint-fuzz-child.js")) await main();
