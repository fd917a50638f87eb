// `cluster up` end to end (dist/cli/main.js processes on loopback): a --demo single node; a two-process cluster
// joined with --peer that elects one coordinator, plans two stages, generates through either node's API, and
// re-plans on the survivor when the other node is killed; `cluster status`; bad options.

import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { freemem, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openClawConfig } from "../../cli/commands/openclaw-config.js";
import { DEMO_REPLY } from "../../cli/make-model/scripted.js";
import { liveNodes } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import {
  type CliProcess,
  complete,
  freePort,
  getHealth,
  runCli,
  waitForHealth,
} from "../helpers/cluster-up.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const home = mkdtempSync(join(tmpdir(), "cluster-up-"));
const env = { STUDIO_CLUSTER_HOME: home };
const running: CliProcess[] = [];

function start(args: string[]): CliProcess {
  const proc = runCli(["up", ...args], env);
  running.push(proc);
  return proc;
}

/**
 * Two `cluster up` processes on loopback without Bonjour; only the second names the first with --peer (the
 * first learns of the second from its Hello). Equal pinned bandwidths keep the layer split deterministic.
 */
async function startPair(
  modelDir: string,
  names: [string, string],
  extraArgs: string[] = [],
): Promise<{ a: CliProcess; b: CliProcess; apiA: number; apiB: number; args: [string[], string[]] }> {
  const [grpcA, grpcB, apiA, apiB] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const common = ["--model", modelDir, "--key", generateClusterKey(), "--no-bonjour", "--threads", "1"];
  common.push("--memory-bandwidth", "50", ...extraArgs);
  const aArgs = [...common, "--name", names[0], "--port", String(grpcA), "--api-port", String(apiA)];
  const bArgs = [...common, "--name", names[1], "--port", String(grpcB), "--api-port", String(apiB)];
  bArgs.push("--peer", `127.0.0.1:${grpcA}`);
  return { a: start(aArgs), b: start(bArgs), apiA, apiB, args: [aArgs, bArgs] };
}

afterAll(async () => {
  await Promise.all(running.map((p) => p.stop("SIGKILL")));
  rmSync(home, { recursive: true, force: true });
});

/**
 * What OpenClaw needs of the demo: a window that holds its ~20k-token first prompt (the real model's 196,608,
 * advertised where it discovers models), a reply whose reasoning ends and whose text is visible, and an output
 * limit in the provider block that is not the whole window.
 */
