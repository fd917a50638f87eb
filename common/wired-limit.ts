// The GPU wired-memory limit of Apple silicon, as `sysctl iogpu.wired_limit_mb` sets it (macOS 14 and later; 0
// means the system default). Shared by the node that reads it and the planner that prints how to raise it.

export const MIB = 1024 * 1024;

/** The sysctl line that lets the GPU keep `bytes` wired (whole MiB, rounded up). */
export function wiredLimitCommand(bytes: number): string {
  return `sudo sysctl iogpu.wired_limit_mb=${Math.ceil(bytes / MIB)}`;
}
