// The node's Bonjour advertisement: `_studio-cluster._tcp` on its gRPC port with TXT {id, grpc, v, cid}.
import {
  createBonjour,
  destroyBonjour,
  type NodeTxt,
  SERVICE_TYPE,
  unpublishAll,
} from "../common/bonjour.js";

export interface AdvertiseOptions {
  nodeId: string;
  name: string;
  grpcPort: number;
  clusterId: string;
  version: string;
  /** IPv4 address of the interface to advertise on (all interfaces when absent). */
  interfaceAddress?: string;
  onError?: (err: Error) => void;
}

export interface Advertisement {
  /** Sends the goodbye packets (so browsers see the node leave at once) and closes the socket. */
  stop(): Promise<void>;
}

export function advertiseNode(opts: AdvertiseOptions): Advertisement {
  const onError = opts.onError ?? ((err: Error) => console.warn(`bonjour: ${err.message}`));
  const bonjour = createBonjour({ interfaceAddress: opts.interfaceAddress, onError });
  const txt: NodeTxt = { id: opts.nodeId, grpc: String(opts.grpcPort), v: opts.version, cid: opts.clusterId };
  bonjour.publish({
    // Instance names must be unique on the link; the node id makes them so even for one host's instances.
    name: `${opts.name}-${opts.nodeId}`,
    type: SERVICE_TYPE,
    port: opts.grpcPort,
    // Several nodes may share a host name (instances on one machine, namespaces): give each its own host record.
    host: `studio-${opts.nodeId}.local`,
    txt: { ...txt },
    disableIPv6: true,
  });
  let stopped: Promise<void> | undefined;
  return {
    stop() {
      stopped ??= unpublishAll(bonjour).then(() => destroyBonjour(bonjour));
      return stopped;
    },
  };
}
