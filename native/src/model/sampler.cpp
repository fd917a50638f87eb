#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace studio::model {

namespace {

uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Higher logit first; equal logits go to the lower token id so the order is total.
bool better(const std::span<float> l, int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

}  // namespace

double counter_uniform(uint64_t seed, uint64_t counter) {
  const uint64_t bits = mix64(mix64(seed) ^ counter);
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

Sample sample_token(std::span<float> logits, const SamplingParams& params, int64_t position) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  for (const auto& [token, bias] : params.logit_bias)
    if (token >= 0 && token < vocab) logits[token] += bias;

  int32_t argmax = 0;
  for (int32_t i = 1; i < vocab; ++i)
    if (better(logits, i, argmax)) argmax = i;
  double log_z = 0;
  {
    const double m = logits[argmax];
    double z = 0;
    for (int32_t i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - m);
    log_z = m + std::log(z);
  }
  auto logprob = [&](int32_t t) { return static_cast<float>(static_cast<double>(logits[t]) - log_z); };

  Sample out;
  out.token = argmax;
  if (params.temperature > 0) {
    // Candidates in descending order when top_k / top_p need an order; otherwise all tokens in id order.
    std::vector<int32_t> cand(vocab);
    std::iota(cand.begin(), cand.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) { return better(logits, a, b); };
    if (params.top_k > 0 && params.top_k < vocab) {
      std::partial_sort(cand.begin(), cand.begin() + params.top_k, cand.end(), by_logit);
      cand.resize(params.top_k);
    } else if (params.top_p < 1) {
      std::sort(cand.begin(), cand.end(), by_logit);
    }
    const double inv_t = 1.0 / params.temperature;
    const double m = logits[argmax];
    std::vector<double> p(cand.size());
    double total = 0;
    for (size_t i = 0; i < cand.size(); ++i) total += p[i] = std::exp((logits[cand[i]] - m) * inv_t);
    size_t keep = cand.size();
    if (params.top_p > 0 && params.top_p < 1) {
      double cum = 0;
      for (size_t i = 0; i < cand.size(); ++i) {
        cum += p[i];
        if (cum >= params.top_p * total) {
          keep = i + 1;
          break;
        }
      }
      total = 0;
      for (size_t i = 0; i < keep; ++i) total += p[i];
    }
    const double u = counter_uniform(params.seed, static_cast<uint64_t>(position)) * total;
    double cum = 0;
    out.token = cand[keep - 1];
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (u < cum) {
        out.token = cand[i];
        break;
      }
    }
  }
  out.logprob = logprob(out.token);
  if (params.top_logprobs > 0) {
    const int n = std::min(params.top_logprobs, vocab);
    std::vector<int32_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) { return better(logits, a, b); });
    for (int i = 0; i < n; ++i) out.top.emplace_back(ids[i], logprob(ids[i]));
  }
  return out;
}

}  // namespace studio::model
