// Loads the studio_engine addon and implements common/engine-api.ts on top of it. Options are checked here
// (and again natively) so a bad layer range or backend fails with a message naming the option.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import {
  type BackendName,
  type Engine,
  type EngineStats,
  type ForwardItem,
  type ForwardOutput,
  isKvDtype,
  isMatmulInputs,
  type KvBlockSlice,
  type KvBlockTake,
  type OpenOptions,
} from "../common/engine-api.js";
import { type ModelConfig, readModelConfig } from "../common/model-config.js";
import { packageRoot } from "../common/paths.js";

/**
 * stats() plus what benches and tests need: weight bytes the forward passes read so far (routed experts only),
 * and the decode steps built ahead on the device (mlx) that the next call used, or that were dropped.
 */
export interface NativeEngineStats extends EngineStats {
  weightBytesRead: number;
  stepsAheadUsed: number;
  stepsAheadDropped: number;
  /** Attention computations launched (mlx: fused kernels, one per sequence per layer or per group of decode rows). */
  attentionLaunches: number;
}

/** The Engine contract with the extra stats figure. */
export interface StudioEngine extends Engine {
  stats(): NativeEngineStats;
}

interface NativeEngineHandle {
  load(): Promise<void>;
  forward(batch: ForwardItem[]): Promise<ForwardOutput[]>;
  release(seq: number): Promise<void>;
  fork(seq: number, newSeq: number, prefixLength: number): Promise<void>;
  stashBlocks(seq: number, blocks: KvBlockSlice[]): Promise<void>;
  assemble(newSeq: number, blocks: KvBlockTake[]): Promise<void>;
  dropBlocks(ids: string[]): Promise<void>;
  exportBlock(id: string): Promise<Uint8Array[]>;
  importBlock(id: string, length: number, layers: Uint8Array[]): Promise<void>;
  stats(): NativeEngineStats;
  close(): Promise<void>;
}

interface NativeModule {
  Engine: new (
    modelDir: string,
    config: ModelConfig,
    options: {
      layerStart: number;
      layerEnd: number;
      embed: boolean;
      head: boolean;
      threads: number;
      backend: string;
      matmulInputs: string;
      kvDtype: string;
    },
    onProgress?: (done: number, total: number) => void,
  ) => NativeEngineHandle;
  availableBackends(): BackendName[];
  mlxInfo(): MlxInfo | null;
  cpuInfo(): CpuInfo;
  measureMemoryBandwidth(threads: number, bytes: number, kind: "copy" | "read"): Promise<number>;
}

let loaded: NativeModule | undefined;

function addonPath(): string {
  // Another build of the same addon (the AddressSanitizer one the checkpoint fuzz test runs) may be named here.
  const override = process.env.STUDIO_ENGINE_ADDON;
  if (override) return override;
  return join(packageRoot(), "native", "build", "Release", "studio_engine.node");
}

function nativeModule(): NativeModule {
  if (loaded) return loaded;
  const path = addonPath();
  if (!existsSync(path))
    throw new Error(
      `studio_engine addon not built (${path} missing): run "npm install" or "npx node-gyp rebuild --directory native"`,
    );
  loaded = createRequire(import.meta.url)(path) as NativeModule;
  return loaded;
}

/** Backends this build of the addon can run. */
export function availableBackends(): BackendName[] {
  return nativeModule().availableBackends();
}

/** The MLX the addon was built with: its version and the device the mlx backend computes on. */
export interface MlxInfo {
  /** The version of the MLX library loaded now. */
  version: string;
  /** The version of the MLX headers the addon was compiled against. */
  builtWith: string;
  device: "gpu" | "cpu";
  /** The GPU's recommended maximum working set (Metal); absent on MLX's cpu device and on CUDA. */
  maxRecommendedWorkingSetBytes?: number;
  /** Set when the loaded MLX is not the one built against: loading an mlx engine then fails with this message. */
  versionError?: string;
  /** The file the MLX library was loaded from (absent where the loader cannot say). */
  libraryPath?: string;
}

/** MLX's version and device when this build has the mlx backend, else null. */
export function mlxInfo(): MlxInfo | null {
  return nativeModule().mlxInfo();
}

/** The cpu backend's kernels in this build (compiled for the machine it was built on: -march=native). */
export interface CpuInfo {
  /** The SIMD path the kernels were compiled for. */
  simd: "avx512" | "avx2" | "neon" | "portable";
  /** Whether 4- and 8-bit matmuls take int16 inputs with exact integer dots (x86 with AVX2 or AVX-512). */
  int16: boolean;
  /**
   * Whether `matmulInputs: "int8"` has its kernels here (x86 with AVX2, aarch64 with dotprod); elsewhere it runs
   * the default path.
   */
  int8: boolean;
}

/** The SIMD path of this build's cpu kernels. */
export function cpuInfo(): CpuInfo {
  return nativeModule().cpuInfo();
}

/** CpuInfo in words, as `cluster doctor` and `bench:engine` print it: "avx2, int16 dots for 4/8-bit weights". */
export function describeCpuKernels(info: CpuInfo): string {
  const int16 = info.int16 ? ", int16 dots for 4/8-bit weights" : "";
  return `${info.simd}${int16}${info.int8 ? ", int8 inputs available for 4-bit weights" : ""}`;
}

