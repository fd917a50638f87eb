// `cluster service install|uninstall|status`: runs `cluster up` (with the options given here baked in) as a
// login service, a launchd agent on macOS or a systemd user unit on Linux, and says what it did.
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Command } from "commander";
import { ClusterError, errorMessage } from "../../common/errors.js";
import { packageRoot } from "../../common/paths.js";
import {
  DEFAULT_SERVICE_NAME,
  renderServiceFile,
  type ServiceLayout,
  type ServiceSpec,
  serviceKindFor,
  serviceLayout,
} from "../service-files.js";

/** The machine the service is installed on; tests give a temporary home and record the commands. */
export interface ServiceHost {
  platform: NodeJS.Platform;
  home: string;
  uid: number;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Runs a system tool. `missing` when it is not installed. */
  run(command: string, args: string[]): { code: number; output: string; missing?: boolean };
  say(line: string): void;
}

export interface InstallOptions {
  name: string;
  /** `cluster up` options, as typed. */
  upArgs: string[];
  /** Node binary and cluster entry point the service runs (default: this node and dist/cli/main.js). */
  node?: string;
  entry?: string;
  /** Long flags `cluster up` accepts; when given, anything else is refused before a file is written. */
  upFlags?: ReadonlySet<string>;
  load: boolean;
  dryRun: boolean;
}

export interface InstallResult {
  layout: ServiceLayout;
  spec: ServiceSpec;
  contents: string;
  loaded: boolean;
}

export function systemHost(): ServiceHost {
  return {
    platform: process.platform,
    home: homedir(),
    uid: process.getuid?.() ?? 0,
    cwd: process.cwd(),
    env: process.env,
    run(command, args) {
      const r = spawnSync(command, args, { encoding: "utf8", timeout: 30_000 });
      if (r.error && (r.error as NodeJS.ErrnoException).code === "ENOENT")
        return { code: 127, output: "", missing: true };
      return { code: r.status ?? 1, output: `${r.stdout ?? ""}${r.stderr ?? ""}`.trim() };
    },
    say: (line) => process.stdout.write(`${line}\n`),
  };
}

/** Options whose value is a path: made absolute, since the service does not start in today's folder. */
const PATH_OPTIONS = new Set(["--model"]);

/** Checks the `cluster up` options against `upFlags` and makes path values absolute. */
export function normalizeUpArgs(args: string[], cwd: string, upFlags?: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!arg.startsWith("-")) {
      out.push(arg);
      continue;
    }
    const [flag, inline] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg];
    if (upFlags && !upFlags.has(flag))
      throw new ClusterError("bad_request", `cluster up has no option ${flag} (see cluster up --help)`);
    if (!PATH_OPTIONS.has(flag)) {
      out.push(arg);
      continue;
    }
    const value = inline ?? args[++i];
    if (value === undefined || value === "") throw new ClusterError("bad_request", `${flag} needs a value`);
    out.push(flag, resolve(cwd, value));
  }
  return out;
}

/** Variables that configure studio-cluster travel into the service (the service does not see this shell). */
function serviceEnvironment(host: ServiceHost, node: string): Record<string, string> {
  const env: Record<string, string> = {
    PATH: [
      ...new Set([
        dirname(node),
        "/opt/homebrew/bin",
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
        "/usr/sbin",
        "/sbin",
      ]),
    ].join(":"),
  };
  for (const [k, v] of Object.entries(host.env))
    if (k.startsWith("STUDIO_CLUSTER_") && v !== undefined) env[k] = v;
  return env;
}

export function buildServiceSpec(host: ServiceHost, options: InstallOptions): ServiceSpec {
  const node = options.node ?? process.execPath;
  const entry = options.entry ?? join(packageRoot(), "dist", "cli", "main.js");
  return {
    name: options.name,
    programArguments: [node, entry, "up", ...normalizeUpArgs(options.upArgs, host.cwd, options.upFlags)],
    workingDirectory: host.home,
    environment: serviceEnvironment(host, node),
  };
}

function launchdTarget(host: ServiceHost, name?: string): string {
  return name ? `gui/${host.uid}/${name}` : `gui/${host.uid}`;
}

