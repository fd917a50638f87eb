// Membership: the live nodes of our cluster, as this node sees them.
//
// Candidates are gRPC addresses from five sources: this node itself, `--peer`, Bonjour, nodes that said Hello
// to us, and gossip: every member's heartbeat (NodeStatus.members) lists the live members it knows, so nodes
// that each joined through one `--peer` learn each other, and keep each other when that peer dies. Each
// candidate must first prove it holds the cluster key (common/wire/auth.ts: an HMAC over our nonce; the key
// never travels). One of another cluster is ignored; one that claims our cluster id and cannot
// prove the key is logged as an impostor and not probed again (a --peer address, or one announced again, only
// after a long pause).
// A node that proves it and answers the signed Hello becomes a member and stays one only while its
// Status stream keeps beating (a NodeStatus at least every `heartbeatTimeoutMs`). Several addresses may lead to
// one node (Bonjour and --peer, localhost and 127.0.0.1): members are keyed by node id, extra addresses wait.
import { EventEmitter } from "node:events";
import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";
import { LOCAL_NETWORK_GRANT, localNetworkErrno } from "../common/local-network.js";
import { PeerProofError } from "../common/wire/auth.js";
import { NodeClient } from "../common/wire/client.js";
import { dialsTls, TLS_REFUSAL_PATTERN } from "../common/wire/tls.js";
import type { Capabilities, HelloReply, MemberRef, NodeStatus } from "../common/wire/types.js";
import type { NodeLiveness } from "../coordinator/pipeline.js";
import { seesUs } from "./election.js";

export type CandidateSource = "self" | "peer" | "bonjour" | "caller" | "gossip";

/** Entries of one member's gossiped list that are looked at (a bound against a member that lists thousands). */
const GOSSIP_MAX_ENTRIES = 64;

export interface Member {
  nodeId: string;
  name: string;
  /** host:port other nodes use to reach this member's gRPC endpoint. */
  address: string;
  apiPort: number;
  version: string;
  capabilities: Capabilities;
  /** Plan whose shard it held when it answered Hello. */
  helloPlanId: string;
  /** The latest heartbeat. */
  status?: NodeStatus;
  self: boolean;
  joinedAt: number;
  lastSeen: number;
}

/** A member that was lost: kept (for the dashboard and /health) until it returns or says goodbye. */
export interface DepartedMember {
  member: Member;
  lostAt: number;
  reason: string;
}

export interface MembershipOptions {
  nodeId: string;
  clusterId: string;
  clusterKey: string;
  version: string;
  /** This node's gRPC port (sent in Hello so the callee can reach us back). */
  grpcPort: number;
  /** The address this node's own member record carries (what other stages dial), e.g. "10.0.0.5:7100". */
  selfAddress: string;
  /** Silence after which a member is dropped. Default 3000 ms. */
  heartbeatTimeoutMs?: number;
  /** Status interval asked of every member (default: a third of the heartbeat timeout, 100-1000 ms). */
  statusIntervalMs?: number;
  /** Delay before probing an unreachable candidate again (doubles up to 8x). */
  retryMs?: number;
  /** Bonjour and caller candidates unreachable this long are forgotten; --peer ones are retried forever. */
  forgetAfterMs?: number;
  /** Whose errors these are: on macOS an unreachable LAN address may mean a missing permission. */
  platform?: NodeJS.Platform;
  log?: (line: string) => void;
}

export interface MembershipEvents {
  /** A member joined or left. */
  change: [members: Member[]];
  /** A member's heartbeat arrived. */
  status: [member: Member];
}

type CandidateState = "idle" | "probing" | "live" | "alias" | "refused" | "closed";

interface Candidate {
  address: string;
  sources: Set<CandidateSource>;
  state: CandidateState;
  client?: NodeClient;
  stream?: grpc.ClientReadableStream<NodeStatus>;
  nodeId?: string;
  timer?: NodeJS.Timeout;
  failures: number;
  firstFailureAt?: number;
  lastProblem?: string;
  /** When capabilities were last read with Hello, and whether a refresh is under way. */
  helloAt?: number;
  refreshing?: boolean;
  /** When it last failed to prove the cluster key. */
  refusedAt?: number;
}

