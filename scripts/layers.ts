// The layout's dependency rule, checked over the TypeScript imports (test/unit/layers.test.ts runs it in the
// suite). Each top-level folder names the folders it may import from; imports within a folder are free.
// Dependencies point down only:
//   cli -> api -> cluster, dashboard -> coordinator -> common        api -> chat -> common
//   cli -> node-agent -> native -> common
//   cli, node-agent -> weights -> common
// weights/ is where the model's bytes come from (the hub, the local caches, the partial checkpoint store): the
// CLI resolves and pulls models with it and the node agent fills its partial checkpoint with it, so it sits
// below both and above common/ only; it knows nothing of the cluster (peers reach it through node-agent/).
// Nothing but cli/ imports api/ or node-agent/; common/ imports nothing of ours. Tests, benches and scripts
// may import anything.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";

export const allowedImports: Record<string, readonly string[]> = {
  common: [],
  native: ["common"],
  weights: ["common"],
  "node-agent": ["native", "weights", "common"],
  chat: ["common"],
  coordinator: ["common"],
  cluster: ["coordinator", "common"],
  dashboard: ["cluster", "common"],
  api: ["cluster", "dashboard", "coordinator", "chat", "common"],
  cli: ["api", "cluster", "dashboard", "coordinator", "chat", "node-agent", "native", "weights", "common"],
};

/** Folders whose files may import from anywhere (they exercise or measure the rest). */
const unrestricted = new Set(["test", "bench", "scripts"]);

export interface LayerViolation {
  file: string;
  imports: string;
  message: string;
}

/** Relative import specifiers of a TypeScript source ("./x.js", "../common/y.js"), type-only ones included. */
export function relativeImports(source: string): string[] {
  const specs: string[] = [];
  for (const m of source.matchAll(/(?:^|[\s;])(?:import|export)\b[^"'`;]*?from\s*["'](\.{1,2}\/[^"']+)["']/g))
    specs.push(m[1]);
  for (const m of source.matchAll(/\bimport\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g)) specs.push(m[1]);
  return specs;
}

function topFolder(root: string, file: string): string {
  return relative(root, file).split(sep)[0];
}

/** The rule's verdict on one import of `file` (both absolute paths under root). */
export function checkImport(root: string, file: string, target: string): string | undefined {
  const from = topFolder(root, file);
  const to = topFolder(root, target);
  if (from === to || unrestricted.has(from)) return undefined;
  const allowed = allowedImports[from];
  if (!allowed) return `${from}/ is not a known folder of the layout (scripts/layers.ts)`;
  if (to.startsWith("..")) return "imports from outside the repository";
  if (!allowed.includes(to))
    return `${from}/ may import only from ${allowed.length ? allowed.map((f) => `${f}/`).join(", ") : "itself"}, not ${to}/`;
  return undefined;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name === "node_modules" || name === "dist" || name.startsWith(".")) continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (name.endsWith(".ts") && !name.endsWith(".d.ts")) out.push(path);
  }
  return out;
}

/** Every import of the repository's TypeScript that breaks the rule. */
export function layerViolations(root: string): LayerViolation[] {
  const violations: LayerViolation[] = [];
  const folders = [...Object.keys(allowedImports), ...unrestricted];
  for (const folder of folders) {
    let files: string[];
    try {
      files = sourceFiles(join(root, folder));
    } catch {
      continue;
    }
    for (const file of files) {
      for (const spec of relativeImports(readFileSync(file, "utf8"))) {
        const target = resolve(dirname(file), spec);
        const message = checkImport(root, file, target);
        if (message) violations.push({ file: relative(root, file), imports: spec, message });
      }
    }
  }
  return violations;
}
