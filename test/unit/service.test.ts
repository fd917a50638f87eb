// `cluster service`: the launchd plist and the systemd unit carry the baked `cluster up` options exactly
// (checked by parsing the files back), and install/uninstall/status write, load and remove them.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  buildServiceSpec,
  installService,
  normalizeUpArgs,
  type ServiceHost,
  serviceStatus,
  uninstallService,
} from "../../cli/commands/service.js";
import {
  renderLaunchdPlist,
  renderSystemdUnit,
  serviceKindFor,
  serviceLayout,
  validateServiceName,
} from "../../cli/service-files.js";

// ---- a small plist reader: dict, array, string, integer, true, false ----

type PlistValue = string | number | boolean | PlistValue[] | { [key: string]: PlistValue };

function decodeXml(s: string): string {
  return s.replace(/&(lt|gt|quot|apos|amp);/g, (_, e: string) =>
    e === "lt" ? "<" : e === "gt" ? ">" : e === "quot" ? '"' : e === "apos" ? "'" : "&",
  );
}

function parsePlist(xml: string): PlistValue {
  const body = xml
    .replace(/<\?xml[^>]*\?>/, "")
    .replace(/<!DOCTYPE[^>]*>/, "")
    .replace(/<!--[\s\S]*?-->/g, "");
  const tokens = [...body.matchAll(/<(\/?)([a-z]+)(?:\s[^>]*?)?(\/?)>|([^<]+)/g)].filter(
    (m) => m[4] === undefined || m[4].trim(),
  );
  let i = 0;
  const expectClose = (tag: string) => {
    const t = tokens[i++];
    if (t?.[1] !== "/" || t[2] !== tag) throw new Error(`expected </${tag}> at token ${i}`);
  };
  const text = (tag: string): string => {
    if (tokens[i]?.[4] !== undefined) {
      const value = decodeXml(tokens[i++][4]);
      expectClose(tag);
      return value;
    }
    expectClose(tag);
    return "";
  };
  const value = (): PlistValue => {
    const t = tokens[i++];
    if (!t || t[4] !== undefined || t[1] === "/") throw new Error(`expected a value at token ${i}`);
    const tag = t[2];
    if (t[3] === "/") {
      if (tag === "true") return true;
      if (tag === "false") return false;
      throw new Error(`unexpected <${tag}/>`);
    }
    if (tag === "string") return text("string");
    if (tag === "integer") return Number(text("integer"));
    if (tag === "array") {
      const items: PlistValue[] = [];
      while (tokens[i] && tokens[i][1] !== "/") items.push(value());
      expectClose("array");
      return items;
    }
    if (tag === "dict") {
      const dict: Record<string, PlistValue> = {};
      while (tokens[i] && tokens[i][1] !== "/") {
        const k = tokens[i++];
        if (k[2] !== "key") throw new Error(`expected <key> in dict, got ${k[0]}`);
        const key = text("key");
        dict[key] = value();
      }
      expectClose("dict");
      return dict;
    }
    throw new Error(`unknown plist element <${tag}>`);
  };
  const open = tokens[i++];
  if (open?.[2] !== "plist") throw new Error("not a plist");
  const root = value();
  expectClose("plist");
  if (i !== tokens.length) throw new Error("trailing content after </plist>");
  return root;
}

// ---- systemd unit reading: sections, and ExecStart split the way systemd splits it ----

function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const line of text.split("\n")) {
    if (line.trim() === "" || line.startsWith("#")) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1], current);
      continue;
    }
    const eq = line.indexOf("=");
    if (!current || eq < 0) throw new Error(`bad unit line: ${line}`);
    const key = line.slice(0, eq);
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1)]);
  }
  return sections;
}

/** systemd's word splitting: whitespace separates, "double quotes" group with \-escapes, %% and $$ unescape. */
function systemdWords(line: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    while (line[i] === " ") i++;
    if (i >= line.length) break;
    let word = "";
    if (line[i] === '"') {
      i++;
      while (i < line.length && line[i] !== '"') {
        if (line[i] === "\\") i++;
        word += line[i++];
      }
      i++;
    } else {
      while (i < line.length && line[i] !== " ") word += line[i++];
    }
    words.push(word.replace(/%%/g, "%").replace(/\$\$/g, "$"));
  }
  return words;
}

// ---- a host with a temporary home that records the system commands instead of running them ----

interface RecordingHost extends ServiceHost {
  commands: string[];
  lines: string[];
}

const homes: string[] = [];
afterEach(() => {
  for (const h of homes.splice(0)) rmSync(h, { recursive: true, force: true });
});