/** Capabilities change after start (a node measures its memory bandwidth in the background): re-read them. */
const CAPABILITY_REFRESH_MS = 5000;

export class Membership extends EventEmitter<MembershipEvents> implements NodeLiveness {
  private readonly candidates = new Map<string, Candidate>();
  private readonly members = new Map<string, Member>();
  /** node id -> the candidate whose Status stream carries it. */
  private readonly carriers = new Map<string, Candidate>();
  /** node id -> who wants to hear that it is lost (pipelines of a plan it serves in). */
  private readonly watchers = new Map<string, Set<(reason: string) => void>>();
  /** node id -> the member as it was when lost, until it is admitted again or its address says goodbye. */
  private readonly gone = new Map<string, DepartedMember>();
  private readonly watchdog: NodeJS.Timeout;
  private readonly checkIntervalMs: number;
  /** When the watchdog last ran: a late run means this process's event loop was busy, not the members. */
  private lastCheckAt: number;
  private readonly heartbeatTimeoutMs: number;
  private readonly retryMs: number;
  private readonly forgetAfterMs: number;
  private readonly log: (line: string) => void;
  private readonly platform: NodeJS.Platform;
  private closed = false;

  constructor(private readonly opts: MembershipOptions) {
    super();
    this.heartbeatTimeoutMs = opts.heartbeatTimeoutMs ?? 3000;
    this.retryMs = opts.retryMs ?? 1000;
    this.forgetAfterMs = opts.forgetAfterMs ?? 60_000;
    this.log = opts.log ?? ((line) => console.error(line));
    this.platform = opts.platform ?? process.platform;
    this.checkIntervalMs = Math.min(500, this.heartbeatTimeoutMs / 2);
    this.lastCheckAt = Date.now();
    this.watchdog = setInterval(() => this.checkHeartbeats(), this.checkIntervalMs);
    this.watchdog.unref();
  }

  /** Live members, sorted by node id. */
  live(): Member[] {
    return [...this.members.values()].sort((a, b) =>
      a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0,
    );
  }

  /** What this node gossips in its heartbeat: its live members (itself included) and their addresses. */
  gossip(): MemberRef[] {
    return this.live().map((m) => ({ node_id: m.nodeId, address: m.address }));
  }

  /** Members lost and not back, newest loss first. */
  departed(): DepartedMember[] {
    return [...this.gone.values()].sort((a, b) => b.lostAt - a.lostAt);
  }

  get(nodeId: string): Member | undefined {
    return this.members.get(nodeId);
  }

  /** NodeLiveness: onLost fires once when the member is lost (at once when it is not a member now). */
  watch(nodeId: string, onLost: (reason: string) => void): () => void {
    if (!this.members.has(nodeId)) {
      queueMicrotask(() => onLost(`${nodeId} is not a live member`));
      return () => {};
    }
    let listeners = this.watchers.get(nodeId);
    if (!listeners) {
      listeners = new Set();
      this.watchers.set(nodeId, listeners);
    }
    listeners.add(onLost);
    return () => listeners.delete(onLost);
  }

  /** NodeLiveness: the member's latest heartbeat. */
  latestStatus(nodeId: string): NodeStatus | undefined {
    return this.members.get(nodeId)?.status;
  }

  addCandidate(address: string, source: CandidateSource): void {
    if (this.closed) return;
    const normalized = normalizeAddress(address);
    const existing = this.candidates.get(normalized);
    if (existing) {
      existing.sources.add(source);
      // Someone just told us about it again: an idle candidate is worth probing now; a refused one only after
      // forgetAfterMs (the address may since belong to a real node that restarted with the right key).
      const refusedLongAgo =
        existing.state === "refused" && Date.now() - (existing.refusedAt ?? 0) > this.forgetAfterMs;
      if (existing.state === "idle" || refusedLongAgo) this.scheduleProbe(existing, 0);
      return;
    }
    const candidate: Candidate = {
      address: normalized,
      sources: new Set([source]),
      state: "idle",
      failures: 0,
    };
    this.candidates.set(normalized, candidate);
    this.scheduleProbe(candidate, 0);
  }

