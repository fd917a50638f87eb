// One place that creates bonjour-service instances for both sides (node-agent publishes, coordinator browses):
// the service type, the TXT keys, and the error handling that keeps a multicast problem from crashing a node.
import { EventEmitter } from "node:events";
import BonjourPkg from "bonjour-service";

/** `_studio-cluster._tcp`: bonjour-service adds the underscores and the protocol. */
export const SERVICE_TYPE = "studio-cluster";

/** TXT record of a node: identity only. No secret, no live figures (a TXT change republishes the service). */
export interface NodeTxt {
  /** Node id. */
  id: string;
  /** gRPC port, decimal. */
  grpc: string;
  /** Package version. */
  v: string;
  /** Cluster id (a digest of the key, see common/cluster-key.ts). */
  cid: string;
}

export type BonjourInstance = InstanceType<typeof BonjourPkg.Bonjour>;

export interface BonjourOptions {
  /** IPv4 address of the interface to use for multicast (all interfaces when absent). */
  interfaceAddress?: string;
  onError: (err: Error) => void;
}

export function createBonjour(opts: BonjourOptions): BonjourInstance {
  // Bind the wildcard address even with an interface chosen: on Linux a socket bound to a unicast address never
  // receives multicast datagrams; the interface only selects where membership and sends go.
  const mdnsOptions = opts.interfaceAddress ? { interface: opts.interfaceAddress, bind: "0.0.0.0" } : {};
  // The constructor's options go to multicast-dns, whose fields bonjour-service's types do not declare.
  const bonjour = new BonjourPkg.Bonjour(mdnsOptions as Partial<BonjourPkg.ServiceConfig>, (err: Error) =>
    opts.onError(err),
  );
  // bonjour-service does not listen for the socket's own "error" (e.g. port 5353 unavailable); an unheard
  // "error" event would crash the process, so report it instead.
  const mdns = (bonjour as unknown as { server?: { mdns?: EventEmitter } }).server?.mdns;
  if (mdns instanceof EventEmitter) {
    mdns.on("error", (err: Error) => opts.onError(err));
    mdns.on("warning", () => {
      // Interfaces without multicast (e.g. some tunnels) warn on every membership refresh: not actionable.
    });
  }
  return bonjour;
}

/** Sends goodbye packets for everything this instance published (or gives up after a second). */
export function unpublishAll(bonjour: BonjourInstance): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 1000);
    bonjour.unpublishAll(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Destroys an instance, resolving once its socket is closed (or after a short grace period). */
export function destroyBonjour(bonjour: BonjourInstance): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 1000);
    try {
      bonjour.destroy(() => {
        clearTimeout(timer);
        resolve();
      });
    } catch {
      clearTimeout(timer);
      resolve();
    }
  });
}
