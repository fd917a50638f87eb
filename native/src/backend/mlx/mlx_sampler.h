// Sampling on the MLX device (docs/architecture.md, "Sampling on the device"): the rules of model/sampler.h
// (greedy; temperature with top_k, the top_p cut, or the top_p nucleus; top_logprobs) as MLX operations, so only
// a few numbers per row cross to the host instead of the vocabulary's logits. The random draw stays the host's:
// the caller passes counter_uniform(seed, position) in, so a seed gives the same tokens on both paths except
// where float rounding (f32 on the device, double on the host) moves a cumulative sum across a boundary.
//
// Nothing here sorts the vocabulary: candidates are ranked by one int64 key per token (the logit's order-keeping
// bits, then the lower id), which is the host's total order, so top_k and top_logprobs take exactly the host's
// ids; the top_p nucleus is found by bisecting that key on the probability mass above it.
#pragma once

#include <mlx/mlx.h>

#include <span>
#include <vector>

#include "backend/backend.h"

namespace studio::mlxb {

namespace mx = mlx::core;

/** One row's pick, still lazy: token (int32 scalar) and packed = [token, logprob, top ids..., top logprobs...] f32. */
struct LazyPick {
  mx::array token;
  mx::array packed;
};

/** The pick for one row of logits ([vocab], any float dtype). */
LazyPick pick_row(const mx::array& logits, const DeviceDraw& draw, mx::Stream s);

/** Picks for every row of logits [rows, vocab], evaluation started (async_eval) but not waited for. */
class MlxPendingPicks final : public PendingPicks {
 public:
  MlxPendingPicks(const mx::array& logits, std::span<const DeviceDraw> draws, mx::Stream s);
  /** Waits for the picks and reads them back: a few floats per row. */
  std::vector<DevicePick> read() override;
  /** The tokens, [rows] int32, on the device. */
  const mx::array& tokens() const { return tokens_; }

 private:
  mx::array tokens_;
  mx::array packed_;
  std::vector<int> tops_;
};

/** Picks for every row of logits [rows, vocab], evaluated and read back. */
std::vector<DevicePick> pick_rows(const mx::array& logits, std::span<const DeviceDraw> draws, mx::Stream s);

}  // namespace studio::mlxb