  /**
   * A member's gossiped list: addresses of nodes we do not know become candidates. They are probed like any
   * other (the key proof first: a member can name an address, never vouch for it), without hurrying the
   * back-off of candidates already known, and forgotten when unreachable for forgetAfterMs.
   */
  private learn(listed: readonly MemberRef[], from: Member): void {
    for (const entry of listed.slice(0, GOSSIP_MAX_ENTRIES)) {
      if (!entry.address || entry.node_id === this.opts.nodeId || this.members.has(entry.node_id)) continue;
      const normalized = gossipedAddress(entry.address, from.address);
      if (!normalized) continue;
      const known = this.candidates.get(normalized);
      if (known) {
        known.sources.add("gossip");
        continue;
      }
      this.log(
        `membership: ${from.name} (${from.nodeId}) knows ${entry.node_id} at ${normalized}: probing it`,
      );
      this.addCandidate(normalized, "gossip");
    }
  }

  /** Bonjour said goodbye: forget the address unless another source still names it. */
  removeCandidate(address: string, source: CandidateSource): void {
    const candidate = this.candidates.get(normalizeAddress(address));
    if (!candidate) return;
    candidate.sources.delete(source);
    if (candidate.sources.size > 0) return;
    this.dropCandidate(candidate, "left the network (Bonjour goodbye)");
  }

  /** Someone else (the pipeline) found the node dead: drop it now, probe it again later. */
  markLost(nodeId: string, reason: string): void {
    const carrier = this.carriers.get(nodeId);
    if (!carrier) return;
    this.lose(carrier, reason);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    for (const candidate of this.candidates.values()) this.shutCandidate(candidate);
    this.candidates.clear();
    this.members.clear();
    this.carriers.clear();
  }

  // ---------------------------------------------------------------- probing

  private scheduleProbe(candidate: Candidate, delayMs: number): void {
    if (this.closed || candidate.state === "closed") return;
    clearTimeout(candidate.timer);
    candidate.state = "idle";
    candidate.timer = setTimeout(() => void this.probe(candidate), delayMs);
    candidate.timer.unref();
  }

  private retryDelay(candidate: Candidate): number {
    return this.retryMs * 2 ** Math.min(3, Math.max(0, candidate.failures - 1));
  }

  private async probe(candidate: Candidate): Promise<void> {
    if (this.closed || candidate.state !== "idle") return;
    candidate.state = "probing";
    candidate.client ??= new NodeClient(candidate.address, this.opts.clusterKey);
    let reply: HelloReply;
    try {
      // The handshake first: nothing signed goes to a node that has not proved the key.
      await candidate.client.prove();
      reply = await candidate.client.hello(this.helloRequest(), Math.max(1000, this.heartbeatTimeoutMs));
    } catch (err) {
      const tlsRefusal = tlsRefusalOf(candidate.address, err);
      if (err instanceof PeerProofError && err.kind === "impostor") this.refuse(candidate, err);
      else if (tlsRefusal) this.refuse(candidate, tlsRefusal);
      else this.probeFailed(candidate, describeCallError(candidate.address, err, this.platform));
      return;
    }
    if (candidate.state !== "probing") return; // closed or dropped meanwhile
    this.admit(candidate, reply);
  }

  private probeFailed(candidate: Candidate, problem: string): void {
    if (candidate.state === "closed") return;
    // A channel that failed backs off its reconnects for up to minutes and fails calls fast meanwhile: the next
    // probe gets a fresh one, so a node that restarts is seen at once.
    this.dropClient(candidate);
    candidate.failures++;
    candidate.firstFailureAt ??= Date.now();
    if (problem !== candidate.lastProblem) this.log(`membership: ${problem}`);
    candidate.lastProblem = problem;
    const onlyHearsay = !candidate.sources.has("peer") && !candidate.sources.has("self");
    if (onlyHearsay && Date.now() - candidate.firstFailureAt > this.forgetAfterMs) {
      this.dropCandidate(candidate, `unreachable for ${Math.round(this.forgetAfterMs / 1000)} s`);
      return;
    }
    this.scheduleProbe(candidate, this.retryDelay(candidate));
  }