async function checkDemoServesOpenClaw(apiUrl: string): Promise<void> {
  const models = (await (await fetch(`${apiUrl}/v1/models`)).json()) as {
    data: Array<Record<string, unknown>>;
  };
  expect(models.data[0]).toMatchObject({ id: "demo", context_length: 196_608, max_output_tokens: 32_768 });
  // Longer than the old demo's whole window (8,192 tokens).
  const prompt = Array.from({ length: 6000 }, (_, i) => `item${i}`).join(" ");
  const response = await fetch(`${apiUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "demo", messages: [{ role: "user", content: prompt }] }),
    signal: AbortSignal.timeout(120_000),
  });
  const body = (await response.json()) as {
    choices: Array<{ message: { content: string; reasoning_content: string }; finish_reason: string }>;
    usage: { prompt_tokens: number };
  };
  expect(response.status, JSON.stringify(body)).toBe(200);
  expect(body.usage.prompt_tokens).toBeGreaterThan(8192);
  expect(body.choices[0].message).toMatchObject({
    reasoning_content: DEMO_REPLY.reasoning,
    content: DEMO_REPLY.content,
  });
  expect(body.choices[0].finish_reason).toBe("stop");
  const block = openClawConfig({ modelDir: join(home, "models", "demo"), baseUrl: apiUrl, api: "both" });
  const provider = Object.values(
    (block.models as { providers: Record<string, { models: unknown[] }> }).providers,
  )[0];
  expect(provider.models[0]).toMatchObject({ id: "demo", contextWindow: 196_608, maxTokens: 32_768 });
}

describe("cluster up --demo on one machine", () => {
  it("makes the demo model, prints the new key once, serves generation and status, and stops cleanly", async () => {
    const apiPort = await freePort();
    const apiUrl = `http://127.0.0.1:${apiPort}`;
    const node = start(["--demo", "--no-bonjour", "--api-port", String(apiPort), "--threads", "1"]);
    const health = await waitForHealth(
      apiUrl,
      (h) => h.state === "ready",
      "the demo node to be ready",
      node,
      90_000,
    );
    expect(health.node.role).toBe("coordinator");
    expect(health.modelId).toBe("demo");
    expect(health.plan?.stages).toHaveLength(1);
    expect(health.plan?.stages[0]).toMatchObject({ layerStart: 0, embed: true, head: true });

    // The key: generated, printed once with the command that joins others, stored owner-only.
    const key = readFileSync(join(home, "cluster.key"), "utf8").trim();
    // In forms that keep it out of `ps` (the environment, a key file), never as --key.
    expect(node.stderr.join("\n")).toContain(`STUDIO_CLUSTER_KEY=${key} cluster up --demo`);
    expect(node.stderr.join("\n")).toContain("cluster up --key-file FILE --demo");
    expect(node.stderr.join("\n")).not.toContain(`--key ${key}`);
    expect(statSync(join(home, "cluster.key")).mode & 0o777).toBe(0o600);

    await checkDemoServesOpenClaw(apiUrl);

    const status = runCli(["status", "--api", apiUrl], env);
    expect(await status.exited).toBe(0);
    const text = status.stdout.join("\n");
    expect(text).toContain("state ready (serving)");
    expect(text).toMatch(/stage 0: .*layers \[0,2\) embed\+head/);

    expect(await node.stop("SIGTERM")).toBe(0);
    expect(node.stdout.join("\n")).toContain("SIGTERM: leaving the cluster");

    // A second start reuses the stored key and the same node id, and prints no key.
    const again = start(["--demo", "--no-bonjour", "--api-port", String(apiPort), "--threads", "1"]);
    const second = await waitForHealth(
      apiUrl,
      (h) => h.state === "ready",
      "the restarted node",
      again,
      60_000,
    );
    expect(second.node.id).toBe(health.node.id);
    expect(second.clusterId).toBe(health.clusterId);
    expect(again.stderr.join("\n")).not.toContain(key);
    expect(await again.stop("SIGINT")).toBe(0);
  });

  it("refuses bad options with a message that names the problem", async () => {
    const cases: Array<[string[], RegExp]> = [
      [["--no-bonjour"], /--model DIR, or --demo/],
      [["--demo", "--api-host", "0.0.0.0"], /--api-host 0\.0\.0\.0 is not loopback: it requires --api-key/],
      [["--demo", "--peer", "nonsense"], /--peer "nonsense" is not host:port/],
      [["--demo", "--key", "short"], /cluster key is invalid/],
      [["--demo", "--cors-origin", "localhost:3000/app"], /--cors-origin must be "\*" or an origin/],
      [["--demo", "--key-file", join(home, "no-such-key")], /--key-file .*no-such-key: ENOENT/],
      [
        ["--model", join(home, "no-such-model")],
        /--model .*no-such-model: no such folder, and not a Hugging Face model id/,
      ],
    ];
    // An API port another process holds.
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", () => r()));
    const busy = (holder.address() as AddressInfo).port;
    cases.push([
      ["--demo", "--no-bonjour", "--api-port", String(busy)],
      /API port 127\.0\.0\.1:\d+ is in use/,
    ]);
    for (const [args, message] of cases) {
      const proc = runCli(["up", ...args], env);
      running.push(proc);
      expect(await proc.exited, proc.output()).not.toBe(0);
      expect(proc.stderr.join("\n")).toMatch(message);
    }
    holder.close();
    // `cluster status` against a node that is not there.
    const nobody = await freePort();
    const status = runCli(["status", "--api", `http://127.0.0.1:${nobody}`], env);
    expect(await status.exited).toBe(1);
    expect(status.stderr.join("\n")).toContain(`cannot reach http://127.0.0.1:${nobody}/health`);
  });
});

