// Whether xgrammar can compile a response format's JSON schema, asked of a disposable copy of xgrammar in a
// worker thread, before any grammar is compiled for real. Why a worker: xgrammar (WebAssembly) aborts on what
// it cannot compile (a regex `pattern` with a lookbehind, a word boundary, a backreference, ...), and every abort
// leaves its instance a little broken (after a couple of dozen, valid schemas fail to compile as well); so the
// worker that saw an abort is thrown away, and the API (which refuses the request with a 400) and the last stage
// (which compiles only what passed) never run an abort in their own copy.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";

/** How the JSON of a response format is written: one line, ", " and ": " between items (json-format.ts). */
export const JSON_SCHEMA_ARGS = {
  anyWhitespace: false,
  indent: -1,
  separators: [", ", ": "],
  strict: true,
} as const;

/** A check that runs longer than this is taken as a failure (a schema xgrammar chokes on). */
const CHECK_TIMEOUT_MS = 10_000;

// The worker: loads xgrammar as json-format.ts does (its UMD bundle publishes globalThis.xgrammar), converts each
// schema it is sent, and answers ok or xgrammar's own words (its "[FATAL] file:line: message" lines).
const WORKER = `
const { parentPort, workerData } = require("node:worker_threads");
const path = require("node:path");
delete globalThis.exports;
delete globalThis.module;
globalThis.__filename = workerData.file;
globalThis.__dirname = path.dirname(workerData.file);
let said = [];
console.error = (...parts) => { said.push(parts.join(" ")); };
console.warn = console.error;
const loaded = import(workerData.url).then(() => globalThis.xgrammar);
parentPort.on("message", async ({ schema, args }) => {
  said = [];
  try {
    const xg = await loaded;
    await xg.Grammar.fromJSONSchema(schema, args.anyWhitespace, args.indent, args.separators, args.strict);
    parentPort.postMessage({ ok: true });
  } catch (err) {
    const fatal = said.find((line) => line.startsWith("[FATAL]"));
    const message = fatal ? fatal.replace(/^\\[FATAL\\]\\s*\\S+:\\d+:\\s*/, "") : String(err && err.message || err);
    parentPort.postMessage({ ok: false, message });
  }
});
`;

let worker: Worker | undefined;
let queue: Promise<unknown> = Promise.resolve();
const results = new Map<string, Promise<Answer>>();

function startWorker(): Worker {
  const require = createRequire(import.meta.url);
  const file = require.resolve("@mlc-ai/web-xgrammar");
  const w = new Worker(WORKER, { eval: true, workerData: { file, url: pathToFileURL(file).href } });
  w.unref();
  return w;
}

function discardWorker(w: Worker): void {
  if (worker === w) worker = undefined;
  void w.terminate();
}

interface Answer {
  problem: string | undefined;
  /** False when the worker failed or ran out of time: not an answer about the schema, so not remembered. */
  definite: boolean;
}

/** One schema through the worker: undefined when it compiles, else why not. */
function runCheck(schema: string): Promise<Answer> {
  worker ??= startWorker();
  const w = worker;
  return new Promise((resolve) => {
    const done = (problem: string | undefined, definite: boolean) => {
      clearTimeout(timer);
      w.off("message", onMessage).off("error", onError).off("exit", onExit);
      // A worker that saw an abort (or failed) is not trusted again.
      if (problem !== undefined) discardWorker(w);
      resolve({ problem, definite });
    };
    const onMessage = (m: { ok: boolean; message?: string }) =>
      done(m.ok ? undefined : (m.message ?? "xgrammar could not compile it"), true);
    const onError = (err: Error) => done(`xgrammar failed: ${err.message}`, false);
    const onExit = () => done("xgrammar's worker stopped", false);
    const timer = setTimeout(
      () => done(`xgrammar did not compile it within ${CHECK_TIMEOUT_MS / 1000} s`, false),
      CHECK_TIMEOUT_MS,
    );
    w.on("message", onMessage).on("error", onError).on("exit", onExit);
    w.postMessage({ schema, args: JSON_SCHEMA_ARGS });
  });
}

/**
 * Why xgrammar cannot compile this JSON schema (its own message, e.g. "Regex parsing error at position 3:
 * Lookbehind is not supported yet."), or undefined when it can. One check at a time; answers about the schema
 * are remembered (a worker that failed or ran out of time is not an answer, and is asked again next time).
 */
export function jsonSchemaProblem(schema: Record<string, unknown>): Promise<string | undefined> {
  const key = JSON.stringify(schema);
  let result = results.get(key);
  if (!result) {
    const answer = queue.then(() => runCheck(key));
    queue = answer;
    if (results.size >= 256) results.delete(results.keys().next().value as string);
    results.set(key, answer);
    void answer.then((a) => {
      if (!a.definite && results.get(key) === answer) results.delete(key);
    });
    result = answer;
  }
  return result.then((a) => a.problem);
}
