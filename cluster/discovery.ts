// Bonjour browsing: finds `_studio-cluster._tcp` services of our cluster id and reports their gRPC addresses.
// Bonjour only says "up" reliably; a crashed node never says goodbye, so liveness is membership's job (Status).
import { EventEmitter } from "node:events";
import type BonjourPkg from "bonjour-service";
import {
  type BonjourInstance,
  createBonjour,
  destroyBonjour,
  type NodeTxt,
  SERVICE_TYPE,
} from "../common/bonjour.js";

type Service = BonjourPkg.Service;

export interface DiscoveredNode {
  nodeId: string;
  clusterId: string;
  version: string;
  /** host:port of the node's gRPC endpoint. */
  address: string;
}

export interface DiscoveryEvents {
  up: [node: DiscoveredNode];
  down: [node: DiscoveredNode];
}

export interface DiscoveryOptions {
  clusterId: string;
  /** IPv4 address of the interface to browse on (all interfaces when absent). */
  interfaceAddress?: string;
  /** How often to ask the network again, so a node whose announcement was lost is still found. */
  requeryMs?: number;
  onError?: (err: Error) => void;
}

function isIpv4(address: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(address);
}

/**
 * The host to dial: the address the answer came from (it reached us, so it is routable back), else the first
 * IPv4 address in the answer's A records.
 */
function hostOf(service: Service): string | undefined {
  const referer = service.referer?.address;
  if (referer && isIpv4(referer)) return referer;
  return service.addresses?.find(isIpv4);
}

function readTxt(service: Service): Partial<NodeTxt> {
  const txt = (service.txt ?? {}) as Record<string, unknown>;
  const text = (key: keyof NodeTxt) => (typeof txt[key] === "string" ? (txt[key] as string) : undefined);
  return { id: text("id"), grpc: text("grpc"), v: text("v"), cid: text("cid") };
}

export class BonjourDiscovery extends EventEmitter<DiscoveryEvents> {
  private readonly bonjour: BonjourInstance;
  private readonly browser: ReturnType<BonjourInstance["find"]>;
  private readonly timer: NodeJS.Timeout;
  /** fqdn -> what we reported as up, so "down" reports the same node. */
  private readonly known = new Map<string, DiscoveredNode>();
  private closed = false;

  constructor(private readonly opts: DiscoveryOptions) {
    super();
    const onError = opts.onError ?? ((err: Error) => console.warn(`bonjour: ${err.message}`));
    this.bonjour = createBonjour({ interfaceAddress: opts.interfaceAddress, onError });
    this.browser = this.bonjour.find({ type: SERVICE_TYPE });
    this.browser.on("up", (service) => this.onUp(service));
    this.browser.on("srv-update", (service) => this.onUp(service));
    this.browser.on("txt-update", (service) => this.onUp(service));
    this.browser.on("down", (service) => this.onDown(service));
    this.timer = setInterval(() => {
      this.browser.expire();
      this.browser.update();
    }, opts.requeryMs ?? 3000);
    this.timer.unref();
  }

  /** Nodes of our cluster currently listed by Bonjour. */
  nodes(): DiscoveredNode[] {
    return [...this.known.values()];
  }

  private toNode(service: Service): DiscoveredNode | undefined {
    const txt = readTxt(service);
    const host = hostOf(service);
    const port = Number(txt.grpc ?? service.port);
    if (!txt.id || !txt.cid || !host || !Number.isInteger(port) || port <= 0) return undefined;
    return { nodeId: txt.id, clusterId: txt.cid, version: txt.v ?? "", address: `${host}:${port}` };
  }

  private onUp(service: Service): void {
    if (this.closed) return;
    const node = this.toNode(service);
    // Other clusters on the same network are none of our business.
    if (!node || node.clusterId !== this.opts.clusterId) return;
    const previous = this.known.get(service.fqdn);
    if (previous && previous.address === node.address && previous.nodeId === node.nodeId) return;
    if (previous) this.emit("down", previous);
    this.known.set(service.fqdn, node);
    this.emit("up", node);
  }

  private onDown(service: Service): void {
    if (this.closed) return;
    const previous = this.known.get(service.fqdn);
    if (!previous) return;
    this.known.delete(service.fqdn);
    this.emit("down", previous);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.browser.stop();
    await destroyBonjour(this.bonjour);
  }
}
