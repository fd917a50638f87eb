// Where the cluster key comes from (--key, --key-file, $STUDIO_CLUSTER_KEY) and the node id's lock across a
// kill -9: a live holder keeps its slot, but a dead one's slot (and id) is reused even when its pid is now a
// zombie or another process's. Real files in a temporary home and real child processes.
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, describe, expect, it } from "vitest";
import {
  CLUSTER_KEY_ENV,
  claimNodeId,
  generateClusterKey,
  givenClusterKey,
} from "../../common/cluster-key.js";

const dirs: string[] = [];
const children: ChildProcess[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "cluster-key-"));
  dirs.push(dir);
  return dir;
}

afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Starts `command`, resolving with it and the first line it prints. */
function started(command: string, args: string[]): Promise<{ child: ChildProcess; line: string }> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", (line) => resolve({ child, line }));
    child.once("exit", (code) => reject(new Error(`${command} exited with ${code} before printing`)));
  });
}

describe("the cluster key the operator gives", () => {
  it("comes from --key, else --key-file, else $STUDIO_CLUSTER_KEY, each named", () => {
    const key = generateClusterKey();
    const file = join(tempDir(), "key");
    writeFileSync(file, `${key}\n`, { mode: 0o600 });
    expect(givenClusterKey({ key }, {})).toEqual({ key, from: "--key" });
    expect(givenClusterKey({ keyFile: file }, {})).toEqual({ key, from: `--key-file ${file}` });
    expect(givenClusterKey({}, { [CLUSTER_KEY_ENV]: key })).toEqual({ key, from: CLUSTER_KEY_ENV });
    expect(givenClusterKey({}, {})).toEqual({});
  });

  it("refuses a key file others can read, a bad one, a missing one, and --key with --key-file", () => {
    const dir = tempDir();
    const open = join(dir, "open");
    writeFileSync(open, generateClusterKey());
    chmodSync(open, 0o644);
    expect(() => givenClusterKey({ keyFile: open }, {})).toThrow(
      /others can read it \(mode 644\); chmod 600/,
    );
    const bad = join(dir, "bad");
    writeFileSync(bad, "short", { mode: 0o600 });
    expect(() => givenClusterKey({ keyFile: bad }, {})).toThrow(/--key-file .*bad: cluster key is invalid/);
    expect(() => givenClusterKey({ keyFile: join(dir, "none") }, {})).toThrow(/--key-file .*none: ENOENT/);
    expect(() => givenClusterKey({ key: "k", keyFile: bad }, {})).toThrow(/not both/);
  });
});

describe("the node id across a kill -9", () => {
  const holderScript = (home: string) =>
    `import(${JSON.stringify(join(process.cwd(), "dist", "common", "cluster-key.js"))}).then((m) => {` +
    `const id = m.claimNodeId({ home: ${JSON.stringify(home)}, instance: "slot" });` +
    "console.log(JSON.stringify(id)); setInterval(() => {}, 1000); });";

  it("a live holder keeps its slot; once killed, its id is reused even if its pid is reused or a zombie", async () => {
    const home = tempDir();
    const { child, line } = await started(process.execPath, [
      "--input-type=module",
      "-e",
      holderScript(home),
    ]);
    const held = JSON.parse(line) as { nodeId: string; instance: string };
    expect(held.instance).toBe("slot");
    // While it lives, another claimant gets the next slot and another id.
    const other = claimNodeId({ home, instance: "slot" });
    expect(other.instance).toBe("slot-2");
    expect(other.nodeId).not.toBe(held.nodeId);
    other.release();

    const lockFile = join(home, "nodes", "slot.pid");
    const [, ...stamp] = readFileSync(lockFile, "utf8").split(" ");
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
    // Its pid now belongs to another live process (as after a reboot, or pids wrapping): simulated with our
    // parent's pid and the dead holder's start stamp.
    writeFileSync(lockFile, `${process.ppid} ${stamp.join(" ")}`);
    const again = claimNodeId({ home, instance: "slot" });
    expect([again.instance, again.nodeId]).toEqual(["slot", held.nodeId]);
    again.release();

    // A zombie holder (exited, never reaped by its parent), written as older versions wrote the lock: a bare pid.
    const { line: zombiePid } = await started("sh", ["-c", "sleep 0 & echo $!; exec sleep 30"]);
    await new Promise((r) => setTimeout(r, 200));
    writeFileSync(lockFile, zombiePid.trim());
    const afterZombie = claimNodeId({ home, instance: "slot" });
    expect([afterZombie.instance, afterZombie.nodeId]).toEqual(["slot", held.nodeId]);
    afterZombie.release();
  });
});
