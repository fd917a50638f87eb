// The data plane is encrypted by default off loopback. Two `cluster up` nodes in two network namespaces that can
// reach each other only through a third, where a TCP proxy records every byte between them (helpers/
// recording-proxy.ts): what an eavesdropper on the link sees. With no TLS option at all the cluster plans two
// stages (activations cross the proxy) and serves a chat completion sent to the follower's API, which relays
// it to the coordinator over the gRPC plane (every API listens on its namespace's loopback only), while every
// connection through the proxy is TLS from its first byte and the recording holds none of the prompt (text or
// token ids), the node names, the model's path or a tensor name. A control run with --no-cluster-tls shows the
// same recording does expose such things in plaintext, the relayed prompt's text included, so the check can
// fail. Needs root and iproute2; skips with the reason otherwise.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelTokenizer } from "../../chat/tokenizer.js";
import type { ClusterHealth } from "../../cluster/health.js";
import { generateClusterKey } from "../../common/cluster-key.js";
import { packageRoot } from "../../common/paths.js";
import { type CliProcess, cliEntry, runCli } from "../helpers/cluster-up.js";
import { ip, must, netnsSkipReason } from "../helpers/netns.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const tag = randomBytes(3).toString("hex");
const ns = { a: `sw${tag}a`, b: `sw${tag}b`, proxy: `sw${tag}p` };
// A and B on two links to the proxy's namespace, which does not route: the proxy is their only path.
const A = { ip: "10.79.1.1", proxySide: "10.79.1.3", port: 7101, name: "wire-node-alpha" };
const B = { ip: "10.79.2.2", proxySide: "10.79.2.3", port: 7102, name: "wire-node-bravo" };
const API_KEY = "netns-wire-tls-api-key";
const PROMPT = "Tell me about the zanzibar ledger of quiet harbours and amber lighthouses";

const reason = netnsSkipReason();
if (reason) console.warn(`skipping netns wire TLS test: ${reason}`);

function setUpNetwork(): void {
  for (const name of Object.values(ns)) must(["netns", "add", name]);
  for (const [side, node] of [
    ["a", A],
    ["b", B],
  ] as const) {
    const nodeEnd = `x${tag}${side}`;
    const proxyEnd = `y${tag}${side}`;
    must([
      "link",
      "add",
      nodeEnd,
      "netns",
      ns[side],
      "type",
      "veth",
      "peer",
      "name",
      proxyEnd,
      "netns",
      ns.proxy,
    ]);
    must(["-n", ns[side], "link", "set", "lo", "up"]);
    must(["-n", ns[side], "addr", "add", `${node.ip}/24`, "dev", nodeEnd]);
    must(["-n", ns[side], "link", "set", nodeEnd, "up"]);
    must(["-n", ns.proxy, "addr", "add", `${node.proxySide}/24`, "dev", proxyEnd]);
    must(["-n", ns.proxy, "link", "set", proxyEnd, "up"]);
  }
  must(["-n", ns.proxy, "link", "set", "lo", "up"]);
}

function tearDownNetwork(): void {
  for (const name of Object.values(ns)) ip(["netns", "delete", name]);
}

