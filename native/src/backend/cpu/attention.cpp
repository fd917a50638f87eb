#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

/** Positions whose values are weighted together (16 KiB of one kv head's values at head_dim 128: L1). */
constexpr int64_t kPositionBlock = 32;
// Position blocks start at multiples of kPositionBlock, so each lies within one cache block.
static_assert(CpuKvCache::kBlock % kPositionBlock == 0);
/** Consecutive query rows of one sequence (a prefill chunk) that share each read of the cache. */
constexpr int64_t kRowBlock = 16;
/** Bound on one work item's scores (rows x heads x positions floats), so long contexts take fewer rows. */
constexpr int64_t kMaxScoreFloats = int64_t{4} << 20;

/**
 * One work item: query heads [first, first + heads) of rows [row, row + rows) of one sequence, whose positions
 * are consecutive (row i attends to positions 0..last + i). The heads share one kv head and the rows one cache,
 * so each cached key and value is read once for all of them (at long contexts the cache, not the weights, is
 * what a token reads most, and a prefill chunk would otherwise read it once per row and per head).
 */
struct Block {
  const AttentionSegment* segment = nullptr;
  int64_t row = 0;
  int64_t rows = 0;
  int first = 0;
  /** Last position of the block's first row. */
  int64_t last = 0;
};

/**
 * Computes a Block. Per row and head the arithmetic and its order are those of that head alone: scores
 * p = dot(q, k_p) * scale in position order, then exp(s - max), their sum in order, acc[d] += w_p * v_p[d] in
 * order of p, and out = acc * (1 / sum).
 */
class BlockAttention {
 public:
  BlockAttention(const AttentionShape& shape, int heads) : shape_(shape), heads_(heads) {}

  void run(const Block& b, const float* q, int layer, float* out) {
    const int dim = shape_.head_dim;
    const int64_t width = static_cast<int64_t>(shape_.heads) * dim;
    auto& cache = *static_cast<CpuKvCache*>(b.segment->cache);
    const int kv = b.first / (shape_.heads / shape_.kv_heads);
    const int64_t n = b.last + b.rows;  // positions the block's last row attends to
    n_ = n;
    scores_.resize(static_cast<size_t>(b.rows * heads_ * n));
    for (int64_t p = 0; p < n; ++p) {
      const float* k = cache.key(layer, p, kv, dim);
      // Row i sees positions up to last + i.
      for (int64_t i = std::max<int64_t>(0, p - b.last); i < b.rows; ++i) {
        const float* q_row = q + (b.row + i) * width + static_cast<int64_t>(b.first) * dim;
        for (int h = 0; h < heads_; ++h) score(i, h)[p] = simd::dot(q_row + h * dim, k, dim) * shape_.scale;
      }
    }
    inv_denom_.resize(b.rows * heads_);
    for (int64_t i = 0; i < b.rows; ++i)
      for (int h = 0; h < heads_; ++h) inv_denom_[i * heads_ + h] = 1.0f / softmax_numerators(score(i, h), b.last + i + 1);
    acc_.assign(static_cast<size_t>(b.rows * heads_ * dim), 0.0f);
    for (int64_t p0 = 0; p0 < n; p0 += kPositionBlock)
      for (int64_t i = 0; i < b.rows; ++i) {
        const int64_t p1 = std::min(p0 + kPositionBlock, b.last + i + 1);
        if (p1 > p0) weighted_values(cache, layer, kv, i, p0, p1);
      }
    for (int64_t i = 0; i < b.rows; ++i)
      for (int h = 0; h < heads_; ++h) {
        float* dst = out + (b.row + i) * width + static_cast<int64_t>(b.first + h) * dim;
        const float* acc = accumulator(i, h);
        const float inv = inv_denom_[i * heads_ + h];
        for (int d = 0; d < dim; ++d) dst[d] = acc[d] * inv;
      }
  }

 private:
  float* score(int64_t i, int h) { return scores_.data() + (i * heads_ + h) * n_; }
  float* accumulator(int64_t i, int h) { return acc_.data() + (i * heads_ + h) * shape_.head_dim; }

