#include "backend/cpu/workspace.h"

#include <algorithm>

namespace studio::cpu {

void Arena::reset() {
  if (blocks_.size() > 1) {
    size_t total = 0;
    for (const Block& b : blocks_) total += b.size;
    blocks_.clear();
    blocks_.push_back(make_block(total));
  }
  current_ = 0;
  used_ = 0;
  round_ = 0;
}

Arena::Block Arena::make_block(size_t size) {
  Block b;
  b.storage = std::make_unique_for_overwrite<std::byte[]>(size + kAlign);
  const auto address = reinterpret_cast<uintptr_t>(b.storage.get());
  b.base = b.storage.get() + ((kAlign - address % kAlign) % kAlign);
  b.size = size;
  return b;
}

std::byte* Arena::take_bytes(size_t bytes) {
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  // Blocks made in this round after current_ (none, unless a larger round ran before a reset merged them).
  while (current_ < blocks_.size() && used_ + bytes > blocks_[current_].size) {
    ++current_;
    used_ = 0;
  }
  if (current_ == blocks_.size()) {
    // At least what this round has taken so far again: a growing workload needs few new blocks.
    blocks_.push_back(make_block(std::max(bytes, round_ + bytes)));
    used_ = 0;
  }
  std::byte* p = blocks_[current_].base + used_;
  used_ += bytes;
  round_ += bytes;
  return p;
}

BufferPool::Buffer BufferPool::acquire(size_t n) {
  {
    std::lock_guard lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->capacity >= n && (best == free_.end() || it->capacity < best->capacity)) best = it;
    if (best != free_.end()) {
      Buffer b = std::move(*best);
      free_.erase(best);
      return b;
    }
  }
  return {std::make_unique_for_overwrite<float[]>(std::max<size_t>(n, 1)), std::max<size_t>(n, 1)};
}

void BufferPool::release(Buffer buffer) {
  if (!buffer.data) return;
  std::lock_guard lock(mutex_);
  free_.push_back(std::move(buffer));
  if (free_.size() > kMaxFree) {
    auto smallest = std::min_element(free_.begin(), free_.end(),
                                     [](const Buffer& a, const Buffer& b) { return a.capacity < b.capacity; });
    free_.erase(smallest);
  }
}

}  // namespace studio::cpu