/** Runs one system command and reports it; returns whether it succeeded. */
function step(host: ServiceHost, command: string, args: string[], quiet = false): boolean {
  const r = host.run(command, args);
  const line = [command, ...args].join(" ");
  if (r.missing) {
    host.say(`  ${command} is not available here; run yourself: ${line}`);
    return false;
  }
  if (r.code === 0) {
    if (!quiet) host.say(`  ran: ${line}`);
    return true;
  }
  if (!quiet)
    host.say(`  failed (${r.code}): ${line}${r.output ? `\n    ${r.output.replace(/\n/g, "\n    ")}` : ""}`);
  return false;
}

/** Runs commands in order; after the first failure, lists the rest for the user to run by hand. */
function steps(host: ServiceHost, commands: [string, string[]][]): boolean {
  for (const [i, [command, args]] of commands.entries()) {
    if (step(host, command, args)) continue;
    for (const [c, a] of commands.slice(i + 1)) host.say(`  then: ${[c, ...a].join(" ")}`);
    return false;
  }
  return true;
}

function loadService(host: ServiceHost, layout: ServiceLayout, name: string): boolean {
  if (layout.kind === "launchd") {
    // bootout first so that a reinstall picks up the new arguments; failing means it was not loaded.
    step(host, "launchctl", ["bootout", launchdTarget(host, name)], true);
    return step(host, "launchctl", ["bootstrap", launchdTarget(host), layout.unitPath]);
  }
  const unit = `${name}.service`;
  return steps(host, [
    ["systemctl", ["--user", "daemon-reload"]],
    ["systemctl", ["--user", "enable", unit]],
    // restart, not start: a reinstall must pick up the new arguments.
    ["systemctl", ["--user", "restart", unit]],
  ]);
}

function unloadService(host: ServiceHost, layout: ServiceLayout, name: string): void {
  if (layout.kind === "launchd") {
    step(host, "launchctl", ["bootout", launchdTarget(host, name)]);
    return;
  }
  step(host, "systemctl", ["--user", "disable", "--now", `${name}.service`]);
}

export function installService(host: ServiceHost, options: InstallOptions): InstallResult {
  const layout = serviceLayout(serviceKindFor(host.platform), host.home, options.name);
  const spec = buildServiceSpec(host, options);
  const contents = renderServiceFile(spec, layout);
  if (options.dryRun) {
    host.say(`would write ${layout.unitPath}:\n\n${contents}`);
    return { layout, spec, contents, loaded: false };
  }
  const entry = spec.programArguments[1];
  if (!existsSync(entry))
    host.say(`warning: ${entry} does not exist yet; build it (npm run build) before the service starts`);
  const replaced = existsSync(layout.unitPath);
  mkdirSync(dirname(layout.unitPath), { recursive: true });
  mkdirSync(layout.logDir, { recursive: true });
  // Owner-only: the baked options may hold the API key.
  writeFileSync(layout.unitPath, contents, { mode: 0o600 });
  chmodSync(layout.unitPath, 0o600);
  host.say(`${replaced ? "replaced" : "wrote"} ${layout.unitPath}`);
  host.say(`  runs: ${spec.programArguments.join(" ")}`);
  const loaded = options.load && loadService(host, layout, options.name);
  if (!options.load) host.say("  not loaded (--no-load); it starts at the next login");
  host.say(`logs: ${layout.logHint}`);
  if (layout.kind === "systemd")
    host.say(`note: to keep it running while logged out: loginctl enable-linger ${host.env.USER ?? "$USER"}`);
  return { layout, spec, contents, loaded };
}

export function uninstallService(host: ServiceHost, name: string, dryRun = false): boolean {
  const layout = serviceLayout(serviceKindFor(host.platform), host.home, name);
  if (!existsSync(layout.unitPath)) {
    host.say(`${name} is not installed (no ${layout.unitPath})`);
    return false;
  }
  if (dryRun) {
    host.say(`would stop ${name} and remove ${layout.unitPath}`);
    return false;
  }
  unloadService(host, layout, name);
  rmSync(layout.unitPath);
  host.say(`removed ${layout.unitPath}`);
  if (layout.kind === "systemd") step(host, "systemctl", ["--user", "daemon-reload"]);
  host.say(`logs are kept in ${layout.kind === "launchd" ? layout.logDir : "the journal"}`);
  return true;
}