  /**
   * acc += w_p * v_p for row i's heads over positions [p0, p1): per vector of dims, the heads' accumulators stay
   * in registers while the positions' values (in L1 for the block, and for the next rows) are read once for all.
   */
  void weighted_values(CpuKvCache& cache, int layer, int kv, int64_t i, int64_t p0, int64_t p1) {
    switch (heads_) {
      case 1: return weighted_values_of<1>(cache, layer, kv, i, 0, p0, p1);
      case 2: return weighted_values_of<2>(cache, layer, kv, i, 0, p0, p1);
      case 3: return weighted_values_of<3>(cache, layer, kv, i, 0, p0, p1);
      case 4: return weighted_values_of<4>(cache, layer, kv, i, 0, p0, p1);
      case 6: return weighted_values_of<6>(cache, layer, kv, i, 0, p0, p1);
      case 8: return weighted_values_of<8>(cache, layer, kv, i, 0, p0, p1);
      default:
        for (int h = 0; h < heads_; ++h) weighted_values_of<1>(cache, layer, kv, i, h, p0, p1);
    }
  }

  /** weighted_values for heads [h0, h0 + H) of row i (per element: acc + w * v, in position order). */
  template <int H>
  void weighted_values_of(CpuKvCache& cache, int layer, int kv, int64_t i, int h0, int64_t p0, int64_t p1) {
    const int dim = shape_.head_dim;
    // The block's positions lie in one cache block, where a kv head's values are consecutive rows of dim floats.
    const float* values = cache.value(layer, p0, kv, dim) - p0 * dim;
    int d = 0;
    for (; d + simd::kLanes <= dim; d += simd::kLanes) {
      simd::V acc[H];
      for (int h = 0; h < H; ++h) acc[h] = simd::load(accumulator(i, h0 + h) + d);
      for (int64_t p = p0; p < p1; ++p) {
        const simd::V v = simd::load(values + p * dim + d);
        for (int h = 0; h < H; ++h) acc[h] = simd::add(acc[h], simd::mul(simd::set1(score(i, h0 + h)[p]), v));
      }
      for (int h = 0; h < H; ++h) simd::store(accumulator(i, h0 + h) + d, acc[h]);
    }
    for (; d < dim; ++d)
      for (int h = 0; h < H; ++h) {
        float& a = accumulator(i, h0 + h)[d];
        for (int64_t p = p0; p < p1; ++p) a += score(i, h0 + h)[p] * values[p * dim + d];
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
  int64_t n_ = 0;
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

/** The batch's rows in blocks of consecutive rows of one sequence (one block per decode step). */
std::vector<Block> row_blocks(std::span<const AttentionSegment> segments, int heads_per_item) {
  std::vector<Block> blocks;
  for (const AttentionSegment& s : segments) {
    const int64_t positions = s.position + s.rows;
    const int64_t fit = kMaxScoreFloats / (static_cast<int64_t>(heads_per_item) * positions);
    const int64_t per_block = std::clamp<int64_t>(fit, 1, kRowBlock);
    for (int64_t r = 0; r < s.rows; r += per_block)
      blocks.push_back({&s, s.row + r, std::min(per_block, s.rows - r), 0, s.position + r});
  }
  return blocks;
}

}  // namespace

void grouped_attention(ThreadPool& pool, const float* q, int64_t rows, int layer,
                       std::span<const AttentionSegment> segments, const AttentionShape& shape, float* out) {
  // Heads per item are chosen from the row count first, so a decode batch still spreads over the threads.
  const int per = heads_per_item(shape, rows, pool.size());
  const std::vector<Block> blocks = row_blocks(segments, per);
  const int64_t head_items = shape.heads / per;
  pool.parallel_for(static_cast<int64_t>(blocks.size()) * head_items, 1, [&](int64_t begin, int64_t end) {
    BlockAttention attention(shape, per);
    for (int64_t item = begin; item < end; ++item) {
      Block b = blocks[item / head_items];
      b.first = static_cast<int>(item % head_items) * per;
      attention.run(b, q, layer, out);
    }
  });
}

}  // namespace studio::cpu
