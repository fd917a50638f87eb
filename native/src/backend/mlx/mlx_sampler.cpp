#include "backend/mlx/mlx_sampler.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace studio::mlxb {

namespace {

// The bisection halves an int32 key range (at most 2^32 wide) down to one value.
constexpr int kBisectionSteps = 32;

/**
 * The logits' order as int32: a float's bits read as an integer keep the order of non-negative floats and
 * reverse it for negative ones, so the low 31 bits of negatives are flipped. Adding +0 first turns -0 into +0,
 * which the host's float comparison holds equal.
 */
mx::array order_key32(const mx::array& l, mx::Stream s) {
  auto bits = mx::view(mx::add(l, mx::array(0.0f), s), mx::int32, s);
  auto flipped = mx::bitwise_xor(bits, mx::array(INT32_C(0x7fffffff)), s);
  return mx::where(mx::less(bits, mx::array(0), s), flipped, bits, s);
}

/**
 * The host's total order (model/sampler.cpp better(): higher logit, then lower id) as one int64 per token, so
 * top_k and argmax over it never meet a tie: key = order_key32 * 2^32 + (vocab - 1 - id).
 */
mx::array order_key64(const mx::array& key32, int vocab, mx::Stream s) {
  auto high = mx::multiply(mx::astype(key32, mx::int64, s), mx::array(INT64_C(1) << 32), s);
  auto low = mx::subtract(mx::array(static_cast<int64_t>(vocab - 1)), mx::arange(0, vocab, mx::int64, s), s);
  return mx::add(high, low, s);
}

/** The token ids of order keys. */
mx::array ids_of(const mx::array& keys, int vocab, mx::Stream s) {
  auto low = mx::bitwise_and(keys, mx::array(INT64_C(0xffffffff)), s);
  return mx::astype(mx::subtract(mx::array(static_cast<int64_t>(vocab - 1)), low, s), mx::int32, s);
}

/** The n best ids, best first: the n largest keys (no ties), sorted. */
mx::array best_ids(const mx::array& key64, int n, int vocab, mx::Stream s) {
  auto top = n < vocab ? mx::topk(key64, n, s) : key64;
  // Negated, the ascending sort puts the largest key first (keys are far from INT64_MIN, so negation is exact).
  return ids_of(mx::negative(mx::sort(mx::negative(top, s), s), s), vocab, s);
}

/** Where the running sum of w first passes target: the index, and the running sum there (inclusive). */
struct Crossing {
  mx::array index;
  mx::array cum;
};

/**
 * The first index whose inclusive running sum of w (non-negative) is > target (or >= target when `reach`). A
 * crossing that rounding pushes past the end stays on the last positive weight, as the host's loop ends on its
 * last candidate. The running sum is f32 (Metal has no f64): two-level sums (blocks of 512, then one block)
 * measured no closer to the host's double sums than this one (native/test/mlx_sampler_check.cpp).
 */
Crossing first_crossing(const mx::array& w, const mx::array& target, bool reach, mx::Stream s) {
  const int n = w.shape(0);
  auto cum = mx::cumsum(w, 0, false, true, s);
  auto passed = reach ? mx::greater_equal(cum, target, s) : mx::greater(cum, target, s);
  auto short_of = mx::sum(mx::astype(mx::logical_not(passed, s), mx::int32, s), s);
  auto ids = mx::arange(0, n, mx::int32, s);
  auto last_positive = mx::max(mx::where(mx::greater(w, mx::array(0.0f), s), ids, mx::array(0), s), s);
  auto index = mx::minimum(short_of, last_positive, s);
  return {index, mx::take(cum, index, s)};
}

/**
 * top_k: the k best, best first, with the top_p cut on their cumulative weight; one draw over what is kept,
 * in that order (model/sampler.cpp draw()).
 */
mx::array draw_top_k(const mx::array& l, const mx::array& key64, const mx::array& m, const DeviceDraw& d, int vocab,
                     mx::Stream s) {
  auto ids = best_ids(key64, d.top_k, vocab, s);
  auto w = mx::exp(mx::multiply(mx::subtract(mx::take(l, ids, s), m, s), mx::array(1.0f / d.temperature), s), s);
  auto kept = w;
  auto total = mx::sum(w, s);
  if (d.top_p > 0 && d.top_p < 1) {
    // The fewest best whose weight reaches top_p of the k: their running sum is the total drawn over.
    const Crossing cut = first_crossing(w, mx::multiply(total, mx::array(d.top_p), s), true, s);
    kept = mx::where(mx::less_equal(mx::arange(0, d.top_k, mx::int32, s), cut.index, s), w, mx::zeros_like(w, s), s);
    total = cut.cum;
  }
  auto target = mx::multiply(total, mx::array(static_cast<float>(d.uniform)), s);
  return mx::take(ids, first_crossing(kept, target, false, s).index, s);
}

/**
 * The top_p nucleus, in id order: every token whose key is above the cut c, and the first tokens (in id order)
 * at c while the mass before them is short of top_p. c is the largest key whose mass at or above it reaches
 * top_p of the whole, found by bisection (the mass above a key falls as the key rises).
 */
mx::array nucleus(const mx::array& key32, const mx::array& w, float top_p, mx::Stream s) {
  auto zero = mx::zeros_like(w, s);
  auto key = mx::astype(key32, mx::int64, s);
  auto mass_from = [&](const mx::array& k) { return mx::sum(mx::where(mx::greater_equal(key, k, s), w, zero, s), s); };
  auto target = mx::multiply(mx::sum(w, s), mx::array(top_p), s);
  // Invariant: mass_from(lo) >= target > mass_from(hi).
  auto lo = mx::min(key, s);
  auto hi = mx::add(mx::max(key, s), mx::array(INT64_C(1)), s);
  for (int i = 0; i < kBisectionSteps; ++i) {
    auto mid = mx::add(lo, mx::right_shift(mx::subtract(hi, lo, s), mx::array(INT64_C(1)), s), s);
    auto reaches = mx::greater_equal(mass_from(mid), target, s);
    lo = mx::where(reaches, mid, lo, s);
    hi = mx::where(reaches, hi, mid, s);
  }
  auto above = mx::greater(key, lo, s);
  auto at_cut = mx::equal(key, lo, s);
  // The tokens at the cut join in id order while the mass before each (exclusive) is short of the target.
  auto tied = mx::where(at_cut, w, zero, s);
  const Crossing last_in = first_crossing(tied, mx::subtract(target, mx::sum(mx::where(above, w, zero, s), s), s),
                                          true, s);
  auto ids = mx::arange(0, w.shape(0), mx::int32, s);
  return mx::logical_or(above, mx::logical_and(at_cut, mx::less_equal(ids, last_in.index, s), s), s);
}

/** One draw over the tokens `member` keeps, in id order. */
mx::array draw_in_id_order(const mx::array& w, const mx::array& member, float uniform, mx::Stream s) {
  auto kept = mx::where(member, w, mx::zeros_like(w, s), s);
  auto target = mx::multiply(mx::sum(kept, s), mx::array(uniform), s);
  return first_crossing(kept, target, false, s).index;
}

}  // namespace

