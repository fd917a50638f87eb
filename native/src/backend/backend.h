// The compute interface the MiniMax-M2 forward pass (model/) is written against, once, for every backend.
//
// Ownership: weights, activations and KV caches are backend-owned handles (Matrix, Vector, Activations,
// KvCache). The model creates them through the backend, passes them back into operations and never looks
// inside, so a backend may keep them on a device (MLX) or in host memory (cpu). Host data crosses only at
// upload/download (activations in and out of a stage, logits) and in route() (expert choices are host-side
// because the model groups tokens by expert).
//
// Shapes: Activations are row-major [rows, cols]; one row per token of the batch, the rows of all sequences
// concatenated. Matrices compute y = x W^T (W is [out, in]); expert matrices are stacked [experts, out, in].
//
// Determinism contract (every backend): the result for one row depends only on that row's inputs (and, in
// attention, that sequence's cache), never on how many rows share the call, where the row sits in the batch,
// or how many threads run; repeating a call gives identical bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "io/tensor.h"

namespace studio {

/** A weight matrix (plain or quantized, single or stacked experts) held by the backend. */
class Matrix {
 public:
  virtual ~Matrix() = default;
  int64_t out = 0;
  int64_t in = 0;
  int64_t experts = 0;  // 0: a single matrix
};

/** A 1-D float weight (norm weight, routing bias) held by the backend. */
class Vector {
 public:
  virtual ~Vector() = default;
  int64_t size = 0;
};

/** A [rows, cols] block of f32 activations held by the backend. */
class Activations {
 public:
  virtual ~Activations() = default;
  int64_t rows = 0;
  int64_t cols = 0;
};

/** One sequence's keys and values for the layers of this shard; grows as positions are appended. */
class KvCache {
 public:
  virtual ~KvCache() = default;
  /** Positions committed so far. */
  virtual int64_t length() const = 0;
  /** Makes room for positions [0, n) (called before a forward writes them). */
  virtual void reserve(int64_t n) = 0;
  /** Marks positions [0, n) as valid once a forward has written every layer. */
  virtual void commit(int64_t n) = 0;
  /** Bytes held. */
  virtual size_t bytes() const = 0;
  /** A new cache holding the first n positions of this one. */
  virtual std::unique_ptr<KvCache> clone_prefix(int64_t n) const = 0;

  // Prefix-cache blocks (model/block_pool.h) and their exchange with the node's disk. kv_heads splits the cache's
  // kv width into heads of head_dim = kv width / kv_heads.

  /**
   * Copies positions [from, from + n) of every layer of `src` (a cache of the same backend and shape holding
   * them) to positions [to, to + n) of this one, reserving room; the caller commits.
   */
  virtual void copy_from(const KvCache& src, int64_t from, int64_t to, int64_t n, int kv_heads) = 0;
  /**
   * Positions [start, end) of `layer` as bytes in the exchange layout: position-major, each position its keys
   * then its values ([k | v][kv width]), elements of the cache's own type (f32 cpu, bf16 mlx).
   */
  virtual void read_range(int layer, int64_t start, int64_t end, int kv_heads, uint8_t* out) const = 0;
  /** Writes positions [start, end) of `layer` from the exchange layout (reserve(end) first; the caller commits). */
  virtual void write_range(int layer, int64_t start, int64_t end, int kv_heads, const uint8_t* in) = 0;
  /** Gives back room past length(): for a cache block, which never grows again. */
  virtual void shrink_to_fit() {}
};

/** Rows [row, row + rows) of the batch belong to a sequence whose first row sits at `position`. */
struct AttentionSegment {
  KvCache* cache = nullptr;
  int64_t row = 0;
  int64_t rows = 0;
  int64_t position = 0;
};

struct AttentionShape {
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  float scale = 0;
};

/** Half-split partial rotary embedding on the first rotary_dim dims of every head. */
struct RopeShape {
  int heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;
  float theta = 0;
};

/**
 * Per row, top_k experts in rank order and their normalised weights (row-major [rows, top_k]). A backend that
 * keeps the choice on its device (mlx: reading it back would stall the GPU once per layer) leaves experts and
 * weights empty and passes its own data to experts() through `device`.
 */
struct Routing {
  int top_k = 0;
  std::vector<int32_t> experts;
  std::vector<float> weights;
  std::shared_ptr<const void> device;
};

/**
 * One row's sampling as a backend that samples on its device applies it (Backend::sample): the same rules as
 * model/sampler.h without logit bias or a constraint mask (the model samples those rows on the host).
 */
struct DeviceDraw {
  float temperature = 0;  // <= 0: greedy
  float top_p = 1;        // 1: no cut
  int top_k = 0;          // 0 (or >= vocab): no limit
  int top_logprobs = 0;
  double uniform = 0;  // the host's seeded draw in [0, 1) (model/sampler.h counter_uniform)
};

/** A device-sampled token, its log-probability and the top_logprobs best (token, logprob), best first. */
struct DevicePick {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

/** Tokens a backend sampled on its device and has not read back yet (Backend::sample_lazily). */
class PendingPicks {
 public:
  virtual ~PendingPicks() = default;
  /** Waits for the device, then the picks, one per row. */
  virtual std::vector<DevicePick> read() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int threads() const = 0;
  /** The dtype activations cross stages in: "f32" (cpu) or "bf16" (mlx). Upload/download stay f32. */
  virtual std::string activation_dtype() const { return "f32"; }
  /** Bytes of one cached key or value element. */
  virtual size_t kv_element_bytes() const { return sizeof(float); }
  /** The cached keys' and values' element type: "f32", "f16" (cpu's KV f16 mode) or "bf16" (mlx). */
  virtual std::string kv_dtype() const { return "f32"; }

