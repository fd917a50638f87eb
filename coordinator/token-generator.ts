// The contract between the HTTP API and the scheduler: token ids in, a stream of generation events out.
import type { SamplingParams } from "../common/engine-api.js";

export interface GenerationRequest {
  /** The rendered and tokenized prompt. */
  prompt: number[];
  maxTokens: number;
  sampling: SamplingParams;
  /** Generation ends after one of these tokens is produced (it is reported, with reason "stop"). */
  stopTokenIds: number[];
  /** Aborting cancels the sequence on every stage and frees its KV. */
  signal?: AbortSignal;
}

export type GenerationEvent =
  /** The prompt has been accepted by the scheduler (sent before prefill finishes). */
  | { type: "admitted"; promptTokens: number; cachedTokens: number }
  | { type: "token"; token: number; logprob?: number }
  | { type: "end"; reason: "stop" | "length" };

export interface TokenGenerator {
  /** Longest prompt + output the cluster accepts, in tokens. */
  readonly contextWindow: number;
  /** Throws (or the iterator throws) a ClusterError on failure: node_lost, cluster_not_ready, overloaded, cancelled. */
  generate(request: GenerationRequest): AsyncIterable<GenerationEvent>;
}