LazyPick pick_row(const mx::array& logits, const DeviceDraw& d, mx::Stream s) {
  if (logits.ndim() != 1) throw std::invalid_argument("mlx sampler: one row of logits expected");
  const int vocab = logits.shape(0);
  if (vocab < 1 || vocab >= (1 << 24))
    throw std::invalid_argument("mlx sampler: vocabulary of " + std::to_string(vocab) + " ids outside [1, 2^24)");
  auto l = mx::astype(logits, mx::float32, s);
  auto key32 = order_key32(l, s);
  auto key64 = order_key64(key32, vocab, s);
  auto best = ids_of(mx::max(key64, s), vocab, s);
  auto m = mx::take(l, best, s);
  auto log_z = mx::add(m, mx::log(mx::sum(mx::exp(mx::subtract(l, m, s), s), s), s), s);

  mx::array token = best;
  if (d.temperature > 0) {
    const bool cut_p = d.top_p > 0 && d.top_p < 1;
    if (d.top_k > 0 && d.top_k < vocab) {
      token = draw_top_k(l, key64, m, d, vocab, s);
    } else {
      auto w = mx::exp(mx::multiply(mx::subtract(l, m, s), mx::array(1.0f / d.temperature), s), s);
      auto member = cut_p ? nucleus(key32, w, d.top_p, s) : mx::full({vocab}, true, s);
      token = mx::astype(draw_in_id_order(w, member, static_cast<float>(d.uniform), s), mx::int32, s);
    }
  }
  std::vector<mx::array> parts{mx::reshape(mx::astype(token, mx::float32, s), {1}, s),
                               mx::reshape(mx::subtract(mx::take(l, token, s), log_z, s), {1}, s)};
  if (d.top_logprobs > 0) {
    auto top = best_ids(key64, std::min(d.top_logprobs, vocab), vocab, s);
    parts.push_back(mx::astype(top, mx::float32, s));
    parts.push_back(mx::subtract(mx::take(l, top, s), log_z, s));
  }
  return {token, mx::concatenate(parts, 0, s)};
}

namespace {

void check_rows(const mx::array& logits, size_t draws) {
  if (logits.ndim() != 2 || static_cast<size_t>(logits.shape(0)) != draws || draws == 0)
    throw std::invalid_argument("mlx sampler: logits [rows, vocab] with one draw per row expected");
}

}  // namespace

MlxPendingPicks::MlxPendingPicks(const mx::array& logits, std::span<const DeviceDraw> draws, mx::Stream s)
    : tokens_(mx::array(0)), packed_(mx::array(0.0f)) {
  check_rows(logits, draws.size());
  const int vocab = logits.shape(1);
  std::vector<mx::array> tokens, packed;
  for (size_t r = 0; r < draws.size(); ++r) {
    LazyPick pick = pick_row(mx::take(logits, static_cast<int>(r), 0, s), draws[r], s);
    tokens.push_back(mx::reshape(pick.token, {1}, s));
    packed.push_back(pick.packed);
    tops_.push_back(std::min(draws[r].top_logprobs, vocab));
  }
  tokens_ = mx::concatenate(tokens, 0, s);
  packed_ = mx::concatenate(packed, 0, s);
  // Started now, so the device works while the host builds the next step (or waits for the caller).
  mx::async_eval({tokens_, packed_});
}

std::vector<DevicePick> MlxPendingPicks::read() {
  mx::eval(packed_);
  const float* v = packed_.data<float>();
  std::vector<DevicePick> picks(tops_.size());
  for (size_t r = 0; r < tops_.size(); ++r) {
    const int top = tops_[r];
    picks[r].token = static_cast<int32_t>(v[0]);
    picks[r].logprob = v[1];
    for (int i = 0; i < top; ++i) picks[r].top.emplace_back(static_cast<int32_t>(v[2 + i]), v[2 + top + i]);
    v += 2 + 2 * top;
  }
  return picks;
}

std::vector<DevicePick> pick_rows(const mx::array& logits, std::span<const DeviceDraw> draws, mx::Stream s) {
  return MlxPendingPicks(logits, draws, s).read();
}

}  // namespace studio::mlxb
