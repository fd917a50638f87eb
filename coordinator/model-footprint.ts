// What a model costs a stage: bytes of weights per layer (held in memory), bytes read per decoded token per layer
// (decode speed), embedding and head sizes, and KV bytes per token — summed from the real safetensors headers.

import { type BackendName, type KvDtype, kvElementBytes } from "../common/engine-api.js";
import { readModelConfig } from "../common/model-config.js";
import { readModelTable } from "../common/model-table.js";

export interface ModelFootprint {
  numLayers: number;
  /** Bytes of every tensor of layer L (index = layer number). */
  layerBytes: number[];
  /** Bytes one decoded token reads from layer L: all dense weights, only the routed share of the experts. */
  layerReadBytes: number[];
  /** model.embed_tokens.* (one row is read per token: negligible for speed, not for memory). */
  embedBytes: number;
  /** model.norm + lm_head.* (read entirely for every token). */
  headBytes: number;
  numKvHeads: number;
  headDim: number;
}

/**
 * K and V, every kv head, in the backend's cache dtype: bf16 on mlx; on cpu f32, or f16 where the node caches
 * that (cluster up --kv-dtype f16).
 */
export function kvBytesPerTokenPerLayer(
  model: ModelFootprint,
  backend: BackendName,
  cpuKvDtype: KvDtype = "f32",
): number {
  return 2 * model.numKvHeads * model.headDim * kvElementBytes(backend, cpuKvDtype);
}

const LAYER_TENSOR = /^model\.layers\.(\d+)\./;

/**
 * Reads config.json and every shard header of the checkpoint (headers only: fast even for 130 GB), or a partial
 * checkpoint's manifest, which keeps the whole model's headers: a node plans without holding the bytes.
 */
export function readModelFootprint(modelDir: string): ModelFootprint {
  const config = readModelConfig(modelDir);
  const tensors = readModelTable(modelDir).tensors;
  const layerBytes = new Array<number>(config.numLayers).fill(0);
  const layerReadBytes = new Array<number>(config.numLayers).fill(0);
  const routedShare = config.expertsPerToken / config.numExperts;
  let embedBytes = 0;
  let headBytes = 0;
  for (const [name, tensor] of tensors) {
    const bytes = tensor.byteLength;
    const layer = LAYER_TENSOR.exec(name);
    if (layer) {
      const index = Number(layer[1]);
      // Extra layers (e.g. unpublished MTP modules) are never loaded, so they cost nothing.
      if (index >= config.numLayers) continue;
      layerBytes[index] += bytes;
      layerReadBytes[index] += name.includes(".switch_mlp.") ? bytes * routedShare : bytes;
    } else if (name.startsWith("model.embed_tokens.")) {
      embedBytes += bytes;
    } else if (name.startsWith("lm_head.") || name.startsWith("model.norm.")) {
      headBytes += bytes;
    }
  }
  const missing = layerBytes.indexOf(0);
  if (missing >= 0)
    throw new Error(`${modelDir}: no tensors for layer ${missing} (model.layers.${missing}.*)`);
  return {
    numLayers: config.numLayers,
    layerBytes,
    layerReadBytes,
    embedBytes,
    headBytes,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
  };
}
