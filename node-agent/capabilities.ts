// What this node offers the cluster: memory, chip, cores, backends, bandwidth and the model it holds. Hello
// answers with it; the planner splits layers by it.
import { cpus } from "node:os";
import { resolve } from "node:path";
import { effectiveBandwidthBps } from "../common/chip-bandwidth.js";
import { type KvDtype, kvElementBytes } from "../common/engine-api.js";
import { errorMessage } from "../common/errors.js";
import { modelIdOf, readModelConfig } from "../common/model-config.js";
import { heldParts, modelFingerprint, readManifest, readModelTable } from "../common/model-table.js";
import type { Capabilities, ModelInfo } from "../common/wire/types.js";
import { type MemoryGauge, systemMemory } from "./memory-gauge.js";

const LAYER_TENSOR = /^model\.layers\.(\d+)\./;

/**
 * Reads config.json and the safetensors headers (headers only: fast even for a 130 GB checkpoint), or a partial
 * checkpoint's manifest, with what it holds so far.
 */
export function readModelInfo(modelDir: string, kvElementBytes: number): ModelInfo {
  const config = readModelConfig(modelDir);
  const table = readModelTable(modelDir);
  const held = heldParts(modelDir, table);
  const manifest = readManifest(modelDir);
  const layerBytes = new Array<number>(config.numLayers).fill(0);
  let embedBytes = 0;
  let headBytes = 0;
  let totalBytes = 0;
  for (const [name, tensor] of table.tensors) {
    const bytes = tensor.byteLength;
    totalBytes += bytes;
    const layer = LAYER_TENSOR.exec(name);
    if (layer) {
      const index = Number(layer[1]);
      if (index < config.numLayers) layerBytes[index] += bytes;
    } else if (name.startsWith("model.embed_tokens.")) embedBytes += bytes;
    else if (name.startsWith("lm_head.") || name.startsWith("model.norm.")) headBytes += bytes;
  }
  return {
    id: modelIdOf(modelDir),
    path: resolve(modelDir),
    num_layers: config.numLayers,
    hidden_size: config.hiddenSize,
    vocab_size: config.vocabSize,
    max_position_embeddings: config.maxPositionEmbeddings,
    total_bytes: totalBytes,
    layer_bytes: layerBytes,
    embed_bytes: embedBytes,
    head_bytes: headBytes,
    kv_bytes_per_token_per_layer: 2 * config.numKvHeads * config.headDim * kvElementBytes,
    fingerprint: modelFingerprint(table),
    partial: !held.complete,
    held_layers: held.layers,
    held_embed: held.embed,
    held_head: held.head,
    repo: manifest?.repo ?? "",
    commit: manifest?.commit ?? "",
  };
}

export function chipName(): string {
  const model = cpus()[0]?.model?.trim();
  return model && model.length > 0 ? model : "unknown cpu";
}

export interface CapabilityInputs {
  modelDir: string;
  backends: string[];
  /** Measured bandwidth (0 = not measured: the chip table decides). */
  measuredBandwidthBps: number;
  /**
   * The GPU's recommended maximum working set as MLX reports it (`mlxInfo().maxRecommendedWorkingSetBytes`:
   * Metal only; a CPU-only MLX has none). Counts only where the node offers the mlx backend.
   */
  mlxRecommendedWorkingSetBytes?: number;
  /** Where memory is read (default: this machine's; a test hands it recorded outputs). */
  memory?: MemoryGauge;
  /** What the cpu backend caches keys and values as (default f32). */
  cpuKvDtype?: KvDtype;
}

export class CapabilityReader {
  private readonly inputs: CapabilityInputs;
  private model: ModelInfo | null = null;
  private modelProblem: string | undefined;

  constructor(inputs: CapabilityInputs) {
    this.inputs = inputs;
    try {
      this.model = readModelInfo(inputs.modelDir, this.kvElementBytes());
    } catch (err) {
      this.modelProblem = errorMessage(err);
    }
  }

  /** The node's cache element: mlx where it can run mlx, else cpu with its --kv-dtype. */
  private kvElementBytes(): number {
    return kvElementBytes(this.inputs.backends.includes("mlx") ? "mlx" : "cpu", this.inputs.cpuKvDtype);
  }

  setMeasuredBandwidth(bps: number): void {
    if (Number.isFinite(bps) && bps > 0) this.inputs.measuredBandwidthBps = bps;
  }

  /** Why the configured model cannot be used, if it cannot. */
  get problem(): string | undefined {
    return this.modelProblem;
  }

  get modelInfo(): ModelInfo | null {
    return this.model;
  }

  /** Reads the model again (a partial checkpoint holds more after a fetch). */
  refresh(): void {
    try {
      this.model = readModelInfo(this.inputs.modelDir, this.kvElementBytes());
    } catch (err) {
      this.modelProblem = errorMessage(err);
    }
  }

  /** Current figures (available memory changes; the rest is read once). */
  read(): Capabilities {
    const chip = chipName();
    const gauge = this.inputs.memory ?? systemMemory;
    const memory = gauge.read();
    // MLX's own figure replaces the estimate of the default limit where mlx computes (a raised sysctl still wins).
    const mlxBytes = this.inputs.backends.includes("mlx")
      ? this.inputs.mlxRecommendedWorkingSetBytes
      : undefined;
    const gpuLimit = gauge.gpuLimit(mlxBytes);
    return {
      memory_total: memory.totalBytes,
      // Available as the OS counts it (reclaimable cache included), not only free pages: memory-readers.ts.
      memory_free: memory.availableBytes,
      memory_source: memory.source,
      gpu_working_set_limit: gpuLimit?.bytes ?? 0,
      gpu_working_set_source: gpuLimit?.source ?? "",
      chip,
      cores: cpus().length,
      backends: this.inputs.backends,
      memory_bandwidth_bps: effectiveBandwidthBps(this.inputs.measuredBandwidthBps, chip),
      model_present: this.model !== null,
      model: this.model,
      platform: process.platform,
      arch: process.arch,
      cpu_kv_dtype: this.inputs.cpuKvDtype ?? "f32",
    };
  }
}
