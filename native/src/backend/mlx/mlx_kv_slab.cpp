#include "backend/mlx/mlx_kv_slab.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace studio::mlxb {

namespace {

// Capacity grows in the per-sequence cache's step (MlxKvCache::kStep); slots by an eighth, so that growing (a
// copy of the whole slab) is rare and free slots cost little memory (the backend also replaces a slab whose free
// slots pass an eighth).
constexpr int64_t kCapacityStep = 256;

int64_t round_up(int64_t n, int64_t step) { return (n + step - 1) / step * step; }

}  // namespace

KvSlab::KvSlab(int kv_heads, int head_dim, mx::Dtype dtype, mx::Stream stream)
    : kv_heads_(kv_heads), head_dim_(head_dim), dtype_(dtype), stream_(stream) {}

void KvSlab::add_slots(int n) {
  const int old = slots();
  members_.resize(old + n, nullptr);
  for (int s = old + n - 1; s >= old; --s) free_.push_back(s);  // lowest slot popped first
  if (capacity() == 0) return;
  const mx::Shape more{n, kv_heads_, static_cast<int>(capacity()), head_dim_};
  auto zeros = mx::zeros(more, dtype_, stream_);
  keys_ = mx::concatenate({*keys_, zeros}, 0, stream_);
  values_ = mx::concatenate({*values_, zeros}, 0, stream_);
}

void KvSlab::grow(int64_t capacity) {
  capacity = round_up(capacity, kCapacityStep);
  if (capacity <= this->capacity() || slots() == 0) return;
  const mx::Shape more{slots(), kv_heads_, static_cast<int>(capacity - this->capacity()), head_dim_};
  auto zeros = mx::zeros(more, dtype_, stream_);
  if (keys_) {
    keys_ = mx::concatenate({*keys_, zeros}, 2, stream_);
    values_ = mx::concatenate({*values_, zeros}, 2, stream_);
  } else {
    keys_ = zeros;
    values_ = zeros;
  }
}

int KvSlab::add(const MlxKvCache* member, const mx::array& k, const mx::array& v) {
  if (k.ndim() != 4 || k.shape(0) != 1 || k.shape(1) != kv_heads_ || k.shape(3) != head_dim_ || v.shape() != k.shape())
    throw std::logic_error("mlx kv slab: a member's keys and values must be [1, " + std::to_string(kv_heads_) +
                           ", n, " + std::to_string(head_dim_) + "]");
  reserve_free(1);
  const int slot = free_.back();
  free_.pop_back();
  members_[slot] = member;
  const int64_t n = k.shape(2);
  grow(std::max<int64_t>(n, 1));
  if (n == 0) return slot;
  // The slot's positions past n keep whatever an earlier member left there: the mask hides them.
  const mx::Shape start{slot, 0, 0, 0};
  const mx::Shape stop{slot + 1, kv_heads_, static_cast<int>(n), head_dim_};
  keys_ = mx::slice_update(*keys_, k, start, stop, stream_);
  values_ = mx::slice_update(*values_, v, start, stop, stream_);
  return slot;
}

void KvSlab::reserve_free(int n) {
  const int missing = n - static_cast<int>(free_.size());
  if (missing > 0) add_slots(std::max(missing, slots() / 8));
}

size_t KvSlab::bytes() const {
  return static_cast<size_t>(slots()) * capacity() * 2 * kv_heads_ * head_dim_ * mx::size_of(dtype_);
}

void KvSlab::drop(int slot) {
  if (members_.at(slot) == nullptr) return;
  members_[slot] = nullptr;
  free_.push_back(slot);
}

std::pair<mx::array, mx::array> KvSlab::view(int slot, int64_t start, int64_t end) const {
  const mx::Shape a{slot, 0, static_cast<int>(start), 0};
  const mx::Shape b{slot + 1, kv_heads_, static_cast<int>(end), head_dim_};
  return {mx::slice(*keys_, a, b, stream_), mx::slice(*values_, a, b, stream_)};
}

std::pair<mx::array, mx::array> KvSlab::copy_out(int slot, int64_t n) const {
  auto [k, v] = view(slot, 0, n);
  return {mx::contiguous(k, false, stream_), mx::contiguous(v, false, stream_)};
}

std::pair<mx::array, mx::array> KvSlab::write(const mx::array& k, const mx::array& v, const mx::array& slots,
                                              const mx::array& positions, int64_t length) {
  if (length > capacity()) throw std::logic_error("mlx kv slab: write past the slab's capacity");
  const int n = k.shape(0);
  // One update per member, at (slot, position): the index arrays' shape [n] then the slice [1, heads, 1, dim].
  keys_ = mx::scatter(*keys_, {slots, positions}, mx::reshape(k, {n, 1, kv_heads_, 1, head_dim_}, stream_), {0, 2},
                      stream_);
  values_ = mx::scatter(*values_, {slots, positions}, mx::reshape(v, {n, 1, kv_heads_, 1, head_dim_}, stream_),
                        {0, 2}, stream_);
  const mx::Shape stop{this->slots(), kv_heads_, static_cast<int>(length), head_dim_};
  return {mx::slice(*keys_, {0, 0, 0, 0}, stop, stream_), mx::slice(*values_, {0, 0, 0, 0}, stop, stream_)};
}

std::vector<mx::array> KvSlab::arrays() const {
  if (!keys_) return {};
  return {*keys_, *values_};
}

}  // namespace studio::mlxb
