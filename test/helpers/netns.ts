// The `ip` command for the network-namespace tests (several machines simulated on one host), and the one check
// of whether they can run here. Each test builds its own topology with these; a test that cannot run skips,
// printing the reason this gives.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";

/** Runs `ip ARGS`; ok and everything it printed. */
export function ip(args: string[]): { ok: boolean; out: string } {
  const r = spawnSync("ip", args, { encoding: "utf8" });
  return { ok: r.status === 0, out: `${r.stdout ?? ""}${r.stderr ?? ""}${r.error ? String(r.error) : ""}` };
}

/** Runs `ip ARGS` and throws with its output when it fails. */
export function must(args: string[]): void {
  const r = ip(args);
  if (!r.ok) throw new Error(`ip ${args.join(" ")} failed: ${r.out}`);
}

/** Why network namespaces cannot be used here (not Linux, not root, no iproute2, refused), or undefined. */
export function netnsSkipReason(): string | undefined {
  if (process.platform !== "linux") return "network namespaces need Linux";
  if (process.getuid?.() !== 0) return "network namespaces need root";
  if (spawnSync("ip", ["-V"]).status !== 0) return "the `ip` command (iproute2) is not installed";
  const probe = `probe${randomBytes(3).toString("hex")}`;
  const added = ip(["netns", "add", probe]);
  ip(["netns", "delete", probe]);
  if (!added.ok) return `cannot create a network namespace here: ${added.out.trim()}`;
  return undefined;
}
