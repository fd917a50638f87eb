// Chaos on real `cluster up` processes in network namespaces (issue 13, "Proof"): a seeded sequence of faults
// (SIGKILL, SIGSTOP, a full partition of one node) each followed by its heal (restart, SIGCONT, routes back),
// with two streams running through a node that is not the victim. After each step it checks what the cluster
// promises: every stream ended with a terminal event within 5 s of the fault, at most one coordinator per
// network component, the cluster serves again within 10 s of the heal, and no live node holds KV once the
// streams are over. Shared by test/cluster/chaos.test.ts (a short sequence) and bench/chaos.ts (a long one).
//
// Layout: one namespace per node plus one holding the bridge; a veth from the test's own namespace into the
// bridge lets this process reach every node's API directly (partitions are blackhole routes between nodes
// only, so the test always sees both sides). Needs root and iproute2: chaosSkipReason says why not.
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, cliEntry, getHealth, runCli } from "./cluster-up.js";
import { ip, must, netnsSkipReason } from "./netns.js";
import { Rng } from "./seeded-rng.js";

export type FaultKind = "kill" | "hang" | "partition";

export interface ChaosStep {
  fault: FaultKind;
  /** Index of the node the fault hits (0 is the smallest id, the coordinator of the whole cluster). */
  victim: number;
}

/**
 * The seeded fault sequence. `coordinatorFaults` lists the faults that may hit the coordinator (node 0); the
 * others always may hit any follower.
 */
export function chaosSequence(
  seed: number,
  steps: number,
  nodes: number,
  coordinatorFaults: readonly FaultKind[] = ["kill", "hang", "partition"],
): ChaosStep[] {
  const rng = new Rng(seed);
  const kinds: FaultKind[] = ["kill", "hang", "partition"];
  return Array.from({ length: steps }, () => {
    const fault = rng.pick(kinds);
    const victims = Array.from({ length: nodes }, (_, i) => i).filter(
      (i) => i > 0 || coordinatorFaults.includes(fault),
    );
    return { fault, victim: rng.pick(victims) };
  });
}

/** What one step measured; `failures` is empty when every promise held. */
export interface StepResult {
  step: ChaosStep;
  /** ms from the fault to each stream's end. */
  streamEndMs: number[];
  /** Most nodes that called themselves coordinator at once in one component, over the samples taken. */
  maxCoordinatorsPerComponent: number;
  /** ms from the heal to the first completion served (undefined when none within the limit). */
  serveAgainMs?: number;
  failures: string[];
}

export const STREAM_END_LIMIT_MS = 5000;
export const SERVE_AGAIN_LIMIT_MS = 10_000;
const STREAM_GIVE_UP_MS = 15_000;
const API_KEY = "chaos-test-api-key";

/** Why the chaos run cannot happen here, or undefined when it can. */
export const chaosSkipReason = netnsSkipReason;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface StreamEnd {
  events: string[];
  endedAt: number;
  error?: string;
}

export class ChaosCluster {
  private readonly tag = randomBytes(3).toString("hex");
  private readonly subnet = `10.79.${16 + (randomBytes(1)[0] % 200)}`;
  private readonly bridgeNs = `ch${this.tag}br`;
  private readonly hostLink = `ch${this.tag}h`;
  readonly ids: string[];
  private readonly nodeNs: string[];
  private readonly homes: string[] = [];
  readonly procs: CliProcess[] = [];
  private readonly args: string[][] = [];
  private stopTokenBias: Record<string, number> = {};

  constructor(
    readonly nodes: number,
    private readonly modelDir: string,
    private readonly log: (line: string) => void = () => {},
  ) {
    this.ids = Array.from({ length: nodes }, (_, i) => `00000000000000${(0xa1 + i * 0x11).toString(16)}`);
    this.nodeNs = this.ids.map((_, i) => `ch${this.tag}n${i + 1}`);
  }

  private address(i: number): string {
    return `${this.subnet}.${i + 1}`;
  }

  apiUrl(i: number): string {
    return `http://${this.address(i)}:8080`;
  }

  outputs(): string {
    return this.procs.map((p, i) => `=== n${i + 1}\n${p.output()}`).join("\n");
  }