describe("two cluster up processes joined with --peer", () => {
  it("elect one coordinator, plan two stages, serve through either API, and re-plan when one dies", async () => {
    const modelDir = await ensureModel("tiny", "tiny");
    const { a, b, apiA, apiB } = await startPair(modelDir, ["alpha", "beta"]);
    const urls = { alpha: `http://127.0.0.1:${apiA}`, beta: `http://127.0.0.1:${apiB}` };
    const both = [a, b];
    const twoStages = (h: { plan?: { stages: unknown[] }; state: string }) =>
      h.state === "ready" && h.plan?.stages.length === 2;
    // Whichever has the smaller id coordinates; wait until one of them serves a two-stage plan.
    let coordinatorUrl = "";
    await waitForHealth(
      urls.alpha,
      (h) => {
        const c = h.coordinator?.apiUrl;
        const elected =
          h.coordinator?.id ===
          liveNodes(h)
            .map((m) => m.id)
            .sort()[0];
        if (c && liveNodes(h).length === 2 && elected) coordinatorUrl = c;
        return coordinatorUrl !== "";
      },
      "alpha to see two members",
      both,
    );
    const coordinator = await waitForHealth(coordinatorUrl, twoStages, "a two-stage plan", both);
    const followerUrl = coordinatorUrl === urls.alpha ? urls.beta : urls.alpha;
    const follower = await waitForHealth(
      followerUrl,
      (h) => h.state === "following" && h.coordinator?.id === coordinator.node.id,
      "the other node to follow",
      both,
    );
    expect(follower.node.role).toBe("node");
    expect(coordinator.node.id < follower.node.id).toBe(true); // smallest id coordinates
    const stages = coordinator.plan!.stages;
    expect(stages.map((s) => [s.layerStart, s.layerEnd])).toEqual([
      [0, stages[0].layerEnd],
      [stages[0].layerEnd, 6],
    ]);
    expect(new Set(stages.map((s) => s.nodeId))).toEqual(new Set([coordinator.node.id, follower.node.id]));

    // Generation through the coordinator and, forwarded, through the other node: the same greedy tokens.
    const direct = await complete(coordinatorUrl, "Split me across two machines.", 10);
    expect(direct.status, JSON.stringify(direct.body)).toBe(200);
    expect(direct.completionTokens).toBe(10);
    const forwarded = await complete(followerUrl, "Split me across two machines.", 10);
    expect(forwarded.status, JSON.stringify(forwarded.body)).toBe(200);
    expect(forwarded.text).toBe(direct.text);

    // `cluster status` on the follower shows both members and the coordinator's plan.
    const status = runCli(["status", "--api", followerUrl], env);
    expect(await status.exited).toBe(0);
    const text = status.stdout.join("\n");
    expect(text).toMatch(/nodes \(2, \d+ layers\)/);
    expect(text).toMatch(/stage 1: /);

    // Kill the follower: the coordinator re-plans on itself alone and serves again, the same tokens.
    const followerProc = followerUrl === urls.alpha ? a : b;
    const coordinatorProc = followerProc === a ? b : a;
    followerProc.child.kill("SIGKILL");
    const alone = await waitForHealth(
      coordinatorUrl,
      (h) => h.state === "ready" && h.plan?.stages.length === 1 && liveNodes(h).length === 1,
      "a one-stage re-plan",
      coordinatorProc,
    );
    expect(alone.plan!.stages[0]).toMatchObject({ layerStart: 0, layerEnd: 6, embed: true, head: true });
    const after = await complete(coordinatorUrl, "Split me across two machines.", 10);
    expect(after.status, JSON.stringify(after.body)).toBe(200);
    expect(after.text).toBe(direct.text);
    expect((await getHealth(coordinatorUrl))?.ok).toBe(true);

    // The lost node comes back (same name, so the same node id): it is re-admitted and planned in again.
    const restarted = start(followerProc.child.spawnargs.slice(3));
    const rejoined = await waitForHealth(
      coordinatorUrl,
      (h) => h.state === "ready" && h.plan?.stages.length === 2 && liveNodes(h).length === 2,
      "the returning node to be planned in again",
      [coordinatorProc, restarted],
    );
    expect(
      liveNodes(rejoined)
        .map((m) => m.id)
        .sort(),
    ).toEqual([coordinator.node.id, follower.node.id].sort());
    const again = await complete(followerUrl, "Split me across two machines.", 10);
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    expect(again.text).toBe(direct.text);
  });

  it("serve a model that needs both nodes; without one, answer 503 with the bytes, and recover when it returns", async () => {
    // A long-context variant of the tiny model: its KV reserve for the whole context is 1.4x this machine's free
    // memory, so it fits on two nodes (each sees the same free memory) and not on one.
    const source = await ensureModel("tiny", "tiny");
    const modelDir = join(home, "tiny-long-context");
    cpSync(source, modelDir, { recursive: true });
    const config = JSON.parse(readFileSync(join(modelDir, "config.json"), "utf8"));
    const kvPerToken = 2 * config.num_key_value_heads * config.head_dim * 4 * config.num_hidden_layers; // cpu: f32
    const context = Math.ceil((1.4 * freemem()) / kvPerToken);
    config.max_position_embeddings = context + 1024;
    writeFileSync(join(modelDir, "config.json"), JSON.stringify(config));

    const { a, b, apiA, apiB, args } = await startPair(
      modelDir,
      ["big-a", "big-b"],
      ["--context", String(context)],
    );
    const urls = [`http://127.0.0.1:${apiA}`, `http://127.0.0.1:${apiB}`];
    const view = await waitForHealth(
      urls[0],
      (h) =>
        liveNodes(h).length === 2 &&
        h.coordinator?.id ===
          liveNodes(h)
            .map((m) => m.id)
            .sort()[0],
      "two members",
      [a, b],
    );
    const c = view.coordinator!.id === view.node.id ? 0 : 1;
    const ready = await waitForHealth(
      urls[c],
      (h) => h.state === "ready" && h.plan?.stages.length === 2,
      "a two-stage plan",
      [a, b],
    );
    for (const stage of ready.plan!.stages) expect(stage.needBytes).toBeLessThanOrEqual(stage.availableBytes);
    expect((await complete(urls[c], "Too big for one.", 4)).status).toBe(200);

    [a, b][1 - c].child.kill("SIGKILL");
    const down = await waitForHealth(
      urls[c],
      (h) => h.state === "not_ready",
      "the not-ready state",
      [a, b][c],
    );
    expect(down.ok).toBe(false);
    expect(down.message).toMatch(
      /does not fit on 1 node\(s\): it needs .* \(\d+ B\) .*KV reserve .* for \d+ tokens/,
    );
    expect((await fetch(`${urls[c]}/health`)).status).toBe(503);
    const refused = await complete(urls[c], "Too big for one.", 4);
    expect(refused.status).toBe(503);
    const error = (refused.body as { error: { code: string; message: string } }).error;
    expect(error.code).toBe("cluster_not_ready");
    expect(error.message).toMatch(/does not fit on 1 node\(s\)/);

    const back = start(args[1 - c]);
    await waitForHealth(
      urls[c],
      (h) => h.state === "ready" && h.plan?.stages.length === 2,
      "the two-stage plan again",
      [[a, b][c], back],
    );
    expect((await complete(urls[c], "Too big for one.", 4)).status).toBe(200);
  });

  it("find each other over Bonjour on one host with no --peer, and the other node forwards to the coordinator", async () => {
    const modelDir = await ensureModel("tiny", "tiny");
    const key = generateClusterKey();
    const [apiA, apiB] = [await freePort(), await freePort()];
    const common = ["--model", modelDir, "--key", key, "--threads", "1", "--memory-bandwidth", "50"];
    const a = start([...common, "--name", "bonjour-a", "--api-port", String(apiA)]);
    const b = start([...common, "--name", "bonjour-b", "--api-port", String(apiB)]);
    const urls = [`http://127.0.0.1:${apiA}`, `http://127.0.0.1:${apiB}`];
    const view = await waitForHealth(
      urls[0],
      (h) =>
        liveNodes(h).length === 2 &&
        h.coordinator?.id ===
          liveNodes(h)
            .map((m) => m.id)
            .sort()[0],
      "two members found over Bonjour",
      [a, b],
    );
    const coordinatorIndex = view.coordinator!.id === view.node.id ? 0 : 1;
    await waitForHealth(
      urls[coordinatorIndex],
      (h) => h.state === "ready" && h.plan?.stages.length === 2,
      "a two-stage plan",
      [a, b],
    );
    const direct = await complete(urls[coordinatorIndex], "Found by multicast.", 6);
    const forwarded = await complete(urls[1 - coordinatorIndex], "Found by multicast.", 6);
    expect(direct.status, JSON.stringify(direct.body)).toBe(200);
    expect(forwarded.status, JSON.stringify(forwarded.body)).toBe(200);
    expect(forwarded.text).toBe(direct.text);
  });

  it.skipIf(process.platform !== "linux")(
    "listen for gRPC on loopback when Bonjour is off and every --peer is on loopback, on all interfaces otherwise",
    async () => {
      const modelDir = await ensureModel("tiny", "tiny");
      const { a, b, apiA, args } = await startPair(modelDir, ["lo-a", "lo-b"]);
      await waitForHealth(`http://127.0.0.1:${apiA}`, (h) => liveNodes(h).length === 2, "two members", [
        a,
        b,
      ]);
      const portOf = (list: string[]) => Number(list[list.indexOf("--port") + 1]);
      // /proc/net/tcp: local address as hex IPv4:port, state 0A = LISTEN.
      const listening = readFileSync("/proc/net/tcp", "utf8")
        .split("\n")
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f[3] === "0A")
        .map((f) => f[1]);
      const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, "0");
      // a names no peer: others may --peer it from the LAN. b's only peer is 127.0.0.1.
      expect(listening).toContain(`00000000:${hex(portOf(args[0]))}`);
      expect(listening).toContain(`0100007F:${hex(portOf(args[1]))}`);
      expect(listening).not.toContain(`00000000:${hex(portOf(args[1]))}`);
    },
  );

  it("lose their coordinator: the other node takes the role, plans on itself and serves", async () => {
    const modelDir = await ensureModel("tiny", "tiny");
    const { a, b, apiA, apiB } = await startPair(modelDir, ["gamma", "delta"]);
    const urls = [`http://127.0.0.1:${apiA}`, `http://127.0.0.1:${apiB}`];
    const ready = await waitForHealth(
      urls[0],
      // The election's answer once this node acted on the two-member view.
      (h) =>
        liveNodes(h).length === 2 &&
        h.coordinator?.id ===
          liveNodes(h)
            .map((m) => m.id)
            .sort()[0],
      "two members",
      [a, b],
    );
    const coordinatorIndex = ready.coordinator!.id === ready.node.id ? 0 : 1;
    const survivorIndex = 1 - coordinatorIndex;
    await waitForHealth(
      urls[coordinatorIndex],
      (h) => h.state === "ready" && h.plan?.stages.length === 2,
      "a two-stage plan",
      [a, b],
    );
    // The follower serves once its own view names the coordinator (on a loaded machine that can lag a's).
    await waitForHealth(
      urls[survivorIndex],
      (h) => h.ok === true && h.coordinator?.id === ready.coordinator!.id,
      "the follower to serve through the coordinator",
      [a, b],
    );
    const before = await complete(urls[survivorIndex], "Who coordinates now?", 6);
    expect(before.status, JSON.stringify(before.body)).toBe(200);

    [a, b][coordinatorIndex].child.kill("SIGKILL");
    const survivor = await waitForHealth(
      urls[survivorIndex],
      (h) => h.state === "ready" && h.node.role === "coordinator" && h.plan?.stages.length === 1,
      "the survivor to coordinate",
      [a, b][survivorIndex],
    );
    expect(survivor.coordinator?.id).toBe(survivor.node.id);
    // The dead node stays visible, marked lost, with when and why (no longer a card that just vanishes).
    const dead = survivor.nodes.find((n) => n.id === ready.coordinator!.id);
    expect(dead?.health, JSON.stringify(survivor.nodes)).toBe("lost");
    expect(dead?.lostReason).toMatch(
      /no heartbeat|Status stream|stopped responding|data stream|results stream/,
    );
    expect(Date.now() - (dead?.lostAt ?? 0)).toBeLessThan(30_000);
    expect(liveNodes(survivor).map((n) => n.id)).toEqual([survivor.node.id]);
    const after = await complete(urls[survivorIndex], "Who coordinates now?", 6);
    expect(after.status, JSON.stringify(after.body)).toBe(200);
    expect(after.text).toBe(before.text);
  });
});