export function serviceStatus(host: ServiceHost, name: string): boolean {
  const layout = serviceLayout(serviceKindFor(host.platform), host.home, name);
  if (!existsSync(layout.unitPath)) {
    host.say(`${name}: not installed (no ${layout.unitPath})`);
    return false;
  }
  host.say(`${name}: installed at ${layout.unitPath}`);
  const text = readFileSync(layout.unitPath, "utf8");
  const exec = /^ExecStart=(.*)$/m.exec(text)?.[1];
  if (exec) host.say(`  runs: ${exec}`);
  const [command, args] =
    layout.kind === "launchd"
      ? ["launchctl", ["print", launchdTarget(host, name)]]
      : ["systemctl", ["--user", "status", "--no-pager", `${name}.service`]];
  const r = host.run(command, args);
  if (r.missing) host.say(`  ${command} is not available here`);
  else if (layout.kind === "launchd") host.say(`  ${launchdState(r.code, r.output)}`);
  else host.say(r.output.replace(/^/gm, "  "));
  host.say(`logs: ${layout.logHint}`);
  return true;
}

function launchdState(code: number, output: string): string {
  if (code !== 0) return "not loaded";
  const state = /^\s*state = (.*)$/m.exec(output)?.[1] ?? "loaded";
  const pid = /^\s*pid = (\d+)$/m.exec(output)?.[1];
  return pid ? `${state} (pid ${pid})` : state;
}

/** Long flags of the sibling `cluster up` command, when it is registered. */
function upFlagsOf(program: Command): Set<string> | undefined {
  const up = program.commands.find((c) => c.name() === "up");
  if (!up) return undefined;
  const flags = new Set<string>(["--help"]);
  for (const o of up.options) {
    if (o.long) flags.add(o.long);
    if (o.short) flags.add(o.short);
  }
  return flags;
}

function fail(err: unknown): never {
  process.stderr.write(`cluster service: ${errorMessage(err)}\n`);
  process.exit(1);
}

export function register(program: Command): void {
  const service = program
    .command("service")
    .description("Run `cluster up` as a login service (launchd on macOS, systemd --user on Linux)");

  service
    .command("install")
    .description("Install and start the service, baking in the `cluster up` options that follow")
    .argument(
      "[up-options...]",
      "options for `cluster up`, e.g. --model ~/models/MiniMax-M2.1 --interface bridge0",
    )
    .allowUnknownOption()
    .option("--label <name>", "service name (launchd label / systemd unit)", DEFAULT_SERVICE_NAME)
    .option("--no-load", "write the service file but do not load it now")
    .option("--dry-run", "print the service file instead of writing it")
    .addHelpText(
      "after",
      "\nEvery `cluster up` option may follow, e.g.\n" +
        "  cluster service install --model ~/models/MiniMax-M2.1-4bit --interface bridge0 --api-host 0.0.0.0 --api-key KEY",
    )
    .action((upArgs: string[], opts: { label: string; load: boolean; dryRun?: boolean }) => {
      try {
        installService(systemHost(), {
          name: opts.label,
          upArgs,
          upFlags: upFlagsOf(program),
          load: opts.load,
          dryRun: opts.dryRun === true,
        });
      } catch (err) {
        fail(err);
      }
    });

  service
    .command("uninstall")
    .description("Stop the service and remove its file (logs stay)")
    .option("--label <name>", "service name", DEFAULT_SERVICE_NAME)
    .option("--dry-run", "say what would be removed")
    .action((opts: { label: string; dryRun?: boolean }) => {
      try {
        uninstallService(systemHost(), opts.label, opts.dryRun === true);
      } catch (err) {
        fail(err);
      }
    });

  service
    .command("status")
    .description("Say whether the service is installed and running, and where its logs are")
    .option("--label <name>", "service name", DEFAULT_SERVICE_NAME)
    .action((opts: { label: string }) => {
      try {
        if (!serviceStatus(systemHost(), opts.label)) process.exitCode = 3;
      } catch (err) {
        fail(err);
      }
    });
}