  /** Namespaces, bridge, the host's own leg into the bridge, then the nodes (each `--peer` node 0). */
  async start(stopTokenIds: number[]): Promise<void> {
    cliEntry();
    this.stopTokenBias = Object.fromEntries(stopTokenIds.map((id) => [String(id), -100]));
    for (const ns of [this.bridgeNs, ...this.nodeNs]) must(["netns", "add", ns]);
    must(["-n", this.bridgeNs, "link", "add", "br0", "type", "bridge"]);
    must(["-n", this.bridgeNs, "link", "set", "br0", "up"]);
    this.nodeNs.forEach((ns, i) => {
      const side = `w${this.tag}${i}`;
      must([
        "link",
        "add",
        side,
        "netns",
        this.bridgeNs,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
      ]);
      must(["-n", this.bridgeNs, "link", "set", side, "master", "br0"]);
      must(["-n", this.bridgeNs, "link", "set", side, "up"]);
      must(["-n", ns, "link", "set", "lo", "up"]);
      must(["-n", ns, "addr", "add", `${this.address(i)}/24`, "dev", "eth0"]);
      must(["-n", ns, "link", "set", "eth0", "up"]);
    });
    must(["link", "add", this.hostLink, "type", "veth", "peer", "name", "hostleg", "netns", this.bridgeNs]);
    must(["-n", this.bridgeNs, "link", "set", "hostleg", "master", "br0"]);
    must(["-n", this.bridgeNs, "link", "set", "hostleg", "up"]);
    must(["addr", "add", `${this.subnet}.200/24`, "dev", this.hostLink]);
    must(["link", "set", this.hostLink, "up"]);
    const key = generateClusterKey();
    for (let i = 0; i < this.nodes; i++) {
      const home = mkdtempSync(join(tmpdir(), `chaos-n${i + 1}-`));
      this.homes.push(home);
      mkdirSync(join(home, "nodes"), { recursive: true, mode: 0o700 });
      writeFileSync(join(home, "nodes", `n${i + 1}.id`), `${this.ids[i]}\n`);
      const args = ["up", "--model", this.modelDir, "--key", key, "--name", `n${i + 1}`, "--port", "7100"];
      args.push("--interface", this.address(i), "--no-bonjour", "--threads", "1", "--memory-bandwidth", "50");
      args.push("--api-port", "8080", "--api-host", this.address(i), "--api-key", API_KEY);
      if (i > 0) args.push("--peer", `${this.address(0)}:7100`);
      this.args.push(args);
      this.procs.push(this.spawn(i));
    }
  }

  private spawn(i: number): CliProcess {
    return runCli(this.args[i], { STUDIO_CLUSTER_HOME: this.homes[i] }, [
      "ip",
      "netns",
      "exec",
      this.nodeNs[i],
    ]);
  }

  async stop(): Promise<void> {
    for (const p of this.procs) p.child.kill("SIGCONT");
    await Promise.all(this.procs.map((p) => p.stop("SIGKILL")));
    for (const ns of [...this.nodeNs, this.bridgeNs]) ip(["netns", "delete", ns]);
    ip(["link", "delete", this.hostLink]);
    for (const home of this.homes) rmSync(home, { recursive: true, force: true });
  }

  health(i: number): Promise<ClusterHealth | undefined> {
    return getHealth(this.apiUrl(i), API_KEY);
  }

  /** Polls until every node serves as one cluster: all live, node 0 coordinating a plan over all. */
  async waitWhole(timeoutMs: number): Promise<void> {
    const all = [...this.ids].sort().join();
    const started = Date.now();
    let views: Array<ClusterHealth | undefined> = [];
    while (Date.now() - started < timeoutMs) {
      views = await Promise.all(this.ids.map((_, i) => this.health(i)));
      const whole = views.every(
        (h) =>
          h?.ok === true &&
          h.coordinator?.id === this.ids[0] &&
          liveNodes(h)
            .map((n) => n.id)
            .sort()
            .join() === all,
      );
      if (whole && views[0]?.state === "ready" && views[0].plan?.stages.length === this.nodes) return;
      await sleep(500);
    }
    throw new Error(
      `timed out waiting for one cluster of ${this.nodes}: ${JSON.stringify(views).slice(0, 2000)}\n${this.outputs()}`,
    );
  }

