// KV cache of one sequence on the mlx backend: per layer, keys and values as bf16 arrays shaped
// [1, kv_heads, capacity, head_dim] (the layout fast::scaled_dot_product_attention reads without a copy).
// Capacity grows in steps of kStep positions; a layer's arrays are made on first use, when attention tells the
// head split (kv_cache() only knows the kv width). A layer may instead live in one slot of a KvSlab while the
// sequence decodes in a batch (mlx_kv_slab.h); then it reads through that slot and copies it out before anything
// else changes the layer.
#pragma once

#include <mlx/mlx.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "backend/backend.h"
#include "backend/mlx/mlx_kv_slab.h"

namespace studio::mlxb {

namespace mx = mlx::core;

class MlxKvCache final : public KvCache {
 public:
  static constexpr int64_t kStep = 256;

  MlxKvCache(int layers, int kv_width, mx::Dtype dtype, mx::Stream stream);
  ~MlxKvCache() override;
  MlxKvCache(const MlxKvCache&) = delete;
  MlxKvCache& operator=(const MlxKvCache&) = delete;

  int64_t length() const override { return length_; }
  void reserve(int64_t n) override;
  void commit(int64_t n) override;
  size_t bytes() const override;
  std::unique_ptr<KvCache> clone_prefix(int64_t n) const override;
  void copy_from(const KvCache& src, int64_t from, int64_t to, int64_t n, int kv_heads) override;
  void read_range(int layer, int64_t start, int64_t end, int kv_heads, uint8_t* out) const override;
  void write_range(int layer, int64_t start, int64_t end, int kv_heads, const uint8_t* in) override;
  void shrink_to_fit() override;

  /**
   * Writes k, v ([1, kv_heads, rows, head_dim]) at positions [position, position + rows) of `layer` and
   * returns the keys and values of positions [0, position + rows).
   */
  std::pair<mx::array, mx::array> append(int layer, const mx::array& k, const mx::array& v, int64_t position);

  /** Whether the layer lives in `slab`, and in which slot (-1: not there). */
  int slot_in(int layer, const KvSlab& slab) const;

  /**
   * Moves the layer into a free slot of `slab` (out of any slab it was in, or out of its own arrays, which it
   * lets go) and returns the slot. kv_heads and head_dim shape a layer that holds nothing yet.
   */
  int move_to_slab(int layer, const std::shared_ptr<KvSlab>& slab, int kv_heads, int head_dim);

 private:
  struct Layer {
    std::optional<mx::array> keys;
    std::optional<mx::array> values;
    int64_t capacity = 0;
    // Set while the layer's positions live in a slab's slot instead of keys and values.
    std::shared_ptr<KvSlab> slab;
    int slab_slot = -1;
  };
  void ensure_capacity(Layer& layer, int kv_heads, int head_dim);
  /** Positions the layer's own arrays hold: everything written or reserved, rounded up to kStep. */
  int64_t held_capacity() const;
  /** Copies a slab layer's slot into arrays of its own and unlinks it; the slot itself stays taken. */
  void copy_out_of_slab(Layer& layer) const;
  /** Copies the layer's slot out of its slab into arrays of its own and frees the slot (no-op outside a slab). */
  void leave_slab(Layer& layer);
  /** Positions [start, end) of a layer, wherever they live (views, for reading). */
  std::pair<mx::array, mx::array> read_arrays(const Layer& layer, int64_t start, int64_t end) const;

  int kv_width_;
  mx::Dtype dtype_;
  mx::Stream stream_;
  int64_t length_ = 0;
  int64_t reserved_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace studio::mlxb
