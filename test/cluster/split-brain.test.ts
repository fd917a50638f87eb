// Split brain, on real `cluster up` processes: the natural set-up (A alone, B and C each `--peer A` only). B and C
// must learn each other through the gossiped member list, all three must agree on one coordinator, and when A is
// killed (SIGKILL) B and C must agree on ONE coordinator between them (not each coordinate alone, which they did
// before gossip) and serve a chat completion. Node ids are fixed through the id files (`nodes/<name>.id`, read by
// claimNodeId) so that A has the smallest id, B the next.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type ClusterHealth, liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type CliProcess, complete, freePort, runCli, waitForHealth } from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "split-brain-"));
const running: CliProcess[] = [];

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(home, { recursive: true, force: true });
});

const IDS = { sa: "0000000000000a01", sb: "0000000000000b02", sc: "0000000000000c03" };

/** The node's onState lines (stdout) that name it as the coordinator. */
const coordinatedSelf = (proc: CliProcess, name: string, from = 0) =>
  proc.stdout.slice(from).filter((l) => l.includes(`coordinator ${name} (`));

describe("split brain: every node --peer the first", () => {
  const urls: string[] = [];
  const procs: CliProcess[] = [];

  it("all three converge on one coordinator, each seeing 3 live members", async () => {
    const modelDir = await ensureModel("tiny", "tiny");
    mkdirSync(join(home, "nodes"), { recursive: true, mode: 0o700 });
    for (const [name, id] of Object.entries(IDS)) writeFileSync(join(home, "nodes", `${name}.id`), `${id}\n`);
    const key = generateClusterKey();
    const common = ["--model", modelDir, "--key", key, "--no-bonjour", "--threads", "1"];
    common.push("--memory-bandwidth", "50");
    const env = { STUDIO_CLUSTER_HOME: home };
    const grpcA = await freePort();
    for (const name of Object.keys(IDS)) {
      const api = await freePort();
      const grpc = name === "sa" ? grpcA : await freePort();
      const args = ["up", ...common, "--name", name, "--port", `${grpc}`, "--api-port", `${api}`];
      if (name !== "sa") args.push("--peer", `127.0.0.1:${grpcA}`);
      const proc = runCli(args, env);
      procs.push(proc);
      running.push(proc);
      urls.push(`http://127.0.0.1:${api}`);
    }
    const agreed = (h: ClusterHealth) =>
      liveNodes(h).length === 3 && h.coordinator?.id === IDS.sa && h.ok === true;
    for (const url of urls) await waitForHealth(url, agreed, `${url} to see 3 members and sa`, procs, 90_000);
    const views = await Promise.all(
      urls.map((url) => waitForHealth(url, agreed, "agreement", procs, 10_000)),
    );
    for (const view of views) {
      expect(view.coordinator?.id).toBe(IDS.sa);
      expect(
        liveNodes(view)
          .map((n) => n.id)
          .sort(),
      ).toEqual([IDS.sa, IDS.sb, IDS.sc]);
    }
    // sb and sc met through sa's gossip (the first to hear of the other probes it; the other learns it from that
    // Hello), never through a --peer.
    const learned = `${procs[1].stderr.join("\n")}\n${procs[2].stderr.join("\n")}`;
    expect(learned).toMatch(new RegExp(`knows (${IDS.sb}|${IDS.sc}) at 127\\.0\\.0\\.1:\\d+: probing it`));
    if (process.env.SPLIT_BRAIN_DEBUG) console.log(procs.map((p) => p.output()).join("\n"));
  }, 150_000);

  it("after the first is killed, the other two converge on ONE coordinator and serve", async () => {
    expect(procs).toHaveLength(3);
    const [a, b, c] = procs;
    const cFrom = c.stdout.length;
    a.child.kill("SIGKILL");
    await a.exited;
    const pair = [b, c];
    const converged = (h: ClusterHealth) =>
      h.ok === true &&
      h.coordinator?.id === IDS.sb &&
      liveNodes(h)
        .map((n) => n.id)
        .sort()
        .join() === [IDS.sb, IDS.sc].join();
    await waitForHealth(
      urls[1],
      (h) => converged(h) && h.state === "ready",
      "sb to coordinate",
      pair,
      90_000,
    );
    await waitForHealth(urls[2], converged, "sc to follow sb", pair, 30_000);

    for (const url of [urls[1], urls[2]]) {
      const reply = await complete(url, "Say hello", 8);
      expect(reply.status, `${JSON.stringify(reply.body)}\n${b.output()}\n${c.output()}`).toBe(200);
      expect(reply.completionTokens).toBeGreaterThan(0);
    }
    // sc never coordinated alone after the kill (the split brain this guards against).
    expect(coordinatedSelf(c, "sc", cFrom), c.output()).toEqual([]);
    const views = await Promise.all(
      [urls[1], urls[2]].map((u) => waitForHealth(u, converged, "still", pair)),
    );
    expect(views.map((v) => v.coordinator?.id)).toEqual([IDS.sb, IDS.sb]);
  }, 150_000);
});