  /** Blackholes every route between node `v` and the other nodes (or removes them). */
  private partition(v: number, on: boolean): void {
    const verb = on ? "add" : "del";
    for (let i = 0; i < this.nodes; i++) {
      if (i === v) continue;
      must(["-n", this.nodeNs[v], "route", verb, "blackhole", `${this.address(i)}/32`]);
      must(["-n", this.nodeNs[i], "route", verb, "blackhole", `${this.address(v)}/32`]);
    }
  }

  private async fault(step: ChaosStep): Promise<void> {
    const p = this.procs[step.victim];
    if (step.fault === "kill") {
      p.child.kill("SIGKILL");
      await p.exited;
    } else if (step.fault === "hang") p.child.kill("SIGSTOP");
    else this.partition(step.victim, true);
  }

  private heal(step: ChaosStep): void {
    if (step.fault === "kill") this.procs[step.victim] = this.spawn(step.victim);
    else if (step.fault === "hang") this.procs[step.victim].child.kill("SIGCONT");
    else this.partition(step.victim, false);
  }

  /** A long streamed chat completion (stop tokens banned, so it runs until the fault cuts it). */
  private openStream(api: number, maxTokens: number, signal: AbortSignal): Promise<Response> {
    return fetch(`${this.apiUrl(api)}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({
        messages: [{ role: "user", content: "go on" }],
        max_tokens: maxTokens,
        stream: true,
        logit_bias: this.stopTokenBias,
      }),
      signal,
    });
  }

  /** One short completion through node `api`; true when it was served. */
  private async served(api: number): Promise<boolean> {
    try {
      const r = await fetch(`${this.apiUrl(api)}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
        body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 4 }),
        signal: AbortSignal.timeout(3000),
      });
      await r.text();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  /** Nodes that answer /health and call themselves coordinator, per component. */
  private async coordinatorsPerComponent(components: number[][]): Promise<number> {
    let most = 0;
    for (const component of components) {
      const views = await Promise.all(component.map((i) => this.health(i)));
      most = Math.max(most, views.filter((h) => h?.node.role === "coordinator").length);
    }
    return most;
  }

  /** KV held by live nodes, as any answering node sees them (their heartbeats): "" when none holds any. */
  private async kvHeld(answering: number[]): Promise<string> {
    const held: string[] = [];
    for (const i of answering) {
      const h = await this.health(i);
      for (const n of h ? liveNodes(h) : [])
        if (n.kvBytes > 0) held.push(`${n.name} holds ${n.kvBytes} B of KV (as n${i + 1} sees it)`);
    }
    return held.join("; ");
  }

  /** Runs one fault and its heal with two streams open; never throws for a broken promise, records it. */
  async runStep(step: ChaosStep): Promise<StepResult> {
    const failures: string[] = [];
    const v = step.victim;
    const others = this.ids.map((_, i) => i).filter((i) => i !== v);
    // The streams go through a node the fault spares: the coordinator's own API, or a follower's relay when
    // the coordinator is the victim.
    const api = v === 0 ? 1 : 0;
    // A stream still open this long after its fault has broken the promise anyway: give up on it then.
    const giveUp = new AbortController();
    const beforeFault = setTimeout(() => giveUp.abort(), 120_000);
    const responses = await Promise.all([0, 1].map(() => this.openStream(api, 3000, giveUp.signal)));
    for (const r of responses) if (r.status !== 200) failures.push(`a stream was refused: ${r.status}`);
    let started = 0;
    let bothStarted: () => void = () => {};
    const generating = new Promise<void>((r) => {
      bothStarted = r;
    });
    const ends = Promise.all(
      responses.map((r) =>
        readStream(r, () => {
          started++;
          if (started === 2) bothStarted();
        }),
      ),
    );
    const early = await Promise.race([generating.then(() => false), ends.then(() => true)]);
    if (early) failures.push("a stream ended before the fault");
    const faultAt = Date.now();
    clearTimeout(beforeFault);
    const afterFault = setTimeout(() => giveUp.abort(), STREAM_GIVE_UP_MS);
    await this.fault(step);
    this.log(`fault ${step.fault} on n${v + 1}`);

    // Sample coordinators per component while the streams end.
    const components = step.fault === "partition" ? [[v], others] : [others];
    let sampling = true;
    let maxCoordinators = 0;
    const sampler = (async () => {
      while (sampling) {
        maxCoordinators = Math.max(maxCoordinators, await this.coordinatorsPerComponent(components));
        await sleep(300);
      }
    })();
    const streamEnds = await ends;
    clearTimeout(afterFault);
    const streamEndMs = streamEnds.map((e) => e.endedAt - faultAt);
    streamEnds.forEach((e, k) => {
      const problem = terminalProblem(e);
      if (problem) failures.push(`stream ${k + 1}: ${problem}`);
      if (e.endedAt - faultAt > STREAM_END_LIMIT_MS)
        failures.push(`stream ${k + 1} ended ${e.endedAt - faultAt} ms after the fault`);
    });
    // Keep sampling a few seconds past the streams: a takeover happens about a heartbeat timeout after.
    await sleep(Math.max(0, faultAt + 6000 - Date.now()));
    sampling = false;
    await sampler;
    if (maxCoordinators > 1) failures.push(`${maxCoordinators} coordinators in one component`);

    // No KV left on the nodes that still answer, once their next heartbeat is in.
    const answering =
      step.fault === "hang"
        ? others
        : this.ids.map((_, i) => i).filter((i) => i !== v || step.fault !== "kill");
    let leak = await this.kvHeld(answering);
    for (let t = 0; leak && t < 10; t++) {
      await sleep(500);
      leak = await this.kvHeld(answering);
    }
    if (leak) failures.push(`KV still held after the streams ended: ${leak}`);

    const healAt = Date.now();
    this.heal(step);
    this.log(`heal ${step.fault} on n${v + 1}`);
    let serveAgainMs: number | undefined;
    while (Date.now() - healAt < SERVE_AGAIN_LIMIT_MS) {
      if (await this.served(api)) {
        serveAgainMs = Date.now() - healAt;
        break;
      }
      await sleep(250);
    }
    if (serveAgainMs === undefined || serveAgainMs > SERVE_AGAIN_LIMIT_MS)
      failures.push(`not served within ${SERVE_AGAIN_LIMIT_MS} ms of the heal`);
    return { step, streamEndMs, maxCoordinatorsPerComponent: maxCoordinators, serveAgainMs, failures };
  }

  /** After a step: the whole cluster again, holding no KV. */
  async settle(timeoutMs: number): Promise<string | undefined> {
    await this.waitWhole(timeoutMs);
    let leak = await this.kvHeld(this.ids.map((_, i) => i));
    for (let t = 0; leak && t < 10; t++) {
      await sleep(500);
      leak = await this.kvHeld(this.ids.map((_, i) => i));
    }
    return leak || undefined;
  }
}