  // Weights. The source's memory (the shard mapping) outlives the returned handle.
  virtual std::unique_ptr<Matrix> matrix(const io::MatrixSource& source) = 0;
  virtual std::unique_ptr<Vector> vector(const io::HostTensor& source) = 0;
  /**
   * True when the handles point into the shard mapping (cpu), so loading faults the whole mapping in once.
   * False when the backend reads the weights into its own memory (mlx): the mapping is then never touched,
   * or the shard would be resident twice (docs/engine.md, "Loading").
   */
  virtual bool weights_in_mapping() const { return true; }
  /** Called once every weight handle exists: a backend may release load-time state here. */
  virtual void weights_loaded() {}
  /** Bytes the backend keeps wired (never paged out) for its buffers; 0 when it sets no limit. */
  virtual size_t wired_limit_bytes() const { return 0; }
  /**
   * True when the first forward pays one-off costs (MLX builds its kernels on first use): the shard then runs
   * one throwaway step at load, so the first request does not pay them.
   */
  virtual bool wants_warmup() const { return false; }
  /**
   * True when sample() picks tokens on the device, so only the picks cross to the host, not the [rows, vocab]
   * logits (mlx: docs/architecture.md, "Sampling on the device").
   */
  virtual bool samples_on_device() const { return false; }
  /**
   * Starts picking one token per row of logits [rows, vocab] on the device (draws: one entry per row) and
   * returns without waiting for it. Only where samples_on_device().
   */
  virtual std::unique_ptr<PendingPicks> sample_lazily(const Activations& logits, std::span<const DeviceDraw> draws) {
    (void)logits;
    (void)draws;
    throw std::logic_error("backend " + name() + " does not sample on its device");
  }
  /**
   * out row i = the embedding of pick i's token, read on the device: a decode step built before the picks
   * that feed it are read back (docs/architecture.md, "Sampling on the device"). Only where samples_on_device().
   */
  virtual void embed_picks(const Matrix& table, const PendingPicks& picks, Activations& out) {
    (void)table;
    (void)picks;
    (void)out;
    throw std::logic_error("backend " + name() + " does not sample on its device");
  }

  // Activations.
  virtual std::unique_ptr<Activations> activations(int64_t rows, int64_t cols) = 0;
  /** dst = rows*cols f32 values from host memory. */
  virtual void upload(const float* src, Activations& dst) = 0;
  virtual void download(const Activations& src, float* dst) = 0;
  /** dst row i = src row rows[i]. */
  virtual void gather_rows(const Activations& src, std::span<const int64_t> rows, Activations& dst) = 0;

  // Operations.
  /** out row i = row ids[i] of table (dequantized when quantized). */
  virtual void embed(const Matrix& table, std::span<const int32_t> ids, Activations& out) = 0;
  /** y = x W^T. */
  virtual void matmul(const Matrix& w, const Activations& x, Activations& y) = 0;
  /** y = w * (x * rsqrt(mean(x^2) + eps)), statistics in f32. x and y may be the same handle. */
  virtual void rms_norm(const Activations& x, const Vector& w, float eps, Activations& y) = 0;
  /** In place on x [rows, heads*head_dim]; positions[r] is row r's absolute position. */
  virtual void rope(Activations& x, const RopeShape& shape, std::span<const int32_t> positions) = 0;
  /** acc += x. */
  virtual void add(Activations& acc, const Activations& x) = 0;

  virtual std::unique_ptr<KvCache> kv_cache(int layers, int kv_width) = 0;
  /**
   * Writes k, v (each [rows, kv_heads*head_dim]) into each segment's cache at its positions for `layer`, then
   * out = causal softmax(q k^T * scale) v per head (query head h reads kv head h / (heads / kv_heads)).
   */
  virtual void attention(const Activations& q, const Activations& k, const Activations& v, int layer,
                         std::span<const AttentionSegment> segments, const AttentionShape& shape,
                         Activations& out) = 0;

  /**
   * How many attention computations this backend has launched: mlx, one fused kernel per sequence per layer, or
   * one per group of decode rows that share a kernel; cpu, one threaded pass per layer over every segment.
   */
  virtual uint64_t attention_launches() const = 0;

  /** s = sigmoid(x gate^T) in f32; top_k by s + bias; weights s / (sum + 1e-20). */
  virtual Routing route(const Matrix& gate, const Vector& bias, const Activations& x, int top_k) = 0;
  /**
   * out row r = sum over j (rank order) of weight[r][j] * down_e(silu(gate_e x_r) * up_e x_r), e = expert[r][j];
   * each expert runs only on the rows routed to it.
   */
  virtual void experts(const Matrix& gate, const Matrix& up, const Matrix& down, const Activations& x,
                       const Routing& routing, Activations& out) = 0;
};

/** How the built-in cpu backend runs (native/README.md, "Precision modes of the cpu backend"). */
struct CpuOptions {
  /** Worker threads, the caller included (0: all cores). */
  int threads = 0;
  /** The fast precision mode: 4-bit matmuls take their inputs as int8 per group where the build has that path. */
  bool int8_inputs = false;
  /** Keys and values cached as f16 (half the bytes per position) instead of f32. */
  bool f16_kv = false;
};

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options);

}  // namespace studio