/**
 * Bytes per second that `threads` threads reach over `bytes` bytes: "copy" (default) counts bytes read plus
 * bytes written by a copy, as STREAM does; "read" counts bytes read by a summing loop (what decode does).
 */
export function measureMemoryBandwidth(
  threads: number,
  bytes: number,
  kind: "copy" | "read" = "copy",
): Promise<number> {
  return nativeModule().measureMemoryBandwidth(threads, bytes, kind);
}

function checkOptions(options: OpenOptions, config: ModelConfig): void {
  const { layerStart, layerEnd } = options;
  if (!Number.isInteger(layerStart) || !Number.isInteger(layerEnd) || layerStart < 0 || layerEnd < layerStart)
    throw new Error(`openEngine: layer range [${layerStart}, ${layerEnd}) is not a valid range`);
  if (layerEnd > config.numLayers)
    throw new Error(
      `openEngine: layer range [${layerStart}, ${layerEnd}) exceeds the model's ${config.numLayers} layers`,
    );
  if (options.threads !== undefined && (!Number.isInteger(options.threads) || options.threads < 1))
    throw new Error(`openEngine: threads must be a positive integer (got ${options.threads})`);
  const backend = options.backend ?? "auto";
  if (backend !== "auto" && backend !== "cpu" && backend !== "mlx")
    throw new Error(`openEngine: backend must be "auto", "cpu" or "mlx" (got "${String(backend)}")`);
  if (backend === "mlx" && !availableBackends().includes("mlx"))
    throw new Error('openEngine: backend "mlx" requested but this studio_engine was built without MLX');
  const inputs = options.matmulInputs ?? "default";
  if (!isMatmulInputs(inputs))
    throw new Error(`openEngine: matmulInputs must be "default" or "int8" (got "${String(inputs)}")`);
  const kv = options.kvDtype ?? "f32";
  if (!isKvDtype(kv)) throw new Error(`openEngine: kvDtype must be "f32" or "f16" (got "${String(kv)}")`);
}

function checkSeq(method: string, name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff)
    throw new Error(`${method}: ${name} must be a uint32 sequence id (got ${value})`);
}

class NativeEngine implements StudioEngine {
  private closed = false;

  constructor(private readonly handle: NativeEngineHandle) {}

  async forward(batch: ForwardItem[]): Promise<ForwardOutput[]> {
    this.checkOpen();
    return this.handle.forward(batch);
  }

  async release(seq: number): Promise<void> {
    this.checkOpen();
    checkSeq("release", "seq", seq);
    return this.handle.release(seq);
  }

  async fork(seq: number, newSeq: number, prefixLength: number): Promise<void> {
    this.checkOpen();
    checkSeq("fork", "seq", seq);
    checkSeq("fork", "newSeq", newSeq);
    if (!Number.isInteger(prefixLength) || prefixLength < 0)
      throw new Error(`fork: prefixLength must be a non-negative integer (got ${prefixLength})`);
    return this.handle.fork(seq, newSeq, prefixLength);
  }

  async stashBlocks(seq: number, blocks: KvBlockSlice[]): Promise<void> {
    this.checkOpen();
    checkSeq("stashBlocks", "seq", seq);
    return this.handle.stashBlocks(seq, blocks);
  }

  async assemble(newSeq: number, blocks: KvBlockTake[]): Promise<void> {
    this.checkOpen();
    checkSeq("assemble", "newSeq", newSeq);
    return this.handle.assemble(newSeq, blocks);
  }

  async dropBlocks(ids: string[]): Promise<void> {
    this.checkOpen();
    return this.handle.dropBlocks(ids);
  }

  async exportBlock(id: string): Promise<Uint8Array[]> {
    this.checkOpen();
    return this.handle.exportBlock(id);
  }

  async importBlock(id: string, length: number, layers: Uint8Array[]): Promise<void> {
    this.checkOpen();
    if (!Number.isInteger(length) || length < 1)
      throw new Error(`importBlock: length must be a positive integer (got ${length})`);
    return this.handle.importBlock(id, length, layers);
  }

  stats(): NativeEngineStats {
    return this.handle.stats();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new Error("engine is closed");
  }
}

/** Opens one shard of the model in options.modelDir; resolves once every tensor is mapped, checked and touched. */
export async function openEngine(options: OpenOptions): Promise<StudioEngine> {
  const config = readModelConfig(options.modelDir);
  checkOptions(options, config);
  const handle = new (nativeModule().Engine)(
    options.modelDir,
    config,
    {
      layerStart: options.layerStart,
      layerEnd: options.layerEnd,
      embed: options.embed,
      head: options.head,
      threads: options.threads ?? 0,
      backend: options.backend ?? "auto",
      matmulInputs: options.matmulInputs ?? "default",
      kvDtype: options.kvDtype ?? "f32",
    },
    options.onProgress,
  );
  try {
    await handle.load();
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
  return new NativeEngine(handle);
}
