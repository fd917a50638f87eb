#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

/** Cached positions per step of the online softmax: one cache block (its keys are stored transposed). */
constexpr int64_t kPositions = CpuKvCache::kBlock;
constexpr int kPositionVectors = static_cast<int>(kPositions / simd::kLanes);
static_assert(kPositions % simd::kLanes == 0);
/** Query vectors (rows x heads of one kv head) per work item: each cached block is read once for all of them. */
constexpr int64_t kQueryVectors = 128;
/** Query vectors per register tile: scores (x kPositionVectors accumulators) and weighted values (x dims). */
constexpr int kScoreTile = simd::kLanes == 16 ? 6 : 1;
constexpr int kValueTile = simd::kLanes == 16 ? 3 : 1;
/** Vectors of head dims per register tile of the weighted values. */
constexpr int kDimVectors = 8;

/**
 * One work item: query heads [first, first + heads) of rows [row, row + rows) of one sequence, whose positions
 * are consecutive (row i attends to positions 0..last + i). The heads share one kv head and the rows one cache,
 * so each cached key and value block is read once for all of them.
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
 * Computes a Block with an online softmax over blocks of kPositions cached positions (starting at multiples of
 * kPositions, whatever the rows). Per query vector (row i, head h) and per block, in this order:
 *   s_p = fma-chain over dims d = 0.. of q[d] * k_p[d], times scale; s_p = -inf past the row's position;
 *   m' = max(m, max_p s_p); alpha = exp(m - m'); e_p = exp(s_p - m');
 *   sum = sum * alpha + (the block's e_p added lane-wise, then across lanes);
 *   acc[d] = acc[d] * alpha, then acc[d] = fma(e_p, v_p[d], acc[d]) for the row's positions in order;
 * and finally out = acc * (1 / sum). None of it depends on the other rows or heads of the item, on where the
 * item's rows start, or on the thread: a decode step and any prefill chunk give the same bits for a row.
 */
class BlockAttention {
 public:
  BlockAttention(const AttentionShape& shape, int heads) : shape_(shape), heads_(heads) {}

  void run(const Block& b, const float* q, int layer, float* out) {
    const int dim = shape_.head_dim;
    const int64_t width = static_cast<int64_t>(shape_.heads) * dim;
    const auto& cache = *static_cast<const CpuKvCache*>(b.segment->cache);
    const int kv = b.first / (shape_.heads / shape_.kv_heads);
    const int64_t vectors = b.rows * heads_;
    query_.resize(vectors);
    for (int64_t i = 0; i < b.rows; ++i)
      for (int h = 0; h < heads_; ++h)
        query_[i * heads_ + h] = q + (b.row + i) * width + static_cast<int64_t>(b.first + h) * dim;
    scores_.resize(vectors * kPositions);
    acc_.assign(vectors * dim, 0.0f);
    max_.assign(vectors, -INFINITY);
    sum_.assign(vectors, 0.0f);
    alpha_.resize(vectors);
    valid_.resize(vectors);
    const int64_t end = b.last + b.rows;  // positions the last row attends to
    for (int64_t p0 = 0; p0 < end; p0 += kPositions) {
      // Rows whose position is below p0 see nothing of this block.
      const int64_t first = std::max<int64_t>(0, p0 - b.last) * heads_;
      scores(widened(cache.key_block(layer, p0, kv, dim), cache), first, vectors);
      for (int64_t v = first; v < vectors; ++v)
        softmax_step(v, std::min<int64_t>(kPositions, b.last + v / heads_ - p0 + 1));
      weighted_values(widened(cache.value_at(layer, p0, kv, dim), cache), first, vectors);
    }
    for (int64_t v = 0; v < vectors; ++v) {
      float* dst = out + (b.row + v / heads_) * width + static_cast<int64_t>(b.first + v % heads_) * dim;
      const float* acc = acc_.data() + v * dim;
      const float inv = 1.0f / sum_[v];
      for (int d = 0; d < dim; ++d) dst[d] = acc[d] * inv;
    }
  }

