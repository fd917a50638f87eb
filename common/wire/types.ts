// TypeScript shapes of the messages in proto/cluster.proto, as @grpc/proto-loader hands them over
// (keepCase: snake_case names; longs as Number; enums as numbers; defaults filled in on decode).
// Keep in step with the .proto: this file is its mirror, not a second source of truth.

export const FrameKind = {
  UNSPECIFIED: 0,
  TOKENS: 1,
  HIDDEN: 2,
  RESULT: 3,
  ERROR: 4,
  CANCEL: 5,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export const Dtype = { UNSPECIFIED: 0, I32: 1, F32: 2, BF16: 3 } as const;
export type Dtype = (typeof Dtype)[keyof typeof Dtype];

export interface HelloRequest {
  version?: string;
  node_id?: string;
  cluster_id?: string;
  /** The caller's gRPC port when it is a node (0 otherwise). */
  grpc_port?: number;
  /** The caller's fresh nonce, which the reply's proof covers (common/wire/auth.ts). */
  nonce?: Uint8Array;
}

export interface ModelInfo {
  id: string;
  path: string;
  num_layers: number;
  hidden_size: number;
  vocab_size: number;
  max_position_embeddings: number;
  total_bytes: number;
  layer_bytes: number[];
  embed_bytes: number;
  head_bytes: number;
  kv_bytes_per_token_per_layer: number;
  /** Names, dtypes and shapes of every tensor, hashed ("" from an older node). */
  fingerprint?: string;
  /** Holds only some tensors (held_* say which); false = all of them. */
  partial?: boolean;
  held_layers?: number[];
  held_embed?: boolean;
  held_head?: boolean;
  repo?: string;
  commit?: string;
}

export interface Capabilities {
  memory_total: number;
  memory_free: number;
  chip: string;
  cores: number;
  backends: string[];
  memory_bandwidth_bps: number;
  model_present: boolean;
  model: ModelInfo | null;
  platform: string;
  arch: string;
  /** macOS: bytes the GPU may keep wired (0 elsewhere). */
  gpu_working_set_limit: number;
  gpu_working_set_source: string;
  memory_source: string;
  /** What the cpu backend caches keys and values as: "f32" or "f16"; "" from older nodes (f32). */
  cpu_kv_dtype: string;
}

export interface HelloReply {
  version: string;
  node_id: string;
  name: string;
  capabilities: Capabilities | null;
  api_port: number;
  grpc_port: number;
  cluster_id: string;
  plan_id: string;
  /** The server's epoch (16 random bytes per process), covered by every call's MAC. */
  nonce?: Uint8Array;
  /** HMAC proving the server holds the cluster key, over the caller's nonce (common/wire/auth.ts). */
  proof?: Uint8Array;
  /** The server's clock when it answered (ms since the epoch); the caller signs its calls in this clock. */
  time_ms?: number;
}

export interface LoadShardRequest {
  plan_id: string;
  model_id?: string;
  layer_start: number;
  layer_end: number;
  embed: boolean;
  head: boolean;
  backend?: string;
  threads?: number;
  downstream?: string;
  stage_index?: number;
  stage_count?: number;
  /** Nodes holding this stage's tensors, best first (where a node lacking some fetches them). */
  sources?: string[];
  /** The coordinator epoch (common/coordinator-epoch.ts): term and node id of the coordinator sending it (0/"": none). */
  coordinator_term?: number;
  coordinator_id?: string;
}

export interface LoadProgress {
  bytes_read: number;
  bytes_total: number;
  done: boolean;
  weight_bytes: number;
  activation_dtype: string;
  hidden_size: number;
  backend: string;
  error: string;
  /** Final message: KV bytes one token costs on this shard. */
  kv_bytes_per_token: number;
  /** "fetch" while receiving missing tensors, "load" while mapping them ("" from an older node). */
  phase?: string;
  fetch_bytes?: number;
  fetch_total?: number;
  /** A node's address or "hub". */
  fetch_source?: string;
}

export interface TensorWant {
  name: string;
  offset: number;
}

export interface FetchTensorsRequest {
  model_id: string;
  fingerprint: string;
  tensors: TensorWant[];
  chunk_bytes?: number;
}

export interface TensorChunk {
  name: string;
  offset: number;
  total: number;
  payload: Buffer;
  crc32: number;
}

export interface StatusRequest {
  interval_ms?: number;
  /** Hop figures only over frames received since this wall-clock time (us since the epoch); 0: last minute. */
  hops_since_us?: number;
}

export interface NodeStatus {
  node_id: string;
  time_us: number;
  plan_id: string;
  loaded: boolean;
  layer_start: number;
  layer_end: number;
  embed: boolean;
  head: boolean;
  tokens_per_s: number;
  busy_fraction: number;
  queue_depth: number;
  kv_bytes: number;
  weight_bytes: number;
  memory_used: number;
  memory_total: number;
  sequences: number;
  inbound_hop_p50_us: number;
  inbound_hop_p99_us: number;
  batches: number;
  mean_batch_items: number;
  backend: string;
  /** Frames the inbound hop figures are taken over. */
  inbound_hop_count: number;
  /** Prefix cache: block bytes in RAM and on disk, the disk budget, and positions served / computed since start. */
  cache_ram_bytes: number;
  cache_disk_bytes: number;
  cache_disk_budget_bytes: number;
  cache_ram_hit_tokens: number;
  cache_disk_hit_tokens: number;
  prompt_tokens_computed: number;
  /** Gossip: the live members the sender knows, itself included (absent or empty from an older node). */
  members?: MemberRef[];
  /** The coordinator epoch whose LoadShard the sender accepted last (0/"": none). */
  coordinator_term?: number;
  coordinator_id?: string;
}

export interface MemberRef {
  node_id: string;
  /** host:port of its gRPC endpoint, as the sender reaches it. */
  address: string;
}

export interface SeqsRequest {
  plan_id: string;
  seqs: number[];
}

export interface ReleaseReply {
  released: number;
}

export interface CancelReply {
  cancelled: number;
}

export interface ForkRequest {
  plan_id: string;
  /** The idle sequence whose prefix is shared. */
  seq: number;
  new_seq: number;
  prefix_length: number;
}

export interface WireSampling {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  /** Present only when set (proto3 optional). */
  seed?: number;
  top_logprobs?: number;
  logit_bias?: Array<{ token: number; bias: number }>;
  /** ToolConstraintSpec as JSON; "" or absent: unconstrained. */
  constraint?: string;
}

export interface WireTokenLogprob {
  token: number;
  logprob: number;
}

/** A frame as written (optional fields may be left out). */
export interface DataFrameOut {
  kind: FrameKind;
  seq: number;
  step?: number;
  position?: number;
  count?: number;
  dtype?: Dtype;
  shape?: number[];
  chunk_index?: number;
  chunk_count?: number;
  payload?: Uint8Array;
  sampling?: WireSampling | null;
  want_result?: boolean;
  sent_at_us?: number;
  plan_id?: string;
  token?: number;
  logprob?: number;
  top_logprobs?: WireTokenLogprob[];
  error_code?: string;
  error?: string;
  origin_stage?: number;
  origin_at_us?: number;
  wave?: number;
}

/** A frame as read (proto-loader fills every default in). */
export interface DataFrame {
  kind: number;
  seq: number;
  step: number;
  position: number;
  count: number;
  dtype: number;
  shape: number[];
  chunk_index: number;
  chunk_count: number;
  payload: Buffer;
  sampling: WireSampling | null;
  want_result: boolean;
  sent_at_us: number;
  plan_id: string;
  token: number;
  logprob: number;
  top_logprobs: WireTokenLogprob[];
  error_code: string;
  error: string;
  origin_stage: number;
  origin_at_us: number;
  wave: number;
}

export interface ResultsRequest {
  plan_id: string;
}

// ---------------------------------------------------------------- prefix-cache blocks

export interface KvBlock {
  hash: string;
  /** "" for a block at position 0. */
  parent: string;
  start: number;
  tokens: number[];
}

export interface StashBlocksRequest {
  plan_id: string;
  seq: number;
  blocks: KvBlock[];
  drop: string[];
}

export interface StashBlocksReply {
  stashed: number;
}

export interface BlockUse {
  hash: string;
  take: number;
}

export interface AssembleBlocksRequest {
  plan_id: string;
  new_seq: number;
  blocks: BlockUse[];
}

export interface AssembleBlocksReply {
  positions: number;
  complete: boolean;
  ram_positions: number;
  disk_positions: number;
  problem: string;
}

export interface DropBlocksRequest {
  plan_id: string;
  hashes: string[];
}

export interface DropBlocksReply {
  dropped: number;
}

export interface WatchBlocksRequest {
  plan_id: string;
}

export interface BlockState {
  block: KvBlock | null;
  disk: boolean;
}

export interface BlockEvents {
  blocks: BlockState[];
  snapshot_done: boolean;
}

export interface HttpHeader {
  name: string;
  value: string;
}

export interface RelayHttpRequest {
  method: string;
  path: string;
  headers: HttpHeader[];
  body: Buffer | Uint8Array;
}

export interface RelayHttpChunk {
  /** First message: the status (with headers); 0 on body messages. */
  status: number;
  headers: HttpHeader[];
  data: Buffer;
}
