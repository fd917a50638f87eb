// TLS between nodes. By default (`cluster up`, node-agent) every channel that leaves the machine is mutual TLS
// with the certificate derived from the cluster key (cluster-cert.ts); loopback stays plaintext (nothing to
// protect, and faster). With `--tls-cert/--tls-key/--tls-ca` the user's cluster CA is used instead, on every
// channel. With `--no-cluster-tls`, plaintext everywhere. The cluster key is still checked on every call inside
// the channel (auth.ts). It is one setting per process, so the clients and the server of a process read it here
// instead of every constructor taking it; the server side is listen.ts.
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import * as grpc from "@grpc/grpc-js";
import type { ClusterTls } from "./cluster-cert.js";

export interface WireTlsFiles {
  cert: string;
  key: string;
  ca: string;
}

export interface WireTls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

/** How this process's node clients and agent server secure the wire (one setting per process). */
export type WireSecurity =
  /** User-supplied --tls-* files: TLS on every channel, loopback included, trusting the user's CA. */
  | { kind: "files"; tls: WireTls }
  /** The default: TLS with the certificate derived from the cluster key on every channel that is not loopback. */
  | { kind: "cluster"; tls: ClusterTls }
  /** --no-cluster-tls, or a process that set nothing (a test's own clients): plaintext. */
  | { kind: "plain" };

let security: WireSecurity = { kind: "plain" };

/** Set, the cluster's own TLS is used on loopback too (to measure its cost); loopback is plaintext otherwise. */
export const LOOPBACK_TLS_ENV = "STUDIO_CLUSTER_TLS_LOOPBACK";

function readPem(file: string, option: string, marker: RegExp): Buffer {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    throw new Error(`${option} ${file}: cannot read (${(err as Error).message})`);
  }
  if (!marker.test(bytes.toString("latin1")))
    throw new Error(`${option} ${file}: not a PEM file of the expected kind (${marker.source})`);
  return bytes;
}

/** Reads and checks the three PEM files; an error names the option and the file at fault. */
export function loadWireTls(files: WireTlsFiles): WireTls {
  return {
    cert: readPem(files.cert, "--tls-cert", /-----BEGIN CERTIFICATE-----/),
    key: readPem(files.key, "--tls-key", /-----BEGIN [A-Z ]*PRIVATE KEY-----/),
    ca: readPem(files.ca, "--tls-ca", /-----BEGIN CERTIFICATE-----/),
  };
}

/** All three options or none: half a TLS set-up is a mistake worth a clear message. */
export function wireTlsFilesOf(opts: {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}): WireTlsFiles | undefined {
  const given = [opts.tlsCert, opts.tlsKey, opts.tlsCa].filter((v) => v !== undefined).length;
  if (given === 0) return undefined;
  if (given !== 3 || !opts.tlsCert || !opts.tlsKey || !opts.tlsCa)
    throw new Error("TLS between nodes needs all of --tls-cert, --tls-key and --tls-ca");
  return { cert: opts.tlsCert, key: opts.tlsKey, ca: opts.tlsCa };
}

/** From now on this process's node clients and agent server use `tls` (undefined: plaintext). */
export function useWireTls(tls: WireTls | undefined): void {
  security = tls ? { kind: "files", tls } : { kind: "plain" };
}

/** From now on this process's clients and server use the cluster's own TLS (undefined: plaintext). */
export function useClusterTls(tls: ClusterTls | undefined): void {
  security = tls ? { kind: "cluster", tls } : { kind: "plain" };
}

export function wireSecurity(): WireSecurity {
  return security;
}

export function wireTlsEnabled(): boolean {
  return security.kind !== "plain";
}

/** Whether an address ("host:port", "[v6]:port", or a bare host) is on this machine's loopback. */
export function isLoopbackAddress(address: string): boolean {
  let host = address.trim();
  const bracket = /^\[([^\]]+)\](?::\d+)?$/.exec(host);
  if (bracket) host = bracket[1];
  else if (/^[^:]+:\d+$/.test(host)) host = host.slice(0, host.lastIndexOf(":"));
  if (host.startsWith("::ffff:")) host = host.slice("::ffff:".length);
  if (host === "localhost" || host === "::1") return true;
  return isIP(host) === 4 && host.startsWith("127.");
}

/** Whether a client of this process dials `address` over TLS. */
export function dialsTls(address: string): boolean {
  if (security.kind === "files") return true;
  if (security.kind === "plain") return false;
  return !isLoopbackAddress(address) || process.env[LOOPBACK_TLS_ENV] === "1";
}

/**
 * Marks the errors of a TLS handshake that failed on the peer's certificate or protocol (not on the network):
 * a node that does not hold our key, or one that does not speak TLS. Membership refuses such a node.
 */
export const TLS_REFUSAL_PATTERN =
  /certificate|self[- ]signed|wrong version number|packet length too long|unexpected (message|eof)|alert|handshake failure|SSL routines/i;

export function channelCredentials(address: string): grpc.ChannelCredentials {
  if (!dialsTls(address)) return grpc.credentials.createInsecure();
  if (security.kind === "files") {
    const tls = security.tls;
    return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, {
      // Nodes are dialled by whatever address Bonjour or --peer gave (a Thunderbolt bridge IP may change), so the
      // host name is not checked: trust comes from the cluster CA having signed the peer's certificate.
      checkServerIdentity: () => undefined,
    });
  }
  const tls = (security as { kind: "cluster"; tls: ClusterTls }).tls;
  return grpc.credentials.createSsl(tls.cert, tls.key, tls.cert, {
    // The certificate names no host (nodes are dialled by any address they have): trust is the chain ending at
    // the cluster's certificate, which OpenSSL checked, and the certificate being exactly that one (the pin).
    checkServerIdentity: (_host, peer) =>
      peer.fingerprint256 === tls.fingerprint256
        ? undefined
        : new Error(`the peer's certificate is not this cluster's (fingerprint ${peer.fingerprint256})`),
  });
}

/** Credentials of a server that speaks one protocol (the "files" and "plain" settings; see listen.ts). */
export function serverCredentials(): grpc.ServerCredentials {
  if (security.kind === "plain") return grpc.ServerCredentials.createInsecure();
  const tls = security.tls;
  const ca = security.kind === "files" ? security.tls.ca : security.tls.cert;
  return grpc.ServerCredentials.createSsl(ca, [{ private_key: tls.key, cert_chain: tls.cert }], true);
}