function host(platform: NodeJS.Platform, tools: "present" | "missing" = "present"): RecordingHost {
  const home = mkdtempSync(join(tmpdir(), "service-home-"));
  homes.push(home);
  const commands: string[] = [];
  const lines: string[] = [];
  return {
    platform,
    home,
    uid: 501,
    cwd: join(home, "work"),
    env: { STUDIO_CLUSTER_HOME: join(home, ".sc"), UNRELATED: "x", USER: "ada" },
    commands,
    lines,
    run(command, args) {
      commands.push([command, ...args].join(" "));
      if (tools === "missing") return { code: 127, output: "", missing: true };
      // launchctl bootout of a service that is not loaded fails, as on a real Mac.
      if (args[0] === "bootout" && !commands.some((c) => c.includes("bootstrap")))
        return { code: 3, output: "" };
      return { code: 0, output: "" };
    },
    say: (line) => lines.push(line),
  };
}

const NODE = "/opt/node 20/bin/node";
const ENTRY = "/opt/studio-cluster/dist/cli/main.js";
const UP_FLAGS = new Set([
  "--model",
  "--interface",
  "--api-host",
  "--api-key",
  "--peer",
  "--name",
  "--no-bonjour",
]);
const TRICKY_KEY = `k&<"'>%$HOME \\x`;

function upArgs(): string[] {
  return [
    "--model",
    "models/MiniMax M2.1",
    "--interface",
    "bridge0",
    "--api-host",
    "0.0.0.0",
    "--api-key",
    TRICKY_KEY,
    "--peer",
    "10.0.0.2:7400",
    "--no-bonjour",
  ];
}

function expectedArgs(h: ServiceHost): string[] {
  return [
    NODE,
    ENTRY,
    "up",
    "--model",
    join(h.cwd, "models/MiniMax M2.1"),
    "--interface",
    "bridge0",
    "--api-host",
    "0.0.0.0",
    "--api-key",
    TRICKY_KEY,
    "--peer",
    "10.0.0.2:7400",
    "--no-bonjour",
  ];
}

describe("service files", () => {
  it("renders a launchd plist with the baked options, keep-alive and log paths", () => {
    const h = host("darwin");
    const layout = serviceLayout("launchd", h.home, "studio-cluster");
    const spec = buildServiceSpec(h, {
      name: "studio-cluster",
      upArgs: upArgs(),
      node: NODE,
      entry: ENTRY,
      upFlags: UP_FLAGS,
      load: false,
      dryRun: false,
    });
    const plist = parsePlist(renderLaunchdPlist(spec, layout)) as Record<string, PlistValue>;
    expect(plist.Label).toBe("studio-cluster");
    expect(plist.ProgramArguments).toEqual(expectedArgs(h));
    expect(plist.RunAtLoad).toBe(true);
    expect(plist.KeepAlive).toEqual({ SuccessfulExit: false });
    expect(plist.ProcessType).toBe("Interactive");
    expect(plist.StandardOutPath).toBe(join(h.home, "Library/Logs/studio-cluster/studio-cluster.log"));
    expect(plist.StandardErrorPath).toBe(join(h.home, "Library/Logs/studio-cluster/studio-cluster.err.log"));
    expect(plist.WorkingDirectory).toBe(h.home);
    const env = plist.EnvironmentVariables as Record<string, string>;
    expect(env.STUDIO_CLUSTER_HOME).toBe(join(h.home, ".sc"));
    expect(env.UNRELATED).toBeUndefined();
    expect(env.PATH.split(":")[0]).toBe("/opt/node 20/bin");
    expect(layout.unitPath).toBe(join(h.home, "Library/LaunchAgents/studio-cluster.plist"));
  });

  it("renders a systemd user unit whose ExecStart splits back into the same arguments", () => {
    const h = host("linux");
    const spec = buildServiceSpec(h, {
      name: "studio-cluster",
      upArgs: upArgs(),
      node: NODE,
      entry: ENTRY,
      upFlags: UP_FLAGS,
      load: false,
      dryRun: false,
    });
    const unit = parseUnit(renderSystemdUnit(spec));
    const service = unit.get("Service")!;
    expect(service.get("ExecStart")).toHaveLength(1);
    expect(systemdWords(service.get("ExecStart")![0])).toEqual(expectedArgs(h));
    expect(service.get("Restart")).toEqual(["on-failure"]);
    expect(service.get("WorkingDirectory")).toEqual([h.home]);
    const env = (service.get("Environment") ?? []).map((e) => systemdWords(e)[0]);
    expect(env).toContain(`STUDIO_CLUSTER_HOME=${join(h.home, ".sc")}`);
    expect(unit.get("Install")!.get("WantedBy")).toEqual(["default.target"]);
    expect(serviceLayout("systemd", h.home, "studio-cluster").unitPath).toBe(
      join(h.home, ".config/systemd/user/studio-cluster.service"),
    );
  });

  it("refuses what it cannot express: unknown up options, bad names, other platforms, newlines", () => {
    expect(() => normalizeUpArgs(["--modle", "x"], "/", UP_FLAGS)).toThrow(
      /cluster up has no option --modle/,
    );
    expect(normalizeUpArgs(["--model=rel/m"], "/home/ada", UP_FLAGS)).toEqual(["--model", "/home/ada/rel/m"]);
    expect(() => normalizeUpArgs(["--model"], "/", UP_FLAGS)).toThrow(/--model needs a value/);
    expect(() => validateServiceName("../evil")).toThrow(/service name "..\/evil" is invalid/);
    expect(() => serviceKindFor("win32")).toThrow(/this machine is win32/);
    const h = host("linux");
    expect(() =>
      renderSystemdUnit(
        buildServiceSpec(h, {
          name: "s",
          upArgs: ["--name", "a\nb"],
          node: NODE,
          entry: ENTRY,
          load: false,
          dryRun: false,
        }),
      ),
    ).toThrow(/newline/);
  });
});

