// Renders the files that make `cluster up` a login service: a launchd agent on macOS, a systemd user unit on
// Linux. The templates live in deploy/; this module fills them, escaping values for each format.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ClusterError } from "../common/errors.js";
import { packageRoot } from "../common/paths.js";

export type ServiceKind = "launchd" | "systemd";

/** What the service runs and with which surroundings. */
export interface ServiceSpec {
  /** launchd Label and systemd unit name (without ".service"). */
  name: string;
  /** Full argv: the node binary, the cluster entry point, "up", then the baked `cluster up` options. */
  programArguments: string[];
  workingDirectory: string;
  environment: Record<string, string>;
}

/** Where a service's files go on this machine. */
export interface ServiceLayout {
  kind: ServiceKind;
  /** The plist or unit file. */
  unitPath: string;
  /** Folder of the log files (macOS), or of the node's state (Linux, where logs go to the journal). */
  logDir: string;
  stdoutPath?: string;
  stderrPath?: string;
  /** How to read the logs, for the user. */
  logHint: string;
}

export const DEFAULT_SERVICE_NAME = "studio-cluster";

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

export function validateServiceName(name: string): string {
  if (!NAME_PATTERN.test(name))
    throw new ClusterError(
      "bad_request",
      `service name "${name}" is invalid: use 1 to 100 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`,
    );
  return name;
}

export function serviceKindFor(platform: NodeJS.Platform): ServiceKind {
  if (platform === "darwin") return "launchd";
  if (platform === "linux") return "systemd";
  throw new ClusterError(
    "bad_request",
    `cluster service supports macOS (launchd) and Linux (systemd user units); this machine is ${platform}`,
  );
}

export function serviceLayout(kind: ServiceKind, home: string, name: string): ServiceLayout {
  validateServiceName(name);
  if (kind === "launchd") {
    const logDir = join(home, "Library", "Logs", "studio-cluster");
    const stdoutPath = join(logDir, `${name}.log`);
    return {
      kind,
      unitPath: join(home, "Library", "LaunchAgents", `${name}.plist`),
      logDir,
      stdoutPath,
      stderrPath: join(logDir, `${name}.err.log`),
      logHint: `tail -f "${stdoutPath}"`,
    };
  }
  return {
    kind,
    unitPath: join(home, ".config", "systemd", "user", `${name}.service`),
    logDir: join(home, ".local", "state", "studio-cluster"),
    logHint: `journalctl --user -u ${name}.service -f`,
  };
}

function template(file: string): string {
  return readFileSync(join(packageRoot(), "deploy", file), "utf8");
}

/** Replaces every {{KEY}}; a placeholder without a value is a bug in this module, so it throws. */
function fill(text: string, values: Record<string, string>): string {
  return text.replace(/\{\{([A-Z_]+)\}\}/g, (_, key: string) => {
    const value = values[key];
    if (value === undefined) throw new Error(`service template placeholder {{${key}}} has no value`);
    return value;
  });
}

function xmlEscape(s: string): string {
  return s
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

function checkValue(what: string, s: string): string {
  // XML 1.0 and unit files cannot carry control characters; refuse rather than write a broken file.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find them
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\n\r]/.test(s))
    throw new ClusterError(
      "bad_request",
      `${what} contains a control character or newline: ${JSON.stringify(s)}`,
    );
  return s;
}

export function renderLaunchdPlist(spec: ServiceSpec, layout: ServiceLayout): string {
  const indent = (n: number) => " ".repeat(n);
  const args = spec.programArguments
    .map((a) => `${indent(4)}<string>${xmlEscape(checkValue("program argument", a))}</string>`)
    .join("\n");
  const env = Object.entries(spec.environment)
    .map(
      ([k, v]) =>
        `${indent(4)}<key>${xmlEscape(checkValue("environment name", k))}</key>\n` +
        `${indent(4)}<string>${xmlEscape(checkValue(`environment ${k}`, v))}</string>`,
    )
    .join("\n");
  return fill(template("launchd.plist.template"), {
    LABEL: xmlEscape(validateServiceName(spec.name)),
    PROGRAM_ARGUMENTS: args,
    WORKING_DIRECTORY: xmlEscape(checkValue("working directory", spec.workingDirectory)),
    ENVIRONMENT: env,
    STDOUT_PATH: xmlEscape(layout.stdoutPath ?? join(layout.logDir, `${spec.name}.log`)),
    STDERR_PATH: xmlEscape(layout.stderrPath ?? join(layout.logDir, `${spec.name}.err.log`)),
  });
}

/**
 * Quotes one word for a systemd command line or Environment= assignment: double quotes with C-style
 * escapes, and % and $ doubled so systemd neither expands specifiers nor variables in it.
 */
export function systemdQuote(word: string): string {
  const escaped = checkValue("systemd value", word).replace(/%/g, "%%").replace(/\$/g, "$$$$");
  if (/^[A-Za-z0-9_@+=:,./-]+$/.test(escaped)) return escaped;
  return `"${escaped.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

export function renderSystemdUnit(spec: ServiceSpec): string {
  const env = Object.entries(spec.environment)
    .map(([k, v]) => `Environment=${systemdQuote(`${k}=${v}`)}`)
    .join("\n");
  return fill(template("systemd.service.template"), {
    UNIT_NAME: validateServiceName(spec.name),
    EXEC_START: spec.programArguments.map(systemdQuote).join(" "),
    // WorkingDirectory= takes a plain path (no quoting); "-" would make a missing one non-fatal, which hides errors.
    WORKING_DIRECTORY: checkValue("working directory", spec.workingDirectory).replace(/%/g, "%%"),
    ENVIRONMENT: env,
  });
}

export function renderServiceFile(spec: ServiceSpec, layout: ServiceLayout): string {
  return layout.kind === "launchd" ? renderLaunchdPlist(spec, layout) : renderSystemdUnit(spec);
}
