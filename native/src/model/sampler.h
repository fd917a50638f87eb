// Picks the next token from one position's logits. A pure function of (logits, params, position): the random
// draw comes from a counter-based generator keyed by (seed, position), so batching and splits never change it.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace studio::model {

struct SamplingParams {
  float temperature = 0;  // <= 0: greedy
  float top_p = 1;
  int top_k = 0;  // 0: no limit
  uint64_t seed = 0;
  int top_logprobs = 0;
  std::vector<std::pair<int32_t, float>> logit_bias;
  // A constraint's mask for this one token (applied after logit_bias): when allow is not empty only its ids may
  // be drawn, and ids in ban never are. The draw then runs over the remaining ids in id order, so it stays a pure
  // function of (logits, params, position); log-probabilities are over the remaining ids.
  std::vector<int32_t> allow;
  std::vector<int32_t> ban;
};

struct Sample {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // (token, logprob), best first
};

/** logits is modified (logit bias applied). position: the position whose logits these are. */
Sample sample_token(std::span<float> logits, const SamplingParams& params, int64_t position);

/** The random draw of sample_token (temperature > 0); argmax: the best token, whose logit is the reference. */
int32_t draw(std::span<float> logits, const SamplingParams& params, int64_t position, int32_t argmax);

/** The tokens top_p keeps at this temperature (the fewest best whose weights reach top_p of all), in id order. */
std::vector<int32_t> top_p_nucleus(std::span<const float> logits, float top_p, float temperature);

/** A uniform double in [0, 1) from (seed, counter). */
double counter_uniform(uint64_t seed, uint64_t counter);

}  // namespace studio::model
