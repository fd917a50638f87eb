// Optional mutual TLS between nodes, with a self-signed cluster CA made here with openssl: two agents on TLS
// serve a generation through a pipeline whose clients use TLS too; a plaintext client, a client whose
// certificate the CA did not sign, and a TLS client with a wrong cluster key are all refused.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeClient } from "../../common/wire/client.js";
import { loadWireTls, useWireTls, type WireTls, wireTlsFilesOf } from "../../common/wire/tls.js";
import type { Pipeline } from "../../coordinator/pipeline.js";
import { Scheduler } from "../../coordinator/scheduler.js";
import {
  type AgentProcess,
  collect,
  ensureModel,
  evenPlan,
  newClusterKey,
  numLayersOf,
  spawnAgent,
  startPipeline,
} from "../helpers/pipeline-cluster.js";

function hasOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}
const openssl = hasOpenssl();
if (!openssl) console.warn("skipped: TLS tests need the openssl command to make a self-signed certificate");

const dir = mkdtempSync(join(tmpdir(), "wire-tls-"));
const key = newClusterKey();
let agents: AgentProcess[] = [];
let pipeline: Pipeline | undefined;
let tls: WireTls;
let stranger: WireTls;

/** A self-signed certificate (its own CA) for 127.0.0.1; returns the PEM file paths. */
function selfSigned(name: string) {
  const cert = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
      .concat(["-keyout", keyFile, "-out", cert, "-days", "2", "-subj", `/CN=${name}`])
      .concat(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]),
    { stdio: "ignore" },
  );
  return { cert, key: keyFile, ca: cert };
}

beforeAll(async () => {
  if (!openssl) return;
  const files = selfSigned("studio-cluster-test");
  tls = loadWireTls(files);
  stranger = loadWireTls(selfSigned("stranger"));
  const modelDir = await ensureModel("tiny-4bit", "tiny");
  const extraArgs = ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca];
  agents = await Promise.all(
    [0, 1].map((i) => spawnAgent({ modelDir, key, name: `tls-stage-${i}`, threads: 1, extraArgs })),
  );
  useWireTls(tls);
  pipeline = await startPipeline({
    plan: evenPlan("tls-plan", agents, numLayersOf(modelDir)),
    clusterKey: key,
  });
});

afterAll(async () => {
  useWireTls(undefined);
  pipeline?.close();
  await Promise.all(agents.map((a) => a.stop()));
  rmSync(dir, { recursive: true, force: true });
});

async function helloError(client: NodeClient): Promise<grpc.ServiceError | undefined> {
  try {
    await client.hello({}, 3000);
    return undefined;
  } catch (err) {
    return err as grpc.ServiceError;
  } finally {
    client.close();
  }
}

describe.skipIf(!openssl)("mutual TLS between nodes", () => {
  it("two agents on TLS serve a generation through a TLS pipeline", async () => {
    const scheduler = new Scheduler({ contextWindow: 4096 });
    scheduler.attach(pipeline!);
    const got = await collect(
      scheduler.generate({ prompt: [5, 6, 7, 8], maxTokens: 8, sampling: {}, stopTokenIds: [] }),
    );
    expect(got.tokens).toHaveLength(8);
    expect(got.end).toBe("length");
  });

  it("refuses a plaintext client, a certificate the CA did not sign, and a wrong key", async () => {
    useWireTls(undefined);
    const plain = await helloError(new NodeClient(agents[0].address, key));
    useWireTls(stranger);
    const foreign = await helloError(new NodeClient(agents[0].address, key));
    useWireTls(tls);
    const wrongKey = await helloError(new NodeClient(agents[0].address, newClusterKey()));
    const good = await helloError(new NodeClient(agents[0].address, key));
    expect(plain?.code).toBe(grpc.status.UNAVAILABLE);
    expect(foreign?.code).toBe(grpc.status.UNAVAILABLE);
    expect(wrongKey?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(good).toBeUndefined();
    console.log(
      `TLS: plaintext -> ${grpc.status[plain!.code]}, foreign certificate -> ${grpc.status[foreign!.code]}, wrong key -> ${grpc.status[wrongKey!.code]}`,
    );
  });

  it("half a TLS set-up, or a file that is not PEM, is refused naming the option", () => {
    expect(() => wireTlsFilesOf({ tlsCert: "a.pem" })).toThrow(
      /needs all of --tls-cert, --tls-key and --tls-ca/,
    );
    expect(() => loadWireTls({ cert: join(dir, "nope.crt"), key: "k", ca: "c" })).toThrow(
      /--tls-cert .*nope\.crt: cannot read/,
    );
    const files = selfSigned("swapped");
    expect(() => loadWireTls({ cert: files.key, key: files.key, ca: files.ca })).toThrow(
      /--tls-cert .*not a PEM/,
    );
  });
});
