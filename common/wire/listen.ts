// Where a node agent's gRPC server listens, and how it secures each connection (tls.ts has the setting).
// With the cluster's own TLS (the default) one port takes both kinds of connection: a TLS handshake from anyone
// (it succeeds only with the cluster's certificate, checked both ways and pinned), plaintext only from this
// machine's loopback (the default for a loopback peer; from the network it is refused and logged). The first
// byte tells them apart: a TLS connection opens with a handshake record (0x16), an HTTP/2 one with "PRI".
// Accepted connections are handed to grpc-js (Server.createConnectionInjector), already decrypted.
import * as net from "node:net";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../errors.js";
import type { ClusterTls } from "./cluster-cert.js";
import { isLoopbackAddress, serverCredentials, wireSecurity } from "./tls.js";

export interface NodeListener {
  port: number;
  /** Stops taking connections (the grpc-js server's own shutdown closes the sessions). */
  close(): void;
}

const TLS_HANDSHAKE_RECORD = 0x16;
/** A connection must say something (and finish its handshake) this soon, or it is dropped. */
const firstBytesTimeoutMs = 10_000;
/** The same peer's refusals are logged at most this often (an impostor may knock every second). */
const refusalLogEveryMs = 60_000;

/** Listens on host:port (0 = any free port) with the process's wire setting; resolves once it listens. */
export async function listenNodeServer(
  server: grpc.Server,
  host: string,
  port: number,
  log: (line: string) => void,
): Promise<NodeListener> {
  const address = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  const security = wireSecurity();
  if (security.kind !== "cluster") {
    const bound = await new Promise<number>((resolve, reject) => {
      server.bindAsync(address, serverCredentials(), (err, p) => {
        if (err) reject(new Error(`node agent cannot listen on ${address}: ${err.message}`));
        else resolve(p);
      });
    });
    return { port: bound, close: () => {} };
  }
  return listenMixed(server, host, port, security.tls, log);
}

/**
 * Who a TLS socket talked to. After a failed handshake it no longer knows (its handle is gone); the TCP socket it
 * wrapped still does (Node keeps it as _parent, not in its typings).
 */
function peerOf(socket: tls.TLSSocket): { remoteAddress?: string; remotePort?: number } {
  const raw = (socket as unknown as { _parent?: net.Socket })._parent;
  return socket.remoteAddress ? socket : (raw ?? socket);
}

class RefusalLog {
  private readonly last = new Map<string, number>();
  constructor(private readonly log: (line: string) => void) {}

  refused(socket: { remoteAddress?: string; remotePort?: number }, why: string): void {
    const host = socket.remoteAddress ?? "?";
    const now = Date.now();
    if (now - (this.last.get(host) ?? 0) < refusalLogEveryMs) return;
    this.last.set(host, now);
    if (this.last.size > 1024) this.last.clear();
    this.log(`REFUSED connection from ${host}:${socket.remotePort ?? "?"}: ${why}`);
  }
}

async function listenMixed(
  server: grpc.Server,
  host: string,
  port: number,
  cluster: ClusterTls,
  log: (line: string) => void,
): Promise<NodeListener> {
  const refusals = new RefusalLog(log);
  const inject = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const tlsServer = tls.createServer({
    key: cluster.key,
    cert: cluster.cert,
    ca: [cluster.cert],
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ["h2"],
    handshakeTimeout: firstBytesTimeoutMs,
  });
  tlsServer.on("secureConnection", (socket: tls.TLSSocket) => {
    // OpenSSL checked the chain ends at the cluster's certificate; the pin makes it exactly that certificate.
    if (socket.getPeerCertificate()?.fingerprint256 !== cluster.fingerprint256) {
      refusals.refused(socket, "its TLS certificate is not this cluster's");
      socket.destroy();
      return;
    }
    inject.injectConnection(socket);
  });
  tlsServer.on("tlsClientError", (err: Error, socket: tls.TLSSocket) => {
    refusals.refused(
      peerOf(socket),
      `TLS handshake failed (${errorMessage(err)}): it does not hold this cluster's key`,
    );
  });

  const route = (socket: net.Socket, first: Buffer): void => {
    // Read now, so that the socket keeps it for a refusal logged after its handshake failed (peerOf).
    const from = socket.remoteAddress ?? "";
    if (first[0] === TLS_HANDSHAKE_RECORD) {
      tlsServer.emit("connection", socket);
    } else if (isLoopbackAddress(from)) {
      inject.injectConnection(socket);
    } else {
      refusals.refused(
        socket,
        "plaintext from the network (this node speaks TLS with the cluster's certificate; is the peer on --no-cluster-tls or another version?)",
      );
      socket.destroy();
    }
  };
  const listener = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.setTimeout(firstBytesTimeoutMs, () => socket.destroy());
    socket.on("error", () => {}); // a peer that went away before saying anything
    socket.once("data", (first: Buffer) => {
      socket.pause();
      socket.setTimeout(0);
      // Given back, so that TLS or HTTP/2 reads the stream from its first byte.
      socket.unshift(first);
      route(socket, first);
    });
  });
  const bound = await new Promise<number>((resolve, reject) => {
    listener.once("error", (err) =>
      reject(new Error(`node agent cannot listen on ${host}:${port}: ${errorMessage(err)}`)),
    );
    listener.listen({ host, port }, () => resolve((listener.address() as net.AddressInfo).port));
  });
  return {
    port: bound,
    close: () => {
      listener.close();
      inject.destroy();
    },
  };
}
