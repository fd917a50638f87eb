// The cluster's own TLS identity, derived from the cluster key alone: every node that holds the key computes the
// same Ed25519 key pair (HKDF of the key) and the same self-signed certificate (fixed names, serial and dates;
// Ed25519 signatures are deterministic), byte for byte. Nodes present it and trust exactly it, so a TLS handshake
// between two nodes succeeds only when both hold the key: the channel is mutually authenticated and encrypted
// with no set-up by the user. Nothing here is secret but the key (and the private key derived from it).
import "reflect-metadata"; // @peculiar/x509 needs the Reflect metadata API (its dependency tsyringe checks)
import { createHash, createPrivateKey, createPublicKey, hkdfSync, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

export interface ClusterTls {
  /** The certificate, PEM: presented by every node and the only one trusted. */
  cert: Buffer;
  /** Its Ed25519 private key, PKCS#8 PEM. */
  key: Buffer;
  /** The certificate's SHA-256 fingerprint as Node's X509Certificate spells it ("AB:CD:..."): the pin. */
  fingerprint256: string;
}

/** Bumped if the derivation ever changes, so that nodes of two versions fail the handshake instead of mis-trusting. */
const DERIVATION = "studio-cluster tls v1";
/** DER prefix of a PKCS#8 Ed25519 private key (RFC 8410); the 32-byte seed follows. */
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

const cache = new Map<string, Promise<ClusterTls>>();

/** The 32-byte Ed25519 seed of the cluster's TLS key: HKDF-SHA256 of the cluster key. */
function clusterSeed(clusterKey: string): Buffer {
  return Buffer.from(hkdfSync("sha256", clusterKey, DERIVATION, "ed25519 private key", 32));
}

/** Derives it anew (clusterTlsOf keeps one per key). */
export async function deriveClusterTls(clusterKey: string): Promise<ClusterTls> {
  const pkcs8 = Buffer.concat([ED25519_PKCS8_PREFIX, clusterSeed(clusterKey)]);
  const privateKey = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
  const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
  const algorithm = { name: "Ed25519" };
  const keys = {
    privateKey: await webcrypto.subtle.importKey("pkcs8", pkcs8, algorithm, false, ["sign"]),
    publicKey: await webcrypto.subtle.importKey("spki", spki, algorithm, true, ["verify"]),
  };
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  // Everything fixed: the same key must give the same bytes on every node and every start.
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=studio-cluster node",
    notBefore: new Date(Date.UTC(2025, 0, 1)),
    notAfter: new Date(Date.UTC(9999, 11, 31, 23, 59, 59)),
    signingAlgorithm: algorithm,
    keys,
    // Its own trust anchor: a CA certificate that signed itself.
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  const der = Buffer.from(cert.rawData);
  const digest = createHash("sha256").update(der).digest("hex").toUpperCase();
  return {
    cert: Buffer.from(cert.toString("pem")),
    key: Buffer.from(privateKey.export({ format: "pem", type: "pkcs8" }) as string),
    fingerprint256: digest.match(/../g)?.join(":") ?? "",
  };
}

/** The cluster's TLS identity for this key (computed once per key and process). */
export function clusterTlsOf(clusterKey: string): Promise<ClusterTls> {
  let entry = cache.get(clusterKey);
  if (!entry) {
    entry = deriveClusterTls(clusterKey);
    cache.set(clusterKey, entry);
  }
  return entry;
}
