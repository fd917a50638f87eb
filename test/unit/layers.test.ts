// The layout's dependency rule (scripts/layers.ts) holds over every import in the repository, and the check
// itself catches an import that breaks it.
import { describe, expect, it } from "vitest";
import { packageRoot } from "../../common/paths.js";
import { checkImport, layerViolations, relativeImports } from "../../scripts/layers.js";

describe("layout dependency rule", () => {
  it("no import in the repository breaks it", () => {
    const violations = layerViolations(packageRoot()).map(
      (v) => `${v.file} imports ${v.imports}: ${v.message}`,
    );
    expect(violations).toEqual([]);
  });

  it("refuses upward and sideways imports, allows downward ones", () => {
    const root = "/repo";
    expect(checkImport(root, "/repo/common/errors.ts", "/repo/api/server.js")).toMatch(
      /common\/ may import only/,
    );
    expect(checkImport(root, "/repo/coordinator/scheduler.ts", "/repo/cluster/controller.js")).toMatch(
      /not cluster\//,
    );
    expect(checkImport(root, "/repo/cluster/controller.ts", "/repo/node-agent/server.js")).toMatch(
      /not node-agent\//,
    );
    expect(checkImport(root, "/repo/native/index.ts", "/repo/coordinator/planner.js")).toBeDefined();
    expect(checkImport(root, "/repo/api/server.ts", "/repo/cluster/snapshot.js")).toBeUndefined();
    expect(checkImport(root, "/repo/node-agent/stage.ts", "/repo/native/index.js")).toBeUndefined();
    expect(checkImport(root, "/repo/test/unit/x.test.ts", "/repo/api/server.js")).toBeUndefined();
  });

  it("reads value, type-only, re-export and dynamic imports", () => {
    const source = [
      'import { a } from "../common/a.js";',
      'import type { B } from "./b.js";',
      'export { c } from "../chat/c.js";',
      'const d = await import("../api/d.js");',
      'import { readFileSync } from "node:fs";',
    ].join("\n");
    expect(relativeImports(source)).toEqual(["../common/a.js", "./b.js", "../chat/c.js", "../api/d.js"]);
  });
});
