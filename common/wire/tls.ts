// Optional TLS between nodes (`cluster up --tls-cert/--tls-key/--tls-ca`): mutual TLS with a cluster CA. Every
// node presents its certificate and accepts only peers whose certificate the CA signed; the cluster key is
// still checked on every call inside the channel. It is one setting per process (a node is either on TLS or
// not), so the clients and the server of a process read it here instead of every constructor taking it.
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

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

let processTls: WireTls | undefined;

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
  processTls = tls;
}

export function wireTlsEnabled(): boolean {
  return processTls !== undefined;
}

export function channelCredentials(): grpc.ChannelCredentials {
  if (!processTls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(processTls.ca, processTls.key, processTls.cert, {
    // Nodes are dialled by whatever address Bonjour or --peer gave (a Thunderbolt bridge IP may change), so the
    // host name is not checked: trust comes from the cluster CA having signed the peer's certificate.
    checkServerIdentity: () => undefined,
  });
}

export function serverCredentials(): grpc.ServerCredentials {
  if (!processTls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(
    processTls.ca,
    [{ private_key: processTls.key, cert_chain: processTls.cert }],
    true,
  );
}
