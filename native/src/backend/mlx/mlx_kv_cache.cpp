#include "backend/mlx/mlx_kv_cache.h"

#include <stdexcept>
#include <string>

namespace studio::mlxb {

namespace {

int64_t round_up(int64_t n, int64_t step) { return (n + step - 1) / step * step; }

}  // namespace

MlxKvCache::MlxKvCache(int layers, int kv_width, mx::Dtype dtype, mx::Stream stream)
    : kv_width_(kv_width), dtype_(dtype), stream_(stream), layers_(layers) {}

void MlxKvCache::reserve(int64_t n) { reserved_ = std::max(reserved_, n); }

void MlxKvCache::commit(int64_t n) {
  length_ = n;
  // Materialise the updated caches now so each layer's array stops referring to the batch's graph.
  std::vector<mx::array> live;
  for (const Layer& layer : layers_) {
    if (layer.keys) live.push_back(*layer.keys);
    if (layer.values) live.push_back(*layer.values);
  }
  mx::eval(live);
}

size_t MlxKvCache::bytes() const {
  size_t total = 0;
  for (const Layer& layer : layers_)
    total += static_cast<size_t>(layer.capacity) * 2 * kv_width_ * mx::size_of(dtype_);
  return total;
}

std::unique_ptr<KvCache> MlxKvCache::clone_prefix(int64_t n) const {
  // MLX arrays are immutable values: the copy shares the buffers, and the first write to either cache copies
  // (slice_update cannot donate a shared buffer), so the two never see each other's later positions.
  auto copy = std::make_unique<MlxKvCache>(static_cast<int>(layers_.size()), kv_width_, dtype_, stream_);
  copy->layers_ = layers_;
  copy->length_ = n;
  copy->reserved_ = n;
  return copy;
}

void MlxKvCache::ensure_capacity(Layer& layer, int kv_heads, int head_dim) {
  if (layer.capacity >= reserved_ && layer.keys) return;
  const int64_t capacity = round_up(std::max<int64_t>(reserved_, 1), kStep);
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

}  // namespace studio::mlxb
