// KV cache of one sequence on the cpu backend: keys and values in blocks of kBlock positions, so growth never
// moves what is already stored. Block layout: [layer][k|v][kv head][kBlock * head_dim]: within a block, one kv
// head's values are kBlock rows of head_dim elements ([position][dim]) and its keys are stored transposed
// ([dim][position]), so attention scores a whole block of positions with vector loads along the positions
// (docs: native/README.md, "Numerics of the cpu backend"). Elements are f32, or f16 in the KV f16 mode (half
// the bytes per position; attention widens a block to f32 once per work item: attention.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/half.h"

namespace studio::cpu {

/** What the cpu backend's KV cache stores per element. */
enum class KvElement { F32, F16 };

constexpr size_t bytes_of(KvElement e) { return e == KvElement::F16 ? sizeof(uint16_t) : sizeof(float); }

class CpuKvCache final : public KvCache {
 public:
  static constexpr int64_t kBlock = 64;

  CpuKvCache(int layers, int kv_width, KvElement element)
      : layers_(layers),
        kv_width_(kv_width),
        element_(element),
        element_bytes_(bytes_of(element)) {}

  KvElement element() const { return element_; }
  size_t element_bytes() const { return element_bytes_; }

  int64_t length() const override { return length_; }
  void reserve(int64_t n) override {
    while (static_cast<int64_t>(blocks_.size()) * kBlock < n)
      blocks_.push_back(make_block(block_bytes()));
  }
  void commit(int64_t n) override { length_ = n; }
  size_t bytes() const override { return blocks_.size() * block_bytes(); }
  std::unique_ptr<KvCache> clone_prefix(int64_t n) const override {
    auto copy = std::make_unique<CpuKvCache>(layers_, kv_width_, element_);
    copy->reserve(n);
    const int64_t used_blocks = (n + kBlock - 1) / kBlock;
    for (int64_t b = 0; b < used_blocks; ++b)
      std::memcpy(copy->blocks_[b].get(), blocks_[b].get(), block_bytes());
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
            std::memcpy(key_at(layer, to + done, head, head_dim) + d * key_stride(),
                        src.key_at(layer, from + done, head, head_dim) + d * key_stride(), run * element_bytes_);
          std::memcpy(value_bytes(layer, to + done, head, head_dim),
                      src.value_bytes(layer, from + done, head, head_dim), run * head_dim * element_bytes_);
        }
      done += run;
    }
  }
  void read_range(int layer, int64_t start, int64_t end, int kv_heads, uint8_t* out) const override {
    const int head_dim = kv_width_ / kv_heads;
    const size_t bytes = head_dim * element_bytes_;
    for (int64_t pos = start; pos < end; ++pos) {
      for (int head = 0; head < kv_heads; ++head, out += bytes) {
        const uint8_t* k = key_at(layer, pos, head, head_dim);
        for (int d = 0; d < head_dim; ++d)
          std::memcpy(out + d * element_bytes_, k + d * key_stride(), element_bytes_);
      }
      for (int head = 0; head < kv_heads; ++head, out += bytes)
        std::memcpy(out, value_bytes(layer, pos, head, head_dim), bytes);
    }
  }
  void write_range(int layer, int64_t start, int64_t end, int kv_heads, const uint8_t* in) override {
    const int head_dim = kv_width_ / kv_heads;
    const size_t bytes = head_dim * element_bytes_;
    for (int64_t pos = start; pos < end; ++pos) {
      for (int head = 0; head < kv_heads; ++head, in += bytes) {
        uint8_t* k = key_at(layer, pos, head, head_dim);
        for (int d = 0; d < head_dim; ++d)
          std::memcpy(k + d * key_stride(), in + d * element_bytes_, element_bytes_);
      }
      for (int head = 0; head < kv_heads; ++head, in += bytes)
        std::memcpy(value_bytes(layer, pos, head, head_dim), in, bytes);
    }
  }

  /** Stores kv head `head`'s key and value (head_dim floats each) at `pos`, rounded to f16 in that mode. */
  void store(int layer, int64_t pos, int head, int head_dim, const float* k, const float* v) {
    uint8_t* kt = key_at(layer, pos, head, head_dim);
    uint8_t* row = value_bytes(layer, pos, head, head_dim);
    if (element_ == KvElement::F32) {
      for (int d = 0; d < head_dim; ++d) reinterpret_cast<float*>(kt)[d * kBlock] = k[d];
      std::memcpy(row, v, head_dim * sizeof(float));
      return;
    }
    for (int d = 0; d < head_dim; ++d) reinterpret_cast<uint16_t*>(kt)[d * kBlock] = half::from_float(k[d]);
    half::store(v, reinterpret_cast<uint16_t*>(row), head_dim);
  }
  /**
   * Keys of kv head `head` in the block holding `pos`, transposed: head_dim rows of kBlock elements (float or
   * uint16_t f16 bits, as element() says).
   */
  const void* key_block(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 0, pos - pos % kBlock, head, head_dim);
  }
  /** The value of kv head `head` at `pos` (head_dim elements; a block's positions are consecutive rows). */
  const void* value_at(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 1, pos, head, head_dim);
  }
  int kv_width() const { return kv_width_; }

 private:
  uint8_t* value_bytes(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 1, pos, head, head_dim);
  }
  /** Element 0 of the key at `pos` (its element d lies d * key_stride() bytes further). */
  uint8_t* key_at(int layer, int64_t pos, int head, int head_dim) const {
    return slot(layer, 0, pos - pos % kBlock, head, head_dim) + (pos % kBlock) * element_bytes_;
  }
  size_t key_stride() const { return kBlock * element_bytes_; }
  size_t block_bytes() const { return static_cast<size_t>(layers_) * 2 * kBlock * kv_width_ * element_bytes_; }
  /** Position pos's row in a [position][dim] layout (values; for keys, only block starts are used). */
  uint8_t* slot(int layer, int which, int64_t pos, int head, int head_dim) const {
    uint8_t* block = blocks_[pos / kBlock].get();
    const size_t heads = static_cast<size_t>(kv_width_ / head_dim);
    const size_t row = ((static_cast<size_t>(layer) * 2 + which) * heads + head) * kBlock + pos % kBlock;
    return block + row * head_dim * element_bytes_;
  }

  /**
   * Blocks start on a cache line. A plain new[] of a block this large comes from mmap at 16 bytes past a page,
   * so every other 32-byte load of the scores and the weighted values straddled two cache lines.
   */
  static constexpr std::align_val_t kAlign{64};
  struct AlignedDelete {
    void operator()(uint8_t* p) const { ::operator delete[](p, kAlign); }
  };
  using Block = std::unique_ptr<uint8_t[], AlignedDelete>;
  static Block make_block(size_t bytes) {
    Block b(static_cast<uint8_t*>(::operator new[](bytes, kAlign)));
    std::fill_n(b.get(), bytes, uint8_t{0});
    return b;
  }

  int layers_;
  int kv_width_;
  KvElement element_;
  size_t element_bytes_;
  int64_t length_ = 0;
  std::vector<Block> blocks_;
};

}  // namespace studio::cpu
