// Runs a child process to completion without blocking the event loop. Tests use it instead of spawnSync for
// anything that can take more than a moment: vitest's worker reports to the main process over an RPC with a
// 60 s deadline, and a worker blocked in spawnSync for a minute (a compiler run, a sanitizer run) fails the
// whole suite with "Timeout calling onTaskUpdate" even though every test passed.
import { spawn } from "node:child_process";

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** A file descriptor to write the child's stdout to instead of collecting it (then `stdout` is ""). */
  stdout?: number;
}

/** Never throws for a non-zero exit; a timeout kills the child and reports code null. */
export function runCommand(cmd: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: options.cwd,
      env: options.env,
      stdio: ["ignore", options.stdout ?? "pipe", "pipe"],
      timeout: options.timeoutMs,
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
