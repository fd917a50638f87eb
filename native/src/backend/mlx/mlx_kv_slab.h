// One layer's keys and values of several decoding sequences in one batch-shaped pair of arrays, each
// [slots, kv_heads, capacity, head_dim], slot i holding one member's positions from 0. A batched decode step
// writes every member's new position with one scatter and runs one attention over all slots, where each sequence
// alone would take its own writes and its own attention kernel (docs/architecture.md, "Batched decode
// attention").
//
// Members come and go one at a time: a sequence that joins is copied into a free slot, one that leaves (or dies)
// frees its slot, and nothing else moves, so a batch whose sequences change every step does not copy the others'
// keys each time. A member's cache (MlxKvCache) holds no arrays of its own for that layer while it sits in a
// slab; it reads through its slot, and anything else it does to the layer first copies its slot out.
#pragma once

#include <mlx/mlx.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace studio::mlxb {

namespace mx = mlx::core;

class MlxKvCache;

class KvSlab {
 public:
  KvSlab(int kv_heads, int head_dim, mx::Dtype dtype, mx::Stream stream);

  int slots() const { return static_cast<int>(members_.size()); }
  int members() const { return slots() - static_cast<int>(free_.size()); }
  int64_t capacity() const { return keys_ ? keys_->shape(2) : 0; }
  /** Bytes of keys and values over every slot, free ones too. */
  size_t bytes() const;

  /** At least `n` free slots, so that n sequences joining at once grow the slab (a copy of it) once at most. */
  void reserve_free(int n);

  /**
   * Copies a member's first positions (k, v: [1, kv_heads, n, head_dim]) into a free slot, growing the slots or
   * the capacity where needed, and returns the slot.
   */
  int add(const MlxKvCache* member, const mx::array& k, const mx::array& v);

  /** The slot's member has left or died: the slot is free for the next that joins. */
  void drop(int slot);

  /** Positions [start, end) of one slot, [1, kv_heads, end - start, head_dim]: views into the slab, for reading. */
  std::pair<mx::array, mx::array> view(int slot, int64_t start, int64_t end) const;

  /** Positions [0, n) of one slot as arrays of their own, so that they do not keep the slab's buffers alive. */
  std::pair<mx::array, mx::array> copy_out(int slot, int64_t n) const;

  /** Room for `capacity` positions per slot. */
  void grow(int64_t capacity);

  /**
   * Writes k, v ([n, kv_heads, 1, head_dim]) at (slots[i], positions[i]) with one scatter each, and returns the
   * keys and values of positions [0, length) of every slot.
   */
  std::pair<mx::array, mx::array> write(const mx::array& k, const mx::array& v, const mx::array& slots,
                                        const mx::array& positions, int64_t length);

  /** The arrays to schedule when a step commits. */
  std::vector<mx::array> arrays() const;

 private:
  void add_slots(int n);

  int kv_heads_;
  int head_dim_;
  mx::Dtype dtype_;
  mx::Stream stream_;
  std::vector<const MlxKvCache*> members_;
  std::vector<int> free_;
  std::optional<mx::array> keys_;
  std::optional<mx::array> values_;
};

}  // namespace studio::mlxb