  /**
   * A node that claims our cluster without proving the key: logged, never followed, not probed again; an
   * address the operator gave with --peer is tried again after the longest back-off, one announced again by
   * Bonjour or a caller after forgetAfterMs.
   */
  private refuse(candidate: Candidate, err: PeerProofError): void {
    if (candidate.state === "closed") return;
    this.dropClient(candidate);
    if (err.message !== candidate.lastProblem) this.log(`membership: REFUSED ${err.message}`);
    candidate.lastProblem = err.message;
    candidate.state = "refused";
    candidate.refusedAt = Date.now();
    if (!candidate.sources.has("peer")) return;
    clearTimeout(candidate.timer);
    candidate.timer = setTimeout(() => {
      candidate.state = "idle";
      void this.probe(candidate);
    }, this.retryMs * 8);
    candidate.timer.unref();
  }

  private admit(candidate: Candidate, reply: HelloReply): void {
    // The cluster id was checked with the proof (NodeClient.hello): it is the digest of our key.
    const isSelf = reply.node_id === this.opts.nodeId;
    if (isSelf && !candidate.sources.has("self")) {
      // Our own advertisement or a --peer pointing back at us: nothing to track.
      candidate.state = "alias";
      candidate.nodeId = reply.node_id;
      return;
    }
    if (this.carriers.has(reply.node_id)) {
      // Another address already carries this node; keep this one in reserve.
      candidate.state = "alias";
      candidate.nodeId = reply.node_id;
      return;
    }
    candidate.failures = 0;
    candidate.firstFailureAt = undefined;
    candidate.lastProblem = undefined;
    candidate.state = "live";
    candidate.nodeId = reply.node_id;
    candidate.helloAt = Date.now();
    const now = Date.now();
    const member: Member = {
      nodeId: reply.node_id,
      name: reply.name || reply.node_id,
      address: isSelf ? this.opts.selfAddress : candidate.address,
      apiPort: reply.api_port,
      version: reply.version,
      capabilities: reply.capabilities ?? emptyCapabilities(),
      helloPlanId: reply.plan_id,
      self: isSelf,
      joinedAt: now,
      lastSeen: now,
    };
    this.members.set(member.nodeId, member);
    this.gone.delete(member.nodeId);
    this.carriers.set(member.nodeId, candidate);
    this.watchStatus(candidate, member);
    this.log(`membership: ${member.name} (${member.nodeId}) at ${member.address} joined`);
    this.emit("change", this.live());
  }

  private watchStatus(candidate: Candidate, member: Member): void {
    const interval = this.opts.statusIntervalMs ?? Math.max(100, Math.min(1000, this.heartbeatTimeoutMs / 3));
    const stream = candidate.client!.status(interval);
    candidate.stream = stream;
    stream.on("data", (status: NodeStatus) => {
      if (candidate.stream !== stream) return;
      member.lastSeen = Date.now();
      const sawUs = seesUs(member, this.opts.nodeId);
      member.status = status;
      if (status.members?.length) this.learn(status.members, member);
      this.emit("status", member);
      // Whether it sees us decides whether it can be elected or planned with (election.ts): a change of that is
      // a change of membership as the controller sees it.
      if (seesUs(member, this.opts.nodeId) !== sawUs) this.emit("change", this.live());
    });
    const ended = (why: string) => {
      if (candidate.stream !== stream || candidate.state !== "live") return;
      this.lose(candidate, why);
    };
    stream.on("error", (err) => ended(`Status stream failed: ${errorMessage(err)}`));
    stream.on("end", () => ended("Status stream ended"));
  }

