// 200 seeded mutations of a tiny checkpoint (truncated shards, header lengths that lie, corrupted headers, wrong
// dtypes / shapes / offsets, missing tensors, broken index, config.json and tokenizer.json): every one is
// refused with an error that names the file or the tensor, in this process and again in a child process
// running the addon built with AddressSanitizer, which must report nothing.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { packageRoot } from "../../common/paths.js";
import { asanEnv, buildAsanAddon } from "../helpers/asan-addon.js";
import { type FuzzCase, makeFuzzCases } from "../helpers/checkpoint-fuzz-cases.js";
import { type FuzzOutcome, tryCase } from "../helpers/checkpoint-fuzz-child.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";
import { runCommand } from "../helpers/run-command.js";

const COUNT = 200;
const SEED = 0x5eed_0008;
let root = "";
let cases: FuzzCase[] = [];

beforeAll(async () => {
  const modelDir = await ensureModel("tiny-4bit", "tiny");
  root = mkdtempSync(join(tmpdir(), "checkpoint-fuzz-"));
  cases = makeFuzzCases(modelDir, root, COUNT, SEED);
});
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

/** A good refusal names the mutated file, or the tensor at fault. */
function named(c: FuzzCase, message: string): boolean {
  return message.includes(c.file) || /tensor /.test(message);
}

function expectAllRefused(outcomes: FuzzOutcome[], label: string): void {
  const byId = new Map(cases.map((c) => [c.id, c]));
  const bad = outcomes.filter((o) => !o.refused || !named(byId.get(o.id)!, o.message));
  expect(
    bad.map((o) => `${byId.get(o.id)!.what} -> ${o.refused ? o.message : "ACCEPTED"}`),
    label,
  ).toEqual([]);
}

describe("malformed checkpoints", () => {
  it(`${COUNT} seeded mutations are all refused with a named error`, async () => {
    const engineCases = cases.filter((c) => c.target === "engine");
    const outcomes: FuzzOutcome[] = [];
    for (const c of engineCases) outcomes.push(await tryCase(c));
    for (const c of cases.filter((c) => c.target === "formatter")) {
      try {
        ChatFormatter.forModelDir(c.dir);
        outcomes.push({ id: c.id, refused: false, message: "" });
      } catch (err) {
        outcomes.push({ id: c.id, refused: true, message: err instanceof Error ? err.message : String(err) });
      }
    }
    expect(outcomes).toHaveLength(COUNT);
    expectAllRefused(outcomes, "in process");
    const kinds = new Map<string, number>();
    for (const c of cases)
      kinds.set(
        c.file.replace(/model-\d+-of-\d+/, "shard"),
        (kinds.get(c.file.replace(/model-\d+-of-\d+/, "shard")) ?? 0) + 1,
      );
    console.log(
      `checkpoint fuzz: ${COUNT} cases refused (${[...kinds].map(([k, n]) => `${k} ${n}`).join(", ")})`,
    );
  });

  it("the AddressSanitizer build of the addon refuses the same cases and reports nothing", async () => {
    const build = await buildAsanAddon((line) => console.log(line));
    if (!build.ok) {
      console.warn(`skipped: ${build.reason}`);
      return;
    }
    const engineCases = cases.filter((c) => c.target === "engine");
    const list = join(root, "cases.json");
    writeFileSync(list, JSON.stringify(engineCases));
    const entry = join(packageRoot(), "dist", "test", "helpers", "checkpoint-fuzz-child.js");
    if (!existsSync(entry)) throw new Error(`${entry} is missing: run \`npm run build\` before these tests`);
    const child = await runCommand(process.execPath, [entry, list], {
      env: asanEnv(build),
      timeoutMs: 240_000,
    });
    expect(child.stderr, "AddressSanitizer output").not.toMatch(
      /AddressSanitizer|LeakSanitizer|runtime error/,
    );
    expect(child.code, child.stderr.slice(-3000)).toBe(0);
    const outcomes = child.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as FuzzOutcome);
    expect(outcomes).toHaveLength(engineCases.length);
    expectAllRefused(outcomes, "under AddressSanitizer");
    console.log(`checkpoint fuzz under AddressSanitizer: ${outcomes.length} engine cases refused, no report`);
  }, 600_000);
});