describe("cluster service install/uninstall/status", () => {
  it("on Linux writes the unit owner-only, enables and restarts it, then removes it", () => {
    const h = host("linux");
    const result = installService(h, {
      name: "studio-cluster",
      upArgs: upArgs(),
      node: NODE,
      entry: ENTRY,
      upFlags: UP_FLAGS,
      load: true,
      dryRun: false,
    });
    const path = join(h.home, ".config/systemd/user/studio-cluster.service");
    expect(result.loaded).toBe(true);
    expect(readFileSync(path, "utf8")).toBe(result.contents);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(existsSync(join(h.home, ".local/state/studio-cluster"))).toBe(true);
    expect(h.commands).toEqual([
      "systemctl --user daemon-reload",
      "systemctl --user enable studio-cluster.service",
      "systemctl --user restart studio-cluster.service",
    ]);
    expect(h.lines.join("\n")).toMatch(/journalctl --user -u studio-cluster.service/);

    expect(serviceStatus(h, "studio-cluster")).toBe(true);
    expect(h.commands.at(-1)).toBe("systemctl --user status --no-pager studio-cluster.service");

    h.commands.length = 0;
    expect(uninstallService(h, "studio-cluster")).toBe(true);
    expect(existsSync(path)).toBe(false);
    expect(h.commands).toEqual([
      "systemctl --user disable --now studio-cluster.service",
      "systemctl --user daemon-reload",
    ]);
    expect(serviceStatus(h, "studio-cluster")).toBe(false);
    expect(uninstallService(h, "studio-cluster")).toBe(false);
  });

  it("on macOS bootstraps the agent into the user's GUI domain and boots it out on uninstall", () => {
    const h = host("darwin");
    const result = installService(h, {
      name: "studio-cluster",
      upArgs: upArgs(),
      node: NODE,
      entry: ENTRY,
      load: true,
      dryRun: false,
    });
    const path = join(h.home, "Library/LaunchAgents/studio-cluster.plist");
    expect(result.loaded).toBe(true);
    expect(existsSync(join(h.home, "Library/Logs/studio-cluster"))).toBe(true);
    expect(h.commands).toEqual([
      "launchctl bootout gui/501/studio-cluster",
      `launchctl bootstrap gui/501 ${path}`,
    ]);
    h.commands.length = 0;
    uninstallService(h, "studio-cluster");
    expect(h.commands).toEqual(["launchctl bootout gui/501/studio-cluster"]);
    expect(existsSync(path)).toBe(false);
  });

  it("without systemctl writes the unit and says which commands to run", () => {
    const h = host("linux", "missing");
    const result = installService(h, {
      name: "node-b",
      upArgs: [],
      node: NODE,
      entry: ENTRY,
      load: true,
      dryRun: false,
    });
    expect(result.loaded).toBe(false);
    expect(existsSync(result.layout.unitPath)).toBe(true);
    const said = h.lines.join("\n");
    expect(said).toMatch(/systemctl is not available here; run yourself: systemctl --user daemon-reload/);
    expect(said).toMatch(/then: systemctl --user restart node-b.service/);
  });

  it("--dry-run writes nothing", () => {
    const h = host("linux");
    const result = installService(h, {
      name: "studio-cluster",
      upArgs: ["--interface", "bridge0"],
      node: NODE,
      entry: ENTRY,
      load: true,
      dryRun: true,
    });
    expect(existsSync(result.layout.unitPath)).toBe(false);
    expect(h.commands).toEqual([]);
    expect(h.lines[0]).toContain("ExecStart=");
  });
});

const analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].find((p) => existsSync(p));
if (!analyze) console.warn("systemd-analyze verify skipped: systemd-analyze is not installed");

describe.skipIf(!analyze)("systemd's own check", () => {
  it("systemd-analyze verify accepts the rendered unit", () => {
    const h = host("linux");
    // The real node binary: verify checks that ExecStart's program exists and is executable.
    const spec = buildServiceSpec(h, {
      name: "studio-cluster",
      upArgs: upArgs(),
      node: process.execPath,
      entry: ENTRY,
      upFlags: UP_FLAGS,
      load: false,
      dryRun: false,
    });
    const dir = mkdtempSync(join(tmpdir(), "service-unit-"));
    homes.push(dir);
    const path = join(dir, "studio-cluster.service");
    writeFileSync(path, renderSystemdUnit(spec));
    const r = spawnSync(analyze!, ["verify", path], { encoding: "utf8" });
    expect(`${r.stdout}${r.stderr}`.trim()).toBe("");
    expect(r.status).toBe(0);
  });
});
