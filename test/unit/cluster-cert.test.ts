// The cluster's TLS identity derived from the cluster key (common/wire/cluster-cert.ts) and the listener that
// takes TLS and loopback plaintext on one port (common/wire/listen.ts): the same key gives the same certificate
// and key byte for byte, another key another one; over real sockets, a gRPC call with the cluster's
// certificate goes through, a client with another key's certificate (or with none) fails the handshake and is
// logged as refused, and plaintext is taken from loopback only.
import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateClusterKey } from "../../common/cluster-key.js";
import { type ClusterTls, clusterTlsOf, deriveClusterTls } from "../../common/wire/cluster-cert.js";
import { listenNodeServer, type NodeListener } from "../../common/wire/listen.js";
import { channelOptions, studioNodeClientConstructor, studioNodeService } from "../../common/wire/proto.js";
import {
  channelCredentials,
  dialsTls,
  isLoopbackAddress,
  LOOPBACK_TLS_ENV,
  useClusterTls,
  useWireTls,
} from "../../common/wire/tls.js";
import type { HelloReply } from "../../common/wire/types.js";

const key = generateClusterKey();
const otherKey = generateClusterKey();

describe("the certificate derived from the cluster key", () => {
  it("is the same for the same key, another for another key, and a valid self-signed Ed25519 certificate", async () => {
    const a = await clusterTlsOf(key);
    // A second derivation from scratch (not the per-process cache) gives the same bytes.
    const again = await deriveClusterTls(key);
    expect(again.cert.equals(a.cert)).toBe(true);
    expect(again.key.equals(a.key)).toBe(true);
    const b = await clusterTlsOf(otherKey);
    expect(b.cert.equals(a.cert)).toBe(false);
    expect(b.key.equals(a.key)).toBe(false);

    const cert = new X509Certificate(a.cert);
    expect(cert.fingerprint256).toBe(a.fingerprint256);
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.publicKey.asymmetricKeyType).toBe("ed25519");
    const derived = createPublicKey(createPrivateKey(a.key)).export({ format: "der", type: "spki" });
    expect(derived.equals(cert.publicKey.export({ format: "der", type: "spki" }))).toBe(true);
    expect(cert.verify(new X509Certificate(b.cert).publicKey)).toBe(false);
    // The key itself appears nowhere in what a peer sees.
    expect(a.cert.toString()).not.toContain(key);
    expect(new Date(cert.validTo).getUTCFullYear()).toBe(9999);
  });
});

describe("a node listener on the cluster's TLS", () => {
  const logs: string[] = [];
  let server: grpc.Server;
  let listener: NodeListener;
  let address = "";
  let ours: ClusterTls;
  let theirs: ClusterTls;

  beforeAll(async () => {
    ours = await clusterTlsOf(key);
    theirs = await clusterTlsOf(otherKey);
    useClusterTls(ours);
    server = new grpc.Server();
    server.addService(studioNodeService(), {
      Hello: (_call: unknown, callback: grpc.sendUnaryData<Partial<HelloReply>>) =>
        callback(null, { node_id: "listener-test", name: "listener" }),
    });
    listener = await listenNodeServer(server, "127.0.0.1", 0, (line) => logs.push(line));
    address = `127.0.0.1:${listener.port}`;
  });

  afterAll(async () => {
    delete process.env[LOOPBACK_TLS_ENV];
    useWireTls(undefined);
    listener?.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  });

  /** A Hello through a fresh channel made with the process's setting as it is now. */
  async function hello(): Promise<{ code: number; details: string; name?: string }> {
    const Ctor = studioNodeClientConstructor();
    const client = new Ctor(address, channelCredentials(address), {
      ...channelOptions,
      "grpc.use_local_subchannel_pool": 1,
    });
    const call = client.Hello as unknown as (
      req: object,
      opts: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null, reply?: HelloReply) => void,
    ) => void;
    return new Promise((resolve) => {
      call.call(client, {}, { deadline: Date.now() + 5000 }, (err, reply) => {
        client.close();
        resolve({ code: err?.code ?? 0, details: err?.details ?? "", name: reply?.name });
      });
    });
  }

  it("dials TLS off loopback only, unless told to use it on loopback too", () => {
    expect(isLoopbackAddress("127.0.0.1:7100")).toBe(true);
    expect(isLoopbackAddress("[::1]:7100")).toBe(true);
    expect(isLoopbackAddress("::ffff:127.0.0.1")).toBe(true);
    expect(isLoopbackAddress("10.0.0.2:7100")).toBe(false);
    expect(isLoopbackAddress("mac-studio.local:7100")).toBe(false);
    expect(dialsTls("10.0.0.2:7100")).toBe(true);
    expect(dialsTls("127.0.0.1:7100")).toBe(false);
    process.env[LOOPBACK_TLS_ENV] = "1";
    expect(dialsTls("127.0.0.1:7100")).toBe(true);
    delete process.env[LOOPBACK_TLS_ENV];
  });

  it("serves a call over TLS with the cluster's certificate and over loopback plaintext", async () => {
    process.env[LOOPBACK_TLS_ENV] = "1";
    const overTls = await hello();
    delete process.env[LOOPBACK_TLS_ENV];
    const plain = await hello();
    expect(overTls).toEqual({ code: 0, details: "", name: "listener" });
    expect(plain).toEqual({ code: 0, details: "", name: "listener" });
  });

  it("fails the handshake with another key's certificate, both ways, and logs the refusal", async () => {
    process.env[LOOPBACK_TLS_ENV] = "1";
    useClusterTls(theirs);
    const foreign = await hello();
    useClusterTls(ours);
    delete process.env[LOOPBACK_TLS_ENV];
    console.log(`another key's client: ${grpc.status[foreign.code]} ${foreign.details}`);
    // The client saw the server's certificate is not the one it trusts, and hung up.
    expect(foreign.code).toBe(grpc.status.UNAVAILABLE);

    const outcome = (options: tls.ConnectionOptions) =>
      new Promise<string>((resolve) => {
        const socket = tls.connect({
          host: "127.0.0.1",
          port: listener.port,
          servername: "studio-cluster",
          ...options,
        });
        socket.once("secureConnect", () => {
          // The server may still refuse after its side of the handshake: wait for it to speak or hang up.
          socket.once("close", () => resolve("closed"));
          socket.once("data", () => resolve("talked"));
          setTimeout(() => resolve("open"), 2000);
        });
        socket.once("error", (err) => resolve(`error: ${err.message}`));
      });
    // Clients that go on whatever the server shows: the server refuses another key's certificate, or none.
    const anyServer = { ALPNProtocols: ["h2"], rejectUnauthorized: false };
    const asTheirs = await outcome({ ...anyServer, key: theirs.key, cert: theirs.cert });
    const noCert = await outcome(anyServer);
    expect([asTheirs, noCert].filter((r) => r === "talked")).toEqual([]);
    const refusals = logs.filter((l) =>
      /^REFUSED connection from 127\.0\.0\.1:\d+: TLS handshake failed/.test(l),
    );
    expect(refusals.length, logs.join("\n")).toBeGreaterThanOrEqual(1);
    const asOurs = { key: ours.key, cert: ours.cert, ca: [ours.cert], ALPNProtocols: ["h2"] };
    // The same handshake with the cluster's own certificate stays open and the HTTP/2 server speaks first.
    expect(await outcome({ ...asOurs, checkServerIdentity: () => undefined })).toBe("talked");
  });
});
