// Can this process send and receive multicast DNS? It publishes a probe service of its own type and browses for
// it: seeing its own announcement proves both directions. On macOS 15 and later a process without the Local
// Network privacy permission (a launchd service, often) sends nothing and sees no one, with no error at all; this
// is how `cluster doctor` and `cluster up` notice.
import { randomBytes } from "node:crypto";
import { createBonjour, destroyBonjour, SERVICE_TYPE, unpublishAll } from "./bonjour.js";

/** Its own type, so nodes browsing `_studio-cluster._tcp` never take a probe for a node. */
const PROBE_TYPE = "studio-cluster-probe";
const NODE_ANSWER_MS = 1500;

export interface MulticastProbeResult {
  seen: boolean;
  /** Milliseconds until the announcement came back (or the timeout). */
  elapsedMs: number;
  /** A socket error bonjour-service reported (e.g. port 5353 unusable). */
  error?: string;
  /** Nodes seen advertising `_studio-cluster._tcp` meanwhile, as host:grpc-port. */
  nodes: string[];
}

export async function probeMulticast(
  timeoutMs: number,
  interfaceAddress?: string,
): Promise<MulticastProbeResult> {
  const started = performance.now();
  let error: string | undefined;
  const bonjour = createBonjour({
    interfaceAddress,
    onError: (err) => {
      error ??= err.message;
    },
  });
  const name = `probe-${randomBytes(4).toString("hex")}`;
  const nodes = new Set<string>();
  bonjour.find({ type: SERVICE_TYPE }, (service) => {
    const host = service.addresses?.find((a) => a.includes(".")) ?? service.host;
    if (host) nodes.add(`${host}:${service.port}`);
  });
  try {
    const seen = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      timer.unref();
      const browser = bonjour.find({ type: PROBE_TYPE }, (service) => {
        if (service.name !== name) return;
        clearTimeout(timer);
        // Give the nodes on the link a moment to answer the same query before reporting them.
        setTimeout(() => resolve(true), Math.max(0, NODE_ANSWER_MS - (performance.now() - started)));
      });
      bonjour.publish({ name, type: PROBE_TYPE, port: 9, host: `${name}.local`, disableIPv6: true });
      // Ask again part-way: the first query may go out before the announcement does.
      setTimeout(() => browser.update(), Math.min(1000, timeoutMs / 2)).unref();
    });
    return { seen, elapsedMs: Math.round(performance.now() - started), error, nodes: [...nodes] };
  } finally {
    await unpublishAll(bonjour);
    await destroyBonjour(bonjour);
  }
}