  private checkHeartbeats(): void {
    const now = Date.now();
    const late = now - this.lastCheckAt > 2 * this.checkIntervalMs + 100;
    this.lastCheckAt = now;
    // Our own event loop was stalled (a busy moment, a GC): the members' heartbeats are waiting in the sockets,
    // read only after this timer. Judge them on the next run, once they had their turn; silence during our
    // stall is not theirs.
    if (late) return;
    for (const [nodeId, member] of this.members) {
      const carrier = this.carriers.get(nodeId);
      if (!carrier) continue;
      if (now - member.lastSeen > this.heartbeatTimeoutMs) {
        this.lose(carrier, `no heartbeat for ${now - member.lastSeen} ms`);
        continue;
      }
      if (!carrier.refreshing && now - (carrier.helloAt ?? 0) > CAPABILITY_REFRESH_MS)
        void this.refreshCapabilities(carrier, member);
    }
  }

  /** Quietly updates a member's capabilities; the next plan uses them (no change event: no re-plan for this). */
  private async refreshCapabilities(candidate: Candidate, member: Member): Promise<void> {
    candidate.refreshing = true;
    candidate.helloAt = Date.now();
    try {
      const reply = await candidate.client?.hello(
        this.helloRequest(),
        Math.max(1000, this.heartbeatTimeoutMs),
      );
      if (reply && reply.node_id === member.nodeId && this.members.get(member.nodeId) === member) {
        member.capabilities = reply.capabilities ?? member.capabilities;
        member.apiPort = reply.api_port;
      }
    } catch {
      // The heartbeat decides liveness; a failed refresh keeps the previous figures.
    } finally {
      candidate.refreshing = false;
    }
  }

  private helloRequest() {
    return {
      version: this.opts.version,
      node_id: this.opts.nodeId,
      cluster_id: this.opts.clusterId,
      grpc_port: this.opts.grpcPort,
    };
  }

  /** The member carried by this candidate is gone: drop it, re-probe its spare addresses and itself. */
  private lose(candidate: Candidate, reason: string): void {
    const nodeId = candidate.nodeId;
    this.stopStream(candidate);
    if (nodeId === undefined || this.carriers.get(nodeId) !== candidate) return;
    const member = this.members.get(nodeId);
    this.carriers.delete(nodeId);
    this.members.delete(nodeId);
    if (member && !member.self) this.gone.set(nodeId, { member, lostAt: Date.now(), reason });
    this.log(`membership: ${member?.name ?? nodeId} (${nodeId}) at ${candidate.address} lost: ${reason}`);
    const listeners = this.watchers.get(nodeId);
    this.watchers.delete(nodeId);
    for (const onLost of listeners ?? []) onLost(reason);
    candidate.failures = 1;
    candidate.firstFailureAt = Date.now();
    candidate.lastProblem = reason;
    this.dropClient(candidate);
    this.scheduleProbe(candidate, this.retryMs);
    for (const other of this.candidates.values()) {
      if (other !== candidate && other.state === "alias" && other.nodeId === nodeId)
        this.scheduleProbe(other, 0);
    }
    this.emit("change", this.live());
  }

  private stopStream(candidate: Candidate): void {
    const stream = candidate.stream;
    candidate.stream = undefined;
    if (!stream) return;
    stream.removeAllListeners("data");
    // Errors after cancel() are expected ("Cancelled on client"); keep one listener so none is unheard.
    stream.removeAllListeners("error");
    stream.on("error", () => {});
    stream.cancel();
  }

  private dropClient(candidate: Candidate): void {
    candidate.client?.close();
    candidate.client = undefined;
  }

  private shutCandidate(candidate: Candidate): void {
    clearTimeout(candidate.timer);
    this.stopStream(candidate);
    candidate.state = "closed";
    this.dropClient(candidate);
  }

  private dropCandidate(candidate: Candidate, reason: string): void {
    const carried = candidate.nodeId !== undefined && this.carriers.get(candidate.nodeId) === candidate;
    if (carried) this.lose(candidate, reason);
    // A node that said goodbye (or was forgotten) left on purpose: it is no longer shown as lost.
    if (candidate.nodeId !== undefined) this.gone.delete(candidate.nodeId);
    this.shutCandidate(candidate);
    this.candidates.delete(candidate.address);
  }
}

