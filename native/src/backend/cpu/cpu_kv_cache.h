// KV cache of one sequence on the cpu backend: f32 keys and values in blocks of kBlock positions, so growth
// never moves what is already stored. Block layout: [layer][k|v][kv head][kBlock * head_dim]: within a block,
// one kv head's values are kBlock rows of head_dim floats ([position][dim]) and its keys are stored transposed
// ([dim][position]), so attention scores a whole block of positions with vector loads along the positions
// (docs: native/README.md, "Numerics of the cpu backend").
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "backend/backend.h"

namespace studio::cpu {

class CpuKvCache final : public KvCache {
 public:
  static constexpr int64_t kBlock = 64;

  CpuKvCache(int layers, int kv_width) : layers_(layers), kv_width_(kv_width) {}

  int64_t length() const override { return length_; }
  void reserve(int64_t n) override {
    while (static_cast<int64_t>(blocks_.size()) * kBlock < n)
      blocks_.push_back(make_block(block_floats()));
  }
  void commit(int64_t n) override { length_ = n; }
  size_t bytes() const override { return blocks_.size() * block_floats() * sizeof(float); }
  std::unique_ptr<KvCache> clone_prefix(int64_t n) const override {
    auto copy = std::make_unique<CpuKvCache>(layers_, kv_width_);
    copy->reserve(n);
    const int64_t used_blocks = (n + kBlock - 1) / kBlock;
    for (int64_t b = 0; b < used_blocks; ++b)
      std::memcpy(copy->blocks_[b].get(), blocks_[b].get(), block_floats() * sizeof(float));
    copy->length_ = n;
    return copy;
  }

  void copy_from(const KvCache& other, int64_t from, int64_t to, int64_t n, int kv_heads) override {
    const auto& src = static_cast<const CpuKvCache&>(other);
    const int head_dim = kv_width_ / kv_heads;
    reserve(to + n);
    // A kv head's positions are contiguous within a block: copy runs that stay inside one block on both sides.
    for (int64_t done = 0; done < n;) {
      const int64_t run = std::min({n - done, kBlock - (from + done) % kBlock, kBlock - (to + done) % kBlock});
      for (int layer = 0; layer < layers_; ++layer)
        for (int head = 0; head < kv_heads; ++head) {
          for (int d = 0; d < head_dim; ++d)
            std::memcpy(key_at(layer, to + done, head, head_dim) + d * kBlock,
                        src.key_at(layer, from + done, head, head_dim) + d * kBlock, run * sizeof(float));
          std::memcpy(value(layer, to + done, head, head_dim), src.value_at(layer, from + done, head, head_dim),
                      run * head_dim * sizeof(float));
        }
      done += run;
    }
  }
  void read_range(int layer, int64_t start, int64_t end, int kv_heads, uint8_t* out) const override {
    const int head_dim = kv_width_ / kv_heads;
    const size_t bytes = head_dim * sizeof(float);
    for (int64_t pos = start; pos < end; ++pos) {
      for (int head = 0; head < kv_heads; ++head, out += bytes) {
        const float* k = key_at(layer, pos, head, head_dim);
        for (int d = 0; d < head_dim; ++d) std::memcpy(out + d * sizeof(float), k + d * kBlock, sizeof(float));
      }
      for (int head = 0; head < kv_heads; ++head, out += bytes)
        std::memcpy(out, value_at(layer, pos, head, head_dim), bytes);
    }
  }
  void write_range(int layer, int64_t start, int64_t end, int kv_heads, const uint8_t* in) override {
    const int head_dim = kv_width_ / kv_heads;
    const size_t bytes = head_dim * sizeof(float);
    for (int64_t pos = start; pos < end; ++pos) {
      for (int head = 0; head < kv_heads; ++head, in += bytes) {
        float* k = key_at(layer, pos, head, head_dim);
        for (int d = 0; d < head_dim; ++d) std::memcpy(k + d * kBlock, in + d * sizeof(float), sizeof(float));
      }
      for (int head = 0; head < kv_heads; ++head, in += bytes)
        std::memcpy(value(layer, pos, head, head_dim), in, bytes);
    }
  }

  /** Stores kv head `head`'s key and value (head_dim floats each) at `pos`. */
  void store(int layer, int64_t pos, int head, int head_dim, const float* k, const float* v) {
    float* kt = key_at(layer, pos, head, head_dim);
    for (int d = 0; d < head_dim; ++d) kt[d * kBlock] = k[d];
    std::memcpy(value(layer, pos, head, head_dim), v, head_dim * sizeof(float));
  }
  /** Keys of kv head `head` in the block holding `pos`, transposed: head_dim rows of kBlock floats. */
  const float* key_block(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 0, pos - pos % kBlock, head, head_dim);
  }
  /** The value of kv head `head` at `pos` (head_dim floats; a block's positions are consecutive rows). */
  float* value(int layer, int64_t pos, int head, int head_dim) { return slot(layer, 1, pos, head, head_dim); }
  const float* value_at(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 1, pos, head, head_dim);
  }
  int kv_width() const { return kv_width_; }

 private:
  /** Element 0 of the key at `pos` (its element d lies d * kBlock floats further). */
  float* key_at(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 0, pos - pos % kBlock, head, head_dim) + pos % kBlock;
  }
  size_t block_floats() const { return static_cast<size_t>(layers_) * 2 * kBlock * kv_width_; }
  /** Position pos's row in a [position][dim] layout (values; for keys, only block starts are used). */
  float* slot(int layer, int which, int64_t pos, int head, int head_dim) const {
    float* block = blocks_[pos / kBlock].get();
    const size_t heads = static_cast<size_t>(kv_width_ / head_dim);
    return block + (((static_cast<size_t>(layer) * 2 + which) * heads + head) * kBlock + pos % kBlock) * head_dim;
  }

  /**
   * Blocks start on a cache line. A plain new[] of a block this large comes from mmap at 16 bytes past a page,
   * so every other 32-byte load of the scores and the weighted values straddled two cache lines.
   */
  static constexpr std::align_val_t kAlign{64};
  struct AlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, kAlign); }
  };
  using Block = std::unique_ptr<float[], AlignedDelete>;
  static Block make_block(size_t floats) {
    Block b(static_cast<float*>(::operator new[](floats * sizeof(float), kAlign)));
    std::fill_n(b.get(), floats, 0.0f);
    return b;
  }

  int layers_;
  int kv_width_;
  int64_t length_ = 0;
  std::vector<Block> blocks_;
};

}  // namespace studio::cpu
