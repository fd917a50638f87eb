#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

/** Positions whose values are weighted together (16 KiB of one kv head's values at head_dim 128: L1). */
constexpr int64_t kPositionBlock = 32;

/**
 * The query heads of one row that share a kv head, taken together so each key and value of the cache is read
 * once for all of them (a cache row per position per kv head, instead of once per query head: at long contexts
 * the cache, not the weights, is what a decoded token reads most). Per head the arithmetic and its order are
 * those of one head alone: scores p = dot(q_h, k_p) * scale in order, then exp(s - max), their sum in order,
 * and acc_h[d] += w_p * v_p[d] in order of p.
 */
class HeadGroup {
 public:
  HeadGroup(const AttentionShape& shape, int heads_in_group) : shape_(shape), heads_(heads_in_group) {}

  /** Heads [first, first + heads) of row `q_row`; their kv head is kv; positions 0..last of `cache`. */
  void run(const float* q_row, int first, int kv, CpuKvCache& cache, int layer, int64_t last, float* out_row) {
    const int dim = shape_.head_dim;
    const int64_t kv_off = static_cast<int64_t>(kv) * dim;
    const int64_t n = last + 1;
    scores_.resize(static_cast<size_t>(heads_) * n);
    for (int64_t p = 0; p < n; ++p) {
      const float* k = cache.key(layer, p) + kv_off;
      for (int h = 0; h < heads_; ++h)
        scores_[h * n + p] = simd::dot(q_row + static_cast<int64_t>(first + h) * dim, k, dim) * shape_.scale;
    }
    inv_denom_.resize(heads_);
    for (int h = 0; h < heads_; ++h) inv_denom_[h] = 1.0f / softmax_numerators(scores_.data() + h * n, n);
    acc_.assign(static_cast<size_t>(heads_) * dim, 0.0f);
    for (int64_t p0 = 0; p0 < n; p0 += kPositionBlock)
      weighted_values(cache, layer, kv_off, p0, std::min(n, p0 + kPositionBlock), n);
    for (int h = 0; h < heads_; ++h) {
      float* dst = out_row + static_cast<int64_t>(first + h) * dim;
      for (int d = 0; d < dim; ++d) dst[d] = acc_[h * dim + d] * inv_denom_[h];
    }
  }

 private:
  /**
   * acc_h += w_h,p * v_p for positions [p0, p1), every head of the group: per vector of dims, the heads'
   * accumulators stay in registers while the positions' values (in L1 for the block) are read once for all.
   */
  void weighted_values(CpuKvCache& cache, int layer, int64_t kv_off, int64_t p0, int64_t p1, int64_t n) {
    switch (heads_) {
      case 1: return weighted_values_of<1>(cache, layer, kv_off, p0, p1, n);
      case 2: return weighted_values_of<2>(cache, layer, kv_off, p0, p1, n);
      case 3: return weighted_values_of<3>(cache, layer, kv_off, p0, p1, n);
      case 4: return weighted_values_of<4>(cache, layer, kv_off, p0, p1, n);
      case 6: return weighted_values_of<6>(cache, layer, kv_off, p0, p1, n);
      case 8: return weighted_values_of<8>(cache, layer, kv_off, p0, p1, n);
      default:
        for (int h0 = 0; h0 < heads_; ++h0) weighted_values_of<1>(cache, layer, kv_off, p0, p1, n, h0);
    }
  }

  /** weighted_values for heads [h0, h0 + H) (the arithmetic per element: acc + w * v, in position order). */
  template <int H>
  void weighted_values_of(CpuKvCache& cache, int layer, int64_t kv_off, int64_t p0, int64_t p1, int64_t n,
                          int h0 = 0) {
    const int dim = shape_.head_dim;
    int d = 0;
    for (; d + simd::kLanes <= dim; d += simd::kLanes) {
      simd::V acc[H];
      for (int h = 0; h < H; ++h) acc[h] = simd::load(acc_.data() + (h0 + h) * dim + d);
      for (int64_t p = p0; p < p1; ++p) {
        const simd::V v = simd::load(cache.value(layer, p) + kv_off + d);
        for (int h = 0; h < H; ++h)
          acc[h] = simd::add(acc[h], simd::mul(simd::set1(scores_[(h0 + h) * n + p]), v));
      }
      for (int h = 0; h < H; ++h) simd::store(acc_.data() + (h0 + h) * dim + d, acc[h]);
    }
    for (; d < dim; ++d)
      for (int h = 0; h < H; ++h) {
        float& a = acc_[(h0 + h) * dim + d];
        for (int64_t p = p0; p < p1; ++p) a += scores_[(h0 + h) * n + p] * cache.value(layer, p)[kv_off + d];
      }
  }

  /** Replaces scores with exp(score - max) and returns their sum (both in position order). */
  static float softmax_numerators(float* s, int64_t n) {
    float max_score = -INFINITY;
    for (int64_t p = 0; p < n; ++p) max_score = std::max(max_score, s[p]);
    float denom = 0;
    for (int64_t p = 0; p < n; ++p) {
      s[p] = std::exp(s[p] - max_score);
      denom += s[p];
    }
    return denom;
  }

  const AttentionShape& shape_;
  const int heads_;
  std::vector<float> scores_, inv_denom_, acc_;
};

/**
 * Query heads per work item: the whole group sharing a kv head, unless that leaves threads idle (one decode row
 * has only kv_heads groups); then halves of it, down to one head. Results do not depend on it.
 */
int heads_per_item(const AttentionShape& shape, int64_t rows, int threads) {
  int per = shape.heads / shape.kv_heads;
  while (per > 1 && per % 2 == 0 && rows * (shape.heads / per) < 2 * threads) per /= 2;
  return per;
}

}  // namespace

void grouped_attention(ThreadPool& pool, const float* q, int64_t rows, int layer,
                       std::span<const AttentionSegment> segments, const AttentionShape& shape, float* out) {
  const int64_t width = static_cast<int64_t>(shape.heads) * shape.head_dim;
  std::vector<int> segment_of_row(rows, -1);
  for (size_t i = 0; i < segments.size(); ++i)
    for (int64_t t = 0; t < segments[i].rows; ++t) segment_of_row[segments[i].row + t] = static_cast<int>(i);
  const int group = shape.heads / shape.kv_heads;
  const int per = heads_per_item(shape, rows, pool.size());
  const int64_t items_per_row = shape.heads / per;
  pool.parallel_for(rows * items_per_row, 1, [&](int64_t begin, int64_t end) {
    HeadGroup heads(shape, per);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / items_per_row;
      const int first = static_cast<int>(item % items_per_row) * per;
      const AttentionSegment& s = segments[segment_of_row[r]];
      auto* cache = static_cast<CpuKvCache*>(s.cache);
      heads.run(q + r * width, first, first / group, *cache, layer, s.position + (r - s.row), out + r * width);
    }
  });
}

}  // namespace studio::cpu
