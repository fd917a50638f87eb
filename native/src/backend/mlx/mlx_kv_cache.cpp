#include "backend/mlx/mlx_kv_cache.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace studio::mlxb {

namespace {

int64_t round_up(int64_t n, int64_t step) { return (n + step - 1) / step * step; }

/** n elements of `dtype` from raw bytes, copied into a new array of `shape`. */
mx::array array_from_bytes(const uint8_t* in, const mx::Shape& shape, mx::Dtype dtype) {
  size_t n = 1;
  for (int d : shape) n *= static_cast<size_t>(d);
  if (dtype == mx::bfloat16) {
    std::vector<mx::bfloat16_t> v(n);
    std::memcpy(v.data(), in, n * sizeof(mx::bfloat16_t));
    return mx::array(v.begin(), shape, dtype);
  }
  if (dtype == mx::float16) {
    std::vector<mx::float16_t> v(n);
    std::memcpy(v.data(), in, n * sizeof(mx::float16_t));
    return mx::array(v.begin(), shape, dtype);
  }
  std::vector<float> v(n);
  std::memcpy(v.data(), in, n * sizeof(float));
  return mx::array(v.begin(), shape, mx::float32);
}

}  // namespace

MlxKvCache::MlxKvCache(int layers, int kv_width, mx::Dtype dtype, mx::Stream stream)
    : kv_width_(kv_width), dtype_(dtype), stream_(stream), layers_(layers) {}

MlxKvCache::~MlxKvCache() {
  for (Layer& layer : layers_)
    if (layer.slab) layer.slab->drop(layer.slab_slot);
}

void MlxKvCache::reserve(int64_t n) { reserved_ = std::max(reserved_, n); }

void MlxKvCache::commit(int64_t n) {
  length_ = n;
  // Schedule the updated caches now so each layer's array stops referring to the batch's graph (MLX detaches
  // an array once it is scheduled). Not waited for: the host goes on building the head, the sampling and
  // perhaps the next step while the device computes (docs/architecture.md, "Sampling on the device").
  std::vector<mx::array> live;
  for (const Layer& layer : layers_) {
    if (layer.keys) live.push_back(*layer.keys);
    if (layer.values) live.push_back(*layer.values);
    if (layer.slab)
      for (const mx::array& a : layer.slab->arrays()) live.push_back(a);
  }
  mx::async_eval(live);
}

size_t MlxKvCache::bytes() const {
  size_t total = 0;
  for (const Layer& layer : layers_) {
    if (layer.slab) {
      // Its share of the slab: the padding past its own positions and the free slots count too.
      total += layer.slab->bytes() / static_cast<size_t>(layer.slab->members());
      continue;
    }
    total += static_cast<size_t>(layer.capacity) * 2 * kv_width_ * mx::size_of(dtype_);
  }
  return total;
}

std::unique_ptr<KvCache> MlxKvCache::clone_prefix(int64_t n) const {
  // MLX arrays are immutable values: the copy shares the buffers, and the first write to either cache copies
  // (slice_update cannot donate a shared buffer), so the two never see each other's later positions.
  auto copy = std::make_unique<MlxKvCache>(static_cast<int>(layers_.size()), kv_width_, dtype_, stream_);
  copy->layers_ = layers_;
  for (Layer& layer : copy->layers_) {
    if (!layer.slab) continue;
    // The copy must not point into the slab: it would share its buffers and hold back every in-place write.
    copy_out_of_slab(layer);
  }
  copy->length_ = n;
  copy->reserved_ = n;
  return copy;
}

int64_t MlxKvCache::held_capacity() const { return round_up(std::max<int64_t>(reserved_, 1), kStep); }

void MlxKvCache::copy_out_of_slab(Layer& layer) const {
  // Everything written lies below reserved_ (append raises it), and the slab holds all of it.
  const int64_t held = std::min(layer.slab->capacity(), held_capacity());
  auto [k, v] = layer.slab->copy_out(layer.slab_slot, held);
  layer.keys = std::move(k);
  layer.values = std::move(v);
  layer.capacity = held;
  layer.slab.reset();
  layer.slab_slot = -1;
}

void MlxKvCache::leave_slab(Layer& layer) {
  if (!layer.slab) return;
  const std::shared_ptr<KvSlab> slab = layer.slab;
  const int slot = layer.slab_slot;
  copy_out_of_slab(layer);
  slab->drop(slot);
}

std::pair<mx::array, mx::array> MlxKvCache::read_arrays(const Layer& layer, int64_t start, int64_t end) const {
  if (layer.slab) return layer.slab->view(layer.slab_slot, start, end);
  if (!layer.keys) throw std::logic_error("mlx kv cache: a layer that holds nothing cannot be read");
  const int heads = layer.keys->shape(1);
  const int dim = layer.keys->shape(3);
  const mx::Shape a{0, 0, static_cast<int>(start), 0};
  const mx::Shape b{1, heads, static_cast<int>(end), dim};
  return {mx::slice(*layer.keys, a, b, stream_), mx::slice(*layer.values, a, b, stream_)};
}

int MlxKvCache::slot_in(int layer_index, const KvSlab& slab) const {
  const Layer& layer = layers_.at(layer_index);
  return layer.slab.get() == &slab ? layer.slab_slot : -1;
}

