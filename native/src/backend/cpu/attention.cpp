#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

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
    for (int64_t p = 0; p < n; ++p) {
      const float* v = cache.value(layer, p) + kv_off;
      for (int h = 0; h < heads_; ++h) {
        const float w = scores_[h * n + p];
        float* acc = acc_.data() + h * dim;
        for (int d = 0; d < dim; ++d) acc[d] += w * v[d];
      }
    }
    for (int h = 0; h < heads_; ++h) {
      float* dst = out_row + static_cast<int64_t>(first + h) * dim;
      for (int d = 0; d < dim; ++d) dst[d] = acc_[h * dim + d] * inv_denom_[h];
    }
  }

 private:
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