/** "localhost:7100" and "127.0.0.1:7100" are the same place; IPv6 literals keep their brackets. */
export function normalizeAddress(address: string): string {
  const trimmed = address.trim();
  return trimmed.startsWith("localhost:") ? `127.0.0.1:${trimmed.slice("localhost:".length)}` : trimmed;
}

/**
 * Where a gossiped address leads from here: the sender lists members as it reaches them, so a loopback address
 * from a sender on another machine means the sender's own machine (its host, that port). Undefined when it is
 * not host:port.
 */
export function gossipedAddress(listed: string, senderAddress: string): string | undefined {
  let entry: { host: string; port: number };
  let sender: { host: string; port: number };
  try {
    entry = parseHostPort(listed);
    sender = parseHostPort(senderAddress);
  } catch {
    return undefined;
  }
  if (isLoopbackHost(entry.host) && !isLoopbackHost(sender.host)) return `${sender.host}:${entry.port}`;
  return normalizeAddress(listed);
}

function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "[::1]" || host.startsWith("127.");
}

/** Parses "host:port" (IPv6 in brackets), throwing a message that names the bad value. */
export function parseHostPort(value: string, what = "address"): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:\s]+):(\d{1,5})$/.exec(value.trim());
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port < 1 || port > 65535)
    throw new Error(`${what} "${value}" is not host:port (e.g. 192.168.1.20:7100)`);
  return { host: match[1], port };
}

/**
 * A TLS handshake that failed on the peer's certificate or protocol: the node does not hold our key (its
 * certificate is not the cluster's), or does not speak TLS. Refused like a node that failed the key's proof.
 */
function tlsRefusalOf(address: string, err: unknown): PeerProofError | undefined {
  const details = (err as { details?: string }).details ?? "";
  if ((err as { code?: number }).code !== grpc.status.UNAVAILABLE || !dialsTls(address)) return undefined;
  if (!TLS_REFUSAL_PATTERN.test(details)) return undefined;
  const why = details
    .replace(/^No connection established\. Last error: (Error: )?/, "")
    .replace(/\. Resolution note:.*$/s, "")
    // OpenSSL's "<hex>:error:<code>:SSL routines:<function>:<reason>:<file>:<line>:" -> its reason.
    .replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:([^:]+):.*$/s, "$1");
  return new PeerProofError(
    `${address}: TLS handshake failed (${why}): it does not hold this cluster's key, or does not speak TLS (--no-cluster-tls on one side?)`,
    "impostor",
    "",
  );
}

function describeCallError(address: string, err: unknown, platform: NodeJS.Platform): string {
  const code = (err as { code?: number }).code;
  if (err instanceof PeerProofError) return `${address}: ${err.message} (join it with its --key)`;
  if (code === grpc.status.UNAUTHENTICATED)
    return `${address} refused our call: ${errorMessage(err)} (another cluster key, or another version)`;
  const message = errorMessage(err);
  if (code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED)
    return `${address}: Hello failed: ${message}`;
  const unreachable = `${address} is not reachable (${message})`;
  // A launchd service without the Local Network permission only ever logs this line: say why it may be.
  if (platform === "darwin" && localNetworkErrno(message))
    return `${unreachable}; if that machine is on this network, macOS may be denying this process the Local Network permission: ${LOCAL_NETWORK_GRANT}`;
  return unreachable;
}

function emptyCapabilities(): Capabilities {
  return {
    memory_total: 0,
    memory_free: 0,
    chip: "",
    cores: 0,
    backends: [],
    memory_bandwidth_bps: 0,
    model_present: false,
    model: null,
    platform: "",
    arch: "",
    gpu_working_set_limit: 0,
    gpu_working_set_source: "",
    memory_source: "",
    cpu_kv_dtype: "",
  };
}