int MlxKvCache::move_to_slab(int layer_index, const std::shared_ptr<KvSlab>& slab, int kv_heads, int head_dim) {
  Layer& layer = layers_.at(layer_index);
  // Everything written lies below reserved_ (append raises it).
  int64_t held = 0;
  if (layer.slab) held = layer.slab->capacity();
  else if (layer.keys) held = layer.keys->shape(2);
  const int64_t n = std::min(held, reserved_);
  auto empty = mx::zeros({1, kv_heads, 0, head_dim}, dtype_, stream_);
  auto [k, v] = n > 0 ? read_arrays(layer, 0, n) : std::pair{empty, empty};
  const int slot = slab->add(this, k, v);
  if (layer.slab) layer.slab->drop(layer.slab_slot);
  layer.keys.reset();
  layer.values.reset();
  layer.capacity = 0;
  layer.slab = slab;
  layer.slab_slot = slot;
  return slot;
}

void MlxKvCache::ensure_capacity(Layer& layer, int kv_heads, int head_dim) {
  if (layer.capacity >= reserved_ && layer.keys) return;
  const int64_t capacity = held_capacity();
  const mx::Shape grow{1, kv_heads, static_cast<int>(capacity - layer.capacity), head_dim};
  auto zeros = mx::zeros(grow, dtype_, stream_);
  if (layer.keys) {
    layer.keys = mx::concatenate({*layer.keys, zeros}, 2, stream_);
    layer.values = mx::concatenate({*layer.values, zeros}, 2, stream_);
  } else {
    layer.keys = zeros;
    layer.values = zeros;
  }
  layer.capacity = capacity;
}

std::pair<mx::array, mx::array> MlxKvCache::append(int layer_index, const mx::array& k, const mx::array& v,
                                                   int64_t position) {
  if (layer_index < 0 || layer_index >= static_cast<int>(layers_.size()))
    throw std::out_of_range("mlx kv cache: layer " + std::to_string(layer_index) + " outside this shard's " +
                            std::to_string(layers_.size()) + " layers");
  const int kv_heads = k.shape(1);
  const int head_dim = k.shape(3);
  const int64_t end = position + k.shape(2);
  if (end > reserved_) reserved_ = end;
  Layer& layer = layers_[layer_index];
  leave_slab(layer);
  ensure_capacity(layer, kv_heads, head_dim);
  const int p0 = static_cast<int>(position);
  const int p1 = static_cast<int>(end);
  const mx::Shape start{0, 0, p0, 0};
  const mx::Shape stop{1, kv_heads, p1, head_dim};
  layer.keys = mx::slice_update(*layer.keys, k, start, stop, stream_);
  layer.values = mx::slice_update(*layer.values, v, start, stop, stream_);
  return {mx::slice(*layer.keys, {0, 0, 0, 0}, {1, kv_heads, p1, head_dim}, stream_),
          mx::slice(*layer.values, {0, 0, 0, 0}, {1, kv_heads, p1, head_dim}, stream_)};
}

void MlxKvCache::copy_from(const KvCache& other, int64_t from, int64_t to, int64_t n, int kv_heads) {
  const auto& src = static_cast<const MlxKvCache&>(other);
  if (src.layers_.size() != layers_.size())
    throw std::logic_error("mlx kv cache: copy between caches of different layer counts");
  reserve(to + n);
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!src.layers_[l].keys && !src.layers_[l].slab)
      throw std::logic_error("mlx kv cache: copy from a layer that holds nothing");
    auto [k, v] = src.read_arrays(src.layers_[l], from, from + n);
    append(static_cast<int>(l), k, v, to);
  }
}

void MlxKvCache::read_range(int layer, int64_t start, int64_t end, int kv_heads, uint8_t* out) const {
  const Layer& l = layers_.at(layer);
  if (!l.keys && !l.slab)
    throw std::logic_error("mlx kv cache: layer " + std::to_string(layer) + " holds nothing to read");
  auto [k, v] = read_arrays(l, start, end);
  // [2, heads, n, dim] -> [n, 2, heads, dim]: each position's keys, then its values.
  auto kv = mx::concatenate({k, v}, 0, stream_);
  auto rows = mx::contiguous(mx::transpose(kv, {2, 0, 1, 3}, stream_), false, stream_);
  mx::eval(rows);
  std::memcpy(out, rows.data<uint8_t>(), rows.nbytes());
}

void MlxKvCache::write_range(int layer, int64_t start, int64_t end, int kv_heads, const uint8_t* in) {
  const int n = static_cast<int>(end - start);
  const int dim = kv_width_ / kv_heads;
  // [n, 2, heads, dim] -> [2, heads, n, dim], then keys and values as [1, heads, n, dim] each.
  auto kv = mx::transpose(array_from_bytes(in, {n, 2, kv_heads, dim}, dtype_), {1, 2, 0, 3}, stream_);
  auto k = mx::slice(kv, {0, 0, 0, 0}, {1, kv_heads, n, dim}, stream_);
  auto v = mx::slice(kv, {1, 0, 0, 0}, {2, kv_heads, n, dim}, stream_);
  append(layer, k, v, start);
}

void MlxKvCache::shrink_to_fit() {
  std::vector<mx::array> live;
  for (Layer& layer : layers_) {
    leave_slab(layer);
    if (!layer.keys || layer.capacity <= length_) continue;
    const int heads = layer.keys->shape(1);
    const int dim = layer.keys->shape(3);
    const mx::Shape stop{1, heads, static_cast<int>(length_), dim};
    // A copy, not a view: the view would keep the whole capacity's buffer alive.
    layer.keys = mx::contiguous(mx::slice(*layer.keys, {0, 0, 0, 0}, stop, stream_), false, stream_);
    layer.values = mx::contiguous(mx::slice(*layer.values, {0, 0, 0, 0}, stop, stream_), false, stream_);
    layer.capacity = length_;
    live.push_back(*layer.keys);
    live.push_back(*layer.values);
  }
  reserved_ = length_;
  mx::eval(live);
}

}  // namespace studio::mlxb