/** Reads an SSE response to its end; calls `started` at the first delta. */
async function readStream(response: Response, started: () => void): Promise<StreamEnd> {
  const events: string[] = [];
  let buffer = "";
  const decoder = new TextDecoder();
  let sawDelta = false;
  try {
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let cut = buffer.indexOf("\n\n");
      while (cut >= 0) {
        events.push(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (!sawDelta && /delta/.test(events.at(-1) ?? "")) {
          sawDelta = true;
          started();
        }
        cut = buffer.indexOf("\n\n");
      }
    }
  } catch (err) {
    return { events, endedAt: Date.now(), error: (err as Error).message };
  }
  if (buffer.trim()) events.push(`(partial) ${buffer}`);
  return { events, endedAt: Date.now() };
}

/** Why a chat stream did not end with its terminal error event and [DONE], or undefined when it did. */
function terminalProblem(e: StreamEnd): string | undefined {
  if (e.error) return `torn down (${e.error}) after ${JSON.stringify(e.events.slice(-2))}`;
  if (e.events.at(-1) !== "data: [DONE]")
    return `no [DONE] at the end: ${JSON.stringify(e.events.slice(-2))}`;
  const last = e.events.at(-2) ?? "";
  if (!/"error"/.test(last)) return `no terminal error event before [DONE]: ${last.slice(0, 300)}`;
  return undefined;
}