 private:
  /**
   * A cache block's keys (transposed) or values as f32: in place for an f32 cache; for an f16 one, widened once
   * for all of the item's query vectors (exactly: every f16 value is a float), keys first and then values into
   * the same 32 KB, so the kernels below are the same for both element types and the widened block stays in L1.
   * The buffer starts on a 64-byte line, as the cache's own blocks do (split loads cost ~20%: bench/RESULTS.md).
   */
  const float* widened(const void* block, const CpuKvCache& cache) {
    if (cache.element() == KvElement::F32) return static_cast<const float*>(block);
    const size_t n = static_cast<size_t>(kPositions) * shape_.head_dim;
    wide_.resize(n + 16);
    float* w = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(wide_.data()) + 63) & ~uintptr_t{63});
    half::load(static_cast<const uint16_t*>(block), w, n);
    return w;
  }

  /** Scores of query vectors [begin, end) against the block's keys (kt: head_dim rows of kPositions). */
  void scores(const float* kt, int64_t begin, int64_t end) {
    int64_t v = begin;
    for (; v + kScoreTile <= end; v += kScoreTile) scores_of<kScoreTile>(kt, v);
    for (; v < end; ++v) scores_of<1>(kt, v);
  }

  template <int NQ>
  void scores_of(const float* kt, int64_t v0) {
    simd::V acc[NQ][kPositionVectors];
    for (int q = 0; q < NQ; ++q)
      for (int p = 0; p < kPositionVectors; ++p) acc[q][p] = simd::zero();
    const float* qv[NQ];
    for (int q = 0; q < NQ; ++q) qv[q] = query_[v0 + q];
    for (int d = 0; d < shape_.head_dim; ++d) {
      simd::V k[kPositionVectors];
      for (int p = 0; p < kPositionVectors; ++p) k[p] = simd::load(kt + d * kPositions + p * simd::kLanes);
      for (int q = 0; q < NQ; ++q) {
        const simd::V x = simd::set1(qv[q][d]);
        for (int p = 0; p < kPositionVectors; ++p) acc[q][p] = simd::fma(x, k[p], acc[q][p]);
      }
    }
    const simd::V scale = simd::set1(shape_.scale);
    for (int q = 0; q < NQ; ++q)
      for (int p = 0; p < kPositionVectors; ++p)
        simd::store(scores_.data() + (v0 + q) * kPositions + p * simd::kLanes, simd::mul(acc[q][p], scale));
  }

  /** Online-softmax step of query vector v over a block whose first `valid` positions it sees. */
  void softmax_step(int64_t v, int64_t valid) {
    float* s = scores_.data() + v * kPositions;
    for (int64_t p = valid; p < kPositions; ++p) s[p] = -INFINITY;
    simd::V top = simd::load(s);
    for (int p = 1; p < kPositionVectors; ++p) top = simd::max(top, simd::load(s + p * simd::kLanes));
    const float next = std::max(max_[v], simd::hmax(top));
    alignas(64) float alpha[simd::kLanes];
    simd::store(alpha, simd::exp_nonpositive(simd::set1(max_[v] - next)));
    const simd::V shift = simd::set1(-next);
    simd::V total = simd::zero();
    for (int p = 0; p < kPositionVectors; ++p) {
      const simd::V e = simd::exp_nonpositive(simd::add(simd::load(s + p * simd::kLanes), shift));
      simd::store(s + p * simd::kLanes, e);
      total = simd::add(total, e);
    }
    const float scaled = sum_[v] * alpha[0];
    sum_[v] = scaled + simd::hsum(total);
    max_[v] = next;
    alpha_[v] = alpha[0];
    valid_[v] = valid;
  }

  /** acc = acc * alpha + the block's weighted values, for query vectors [begin, end) (values: kPositions rows). */
  void weighted_values(const float* values, int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; v += kValueTile) {
      const int n = static_cast<int>(std::min<int64_t>(kValueTile, end - v));
      int64_t common = kPositions;
      for (int q = 0; q < n; ++q) common = std::min(common, valid_[v + q]);
      switch (n) {
        case 1: weighted_dims<1>(values, v, 0, common, true); break;
        case 2: weighted_dims<2>(values, v, 0, common, true); break;
        default: weighted_dims<kValueTile>(values, v, 0, common, true); break;
      }
      // The block holding a row's own position: its later positions, one query vector at a time.
      for (int q = 0; q < n; ++q)
        if (valid_[v + q] > common) weighted_dims<1>(values, v + q, common, valid_[v + q], false);
    }
  }

  /** Positions [p0, p1) into the accumulators of query vectors [v0, v0 + NQ), rescaling them first if asked. */
  template <int NQ>
  void weighted_dims(const float* values, int64_t v0, int64_t p0, int64_t p1, bool rescale) {
    const int dim = shape_.head_dim;
    const int vectors = dim / simd::kLanes;
    int c = 0;
    for (; c + kDimVectors <= vectors; c += kDimVectors) weighted_tile<NQ, kDimVectors>(values, v0, c, p0, p1, rescale);
    for (; c + 4 <= vectors; c += 4) weighted_tile<NQ, 4>(values, v0, c, p0, p1, rescale);
    for (; c < vectors; ++c) weighted_tile<NQ, 1>(values, v0, c, p0, p1, rescale);
    // Dims past the last whole vector (head_dim not a multiple of the lanes): the same operations, one by one.
    for (int d = vectors * simd::kLanes; d < dim; ++d)
      for (int q = 0; q < NQ; ++q) {
        float a = acc_[(v0 + q) * dim + d];
        if (rescale) a = a * alpha_[v0 + q];
        const float* e = scores_.data() + (v0 + q) * kPositions;
        for (int64_t p = p0; p < p1; ++p) a = std::fma(e[p], values[p * dim + d], a);
        acc_[(v0 + q) * dim + d] = a;
      }
  }

  template <int NQ, int DV>
  void weighted_tile(const float* values, int64_t v0, int c, int64_t p0, int64_t p1, bool rescale) {
    const int dim = shape_.head_dim;
    const int d0 = c * simd::kLanes;
    simd::V acc[NQ][DV];
    const float* e[NQ];
    for (int q = 0; q < NQ; ++q) {
      e[q] = scores_.data() + (v0 + q) * kPositions;
      const simd::V alpha = simd::set1(alpha_[v0 + q]);
      for (int j = 0; j < DV; ++j) {
        acc[q][j] = simd::load(acc_.data() + (v0 + q) * dim + d0 + j * simd::kLanes);
        if (rescale) acc[q][j] = simd::mul(acc[q][j], alpha);
      }
    }
    for (int64_t p = p0; p < p1; ++p) {
      simd::V val[DV];
      for (int j = 0; j < DV; ++j) val[j] = simd::load(values + p * dim + d0 + j * simd::kLanes);
      for (int q = 0; q < NQ; ++q) {
        const simd::V w = simd::set1(e[q][p]);
        for (int j = 0; j < DV; ++j) acc[q][j] = simd::fma(w, val[j], acc[q][j]);
      }
    }
    for (int q = 0; q < NQ; ++q)
      for (int j = 0; j < DV; ++j) simd::store(acc_.data() + (v0 + q) * dim + d0 + j * simd::kLanes, acc[q][j]);
  }

  const AttentionShape& shape_;
  const int heads_;
  std::vector<const float*> query_;
  std::vector<float> scores_, acc_, max_, sum_, alpha_;
  std::vector<float> wide_;  // an f16 block's keys or values widened to f32 (widened)
  std::vector<int64_t> valid_;
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
  const int64_t per_block = std::max<int64_t>(1, kQueryVectors / heads_per_item);
  for (const AttentionSegment& s : segments)
    for (int64_t r = 0; r < s.rows; r += per_block)
      blocks.push_back({&s, s.row + r, std::min(per_block, s.rows - r), 0, s.position + r});
  // Longest first (later rows of a chunk attend to more positions), so the last items to start are short ones.
  std::stable_sort(blocks.begin(), blocks.end(),
                   [](const Block& a, const Block& b) { return a.last + a.rows > b.last + b.rows; });
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
    BlockAttention local(shape, per);
    for (int64_t item = begin; item < end; ++item) {
      Block b = blocks[item / head_items];
      b.first = static_cast<int>(item % head_items) * per;
      local.run(b, q, layer, out);
    }
  });
}

}  // namespace studio::cpu
