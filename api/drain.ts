// What a shutdown waits on: the generations in flight and the /v1 responses still being written. New /v1
// requests are refused once it starts (see v1-plugin.ts).
import type { ServerResponse } from "node:http";
import { ClusterError } from "../common/errors.js";
import type { GenerationRun } from "./generation-run.js";

export class Drain {
  readonly live = new Set<GenerationRun>();
  private readonly open = new Set<ServerResponse>();
  closing = false;

  track(response: ServerResponse): void {
    this.open.add(response);
    response.once("close", () => this.open.delete(response));
  }

  /** Lets runs finish for graceMs, then fails the rest with a terminal event and waits for it to go out. */
  async run(graceMs: number): Promise<void> {
    this.closing = true;
    await until(() => this.live.size === 0, graceMs);
    const error = new ClusterError("cluster_not_ready", "this node is shutting down; retry on another node");
    for (const run of [...this.live]) run.fail(error);
    // The routes now write each failed run's terminal event; give them a moment to reach the client.
    await until(() => this.open.size === 0, 2000);
  }
}

async function until(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}