function nsNode(name: string, script: string): string {
  const r = spawnSync("ip", ["netns", "exec", name, process.execPath, "--input-type=module", "-e", script], {
    encoding: "utf8",
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`node in ${name} failed: ${r.stderr}`);
  return r.stdout;
}

/** Each node's API, on its own namespace's loopback (the default --api-host). */
const API_URL = "http://127.0.0.1:8080";

function health(side: "a" | "b"): ClusterHealth | undefined {
  const url = `${API_URL}/health`;
  const out = nsNode(
    ns[side],
    `const r = await fetch(${JSON.stringify(url)}, { headers: { authorization: "Bearer ${API_KEY}" } }).catch(() => undefined);` +
      `console.log(r ? await r.text() : "null");`,
  );
  return JSON.parse(out) ?? undefined;
}

function chat(side: "a" | "b"): { status: number; body: unknown; relayedFrom: string | null } {
  const url = `${API_URL}/v1/chat/completions`;
  const body = { messages: [{ role: "user", content: PROMPT }], max_tokens: 8, temperature: 0 };
  const out = nsNode(
    ns[side],
    `const r = await fetch(${JSON.stringify(url)}, { method: "POST", ` +
      `headers: { "content-type": "application/json", authorization: "Bearer ${API_KEY}" }, ` +
      `body: ${JSON.stringify(JSON.stringify(body))} });` +
      `console.log(JSON.stringify({ status: r.status, body: await r.json(), ` +
      `relayedFrom: r.headers.get("x-studio-cluster-relayed-from") }));`,
  );
  return JSON.parse(out) as { status: number; body: unknown; relayedFrom: string | null };
}

interface Recording {
  /** One entry per connection and direction: its file name and bytes. */
  streams: Array<{ file: string; bytes: Buffer }>;
  all: Buffer;
}

function readRecording(dir: string): Recording {
  const streams = readdirSync(dir)
    .filter((f) => f.endsWith(".bin"))
    .sort()
    .map((file) => ({ file, bytes: readFileSync(join(dir, file)) }));
  return { streams, all: Buffer.concat(streams.map((s) => s.bytes)) };
}

/** The prompt's token ids as a TOKENS frame carries them (int32 little-endian), its ends left out (merges). */
function promptTokenBytes(modelDir: string): Buffer {
  const ids = ModelTokenizer.fromModelDir(modelDir).encode(` ${PROMPT}`).slice(1, -1);
  const out = Buffer.alloc(ids.length * 4);
  for (const [i, id] of ids.entries()) out.writeInt32LE(id, i * 4);
  return out;
}

describe.skipIf(reason !== undefined)(
  "the gRPC plane between two namespaces, seen by a proxy on the link",
  () => {
    let modelDir = "";

    beforeAll(async () => {
      cliEntry();
      setUpNetwork();
      modelDir = await ensureModel("tiny", "tiny");
    });

    afterAll(() => tearDownNetwork());

    /** Starts the proxy and both nodes with `extra` args, serves one chat; returns what the proxy recorded. */
    async function serveThroughProxy(extra: string[]): Promise<{ recording: Recording; log: string }> {
      const dir = mkdtempSync(join(tmpdir(), "wire-tls-capture-"));
      const homes: string[] = [];
      const procs: CliProcess[] = [];
      const proxyScript = join(packageRoot(), "dist", "test", "helpers", "recording-proxy.js");
      const proxyLines: string[] = [];
      const proxy = spawn(
        "ip",
        ["netns", "exec", ns.proxy, process.execPath, proxyScript, dir]
          .concat(`${A.proxySide}:${B.port}=${B.ip}:${B.port}`)
          .concat(`${B.proxySide}:${A.port}=${A.ip}:${A.port}`),
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      createInterface({ input: proxy.stdout! }).on("line", (l) => proxyLines.push(l));
      createInterface({ input: proxy.stderr! }).on("line", (l) => proxyLines.push(`stderr: ${l}`));
      const key = generateClusterKey();
      try {
        for (const [side, node, peer] of [
          ["a", A, `${A.proxySide}:${B.port}`],
          ["b", B, `${B.proxySide}:${A.port}`],
        ] as const) {
          const home = mkdtempSync(join(tmpdir(), `wire-tls-${side}-`));
          homes.push(home);
          const args = ["up", "--model", modelDir, "--name", node.name, "--port", String(node.port)];
          args.push("--no-bonjour", "--peer", peer, "--api-port", "8080");
          args.push("--api-key", API_KEY, "--threads", "1", "--memory-bandwidth", "50", ...extra);
          const env = { STUDIO_CLUSTER_HOME: home, STUDIO_CLUSTER_KEY: key };
          procs.push(runCli(args, env, ["ip", "netns", "exec", ns[side]]));
        }
        const dump = () =>
          `proxy:\n${proxyLines.slice(-20).join("\n")}\n${procs.map((p) => p.output()).join("\n")}`;
        let views: Array<ClusterHealth | undefined> = [];
        // One coordinator with the two-stage plan, and the other node following it (the one the chat goes to):
        // a node briefly coordinating alone before they joined is "ready" too.
        const ready = () => {
          const leader = views.find((h) => h?.state === "ready" && h.plan?.stages.length === 2);
          const follower = views.find((h) => h !== leader);
          return follower?.state === "following" && follower.coordinator?.id === leader?.node.id;
        };
        const started = Date.now();
        while (Date.now() - started < 90_000) {
          for (const p of procs) if (p.child.exitCode !== null) throw new Error(`a node exited:\n${dump()}`);
          views = (["a", "b"] as const).map(health);
          if (ready()) break;
          await new Promise((r) => setTimeout(r, 1000));
        }
        expect(ready(), `views: ${JSON.stringify(views, null, 1)}\n${dump()}`).toBe(true);
        // Two stages on two nodes: activations (and the results) cross the proxy.
        const coordinator = views.find((h) => h?.state === "ready" && h.plan?.stages.length === 2)!;
        expect(new Set(coordinator.plan!.stages.map((s) => s.nodeId)).size).toBe(2);
        // Sent to the follower: the request (the prompt's text) crosses the proxy on RelayHttp.
        const answer = chat(coordinator.node.name === A.name ? "b" : "a");
        expect(answer.status, `${JSON.stringify(answer)}\n${dump()}`).toBe(200);
        expect(answer.relayedFrom, dump()).toContain(`(${coordinator.node.id}) at `);
        return { recording: readRecording(dir), log: dump() };
      } finally {
        await Promise.all(procs.map((p) => p.stop("SIGKILL")));
        proxy.kill("SIGKILL");
        for (const home of homes) rmSync(home, { recursive: true, force: true });
        rmSync(dir, { recursive: true, force: true });
      }
    }

    it("is readable with --no-cluster-tls (the control: the recording shows what travels)", async () => {
      const { recording, log } = await serveThroughProxy(["--no-cluster-tls"]);
      const text = recording.all.toString("latin1");
      expect(recording.all.length, log).toBeGreaterThan(1000);
      expect(text, log).toContain(A.name);
      expect(text, log).toContain(B.name);
      expect(text, log).toContain(modelDir);
      // The relayed request's body, in the clear on the plaintext gRPC plane.
      expect(text, log).toContain(PROMPT);
      const tokensSeen = recording.all.includes(promptTokenBytes(modelDir));
      console.log(
        `plaintext control: ${recording.streams.length} streams, ${recording.all.length} bytes; node names, the model path and the relayed prompt visible; prompt token ids ${tokensSeen ? "visible" : "not on this link (the first stage is the coordinator's)"}`,
      );
    });

    it("is TLS from every connection's first byte by default, and shows nothing of the prompt or the nodes", async () => {
      const { recording, log } = await serveThroughProxy([]);
      expect(recording.streams.length, log).toBeGreaterThanOrEqual(4);
      expect(recording.all.length, log).toBeGreaterThan(1000);
      for (const s of recording.streams)
        if (s.bytes.length > 0) expect(s.bytes[0], `${s.file} does not start with a TLS record`).toBe(0x16);
      const text = recording.all.toString("latin1");
      for (const secret of [
        PROMPT,
        "zanzibar",
        A.name,
        B.name,
        modelDir,
        "model.layers.",
        "embed_tokens",
        "PRI * HTTP/2",
      ])
        expect(text.includes(secret), `"${secret}" is readable on the link`).toBe(false);
      expect(
        recording.all.includes(promptTokenBytes(modelDir)),
        "the prompt's token ids are on the link",
      ).toBe(false);
    });
  },
);
