// Standalone check of the sampler (model/sampler.cpp) without node, over random logits, vocabulary sizes up to
// MiniMax's 200,064, temperatures, top_p and top_k, against a full sort of the vocabulary (how it sampled before):
//   - the top_p nucleus it selects is exactly the set the full sort keeps;
//   - the drawn token is in it, and with top_k (or no cut) it is the very token the full sort draws;
//   - over many seeds, each token of the nucleus is drawn as often as its renormalised probability says.
// With --bench it also times both ways at 200,064 ids and prints the figures, then one JSON line.
// Prints "sampler_check: cases=N mismatches=M" and exits 0 only when M is 0.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "model/sampler.h"

namespace {

using studio::model::counter_uniform;
using studio::model::SamplingParams;

bool better(std::span<const float> l, int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

// The top_p nucleus by a full sort: the fewest best tokens whose weights (summed best first) reach top_p.
std::vector<int32_t> full_sort_nucleus(std::span<const float> logits, float top_p, float temperature) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return better(logits, a, b); });
  const double m = logits[ids[0]];
  std::vector<double> p(vocab);
  double total = 0;
  for (int32_t i = 0; i < vocab; ++i) total += p[i] = std::exp((logits[ids[i]] - m) / static_cast<double>(temperature));
  double cum = 0;
  int32_t keep = vocab;
  for (int32_t i = 0; i < vocab; ++i)
    if ((cum += p[i]) >= top_p * total) {
      keep = i + 1;
      break;
    }
  ids.resize(keep);
  std::sort(ids.begin(), ids.end());
  return ids;
}

// The draw with the whole vocabulary sorted whenever top_p applies (how it sampled before).
int32_t full_sort_draw(std::span<const float> logits, const SamplingParams& params, int64_t position) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  int32_t argmax = 0;
  for (int32_t i = 1; i < vocab; ++i)
    if (better(logits, i, argmax)) argmax = i;
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
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return cand[i];
  }
  return cand[keep - 1];
}

// Logits shaped like a language model's: a normal spread with a few strong candidates on top.
std::vector<float> model_like_logits(std::mt19937_64& rng, int32_t vocab, float spread, int peaks) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> logits(vocab);
  for (auto& l : logits) l = normal(rng);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  for (int i = 0; i < peaks; ++i) logits[pick(rng)] += 4.0f * spread;
  return logits;
}

int32_t argmax_of(std::span<const float> logits) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(logits.size()); ++i)
    if (better(logits, i, best)) best = i;
  return best;
}

// Draws over 200,000 seeds from 24 tokens at temperature 0.8, top_p 0.9: each nucleus token's share must be its
// renormalised probability within 0.005, and no token outside it is drawn. Returns 1 on failure.
int check_frequencies(std::mt19937_64& rng) {
  const std::vector<float> logits = model_like_logits(rng, 24, 0.7f, 0);
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_p = 0.9f;
  const std::vector<int32_t> kept = full_sort_nucleus(logits, params.top_p, params.temperature);
  const double m = *std::max_element(logits.begin(), logits.end());
  double total = 0;
  for (const int32_t id : kept) total += std::exp((logits[id] - m) / 0.8);
  std::vector<int> counts(logits.size(), 0);
  constexpr int kDraws = 200000;
  for (int n = 0; n < kDraws; ++n) {
    params.seed = static_cast<uint64_t>(n);
    std::vector<float> copy = logits;
    ++counts[studio::model::draw(copy, params, 0, argmax_of(logits))];
  }
  double worst = 0;
  for (int32_t id = 0; id < static_cast<int32_t>(logits.size()); ++id) {
    const bool in = std::binary_search(kept.begin(), kept.end(), id);
    const double want = in ? std::exp((logits[id] - m) / 0.8) / total : 0.0;
    worst = std::max(worst, std::abs(counts[id] / static_cast<double>(kDraws) - want));
  }
  std::printf("frequencies: %zu tokens in the nucleus, largest share error %.4f\n", kept.size(), worst);
  return worst < 0.005 ? 0 : 1;
}

template <typename F>
double ms_per_call(F&& call, int runs) {
  std::vector<double> times;
  for (int r = 0; r < runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    call(r);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Logits as a trained model's next-token distribution falls off: Zipf-like in rank (s = 1.1), in random order.
std::vector<float> zipf_logits(std::mt19937_64& rng, int32_t vocab) {
  std::vector<float> logits(vocab);
  for (int32_t r = 0; r < vocab; ++r) logits[r] = -1.1f * std::log(static_cast<float>(r + 1));
  std::shuffle(logits.begin(), logits.end(), rng);
  return logits;
}

struct BenchRow {
  double greedy, top_p, top_k_p, sorted;
};

BenchRow bench_on(const std::vector<float>& base) {
  std::vector<float> logits = base;
  auto run = [&](SamplingParams params) {
    return ms_per_call(
        [&](int r) {
          logits = base;
          studio::model::sample_token(logits, params, r);
        },
        41);
  };
  SamplingParams greedy;
  SamplingParams top_p;
  top_p.temperature = 1.0f;
  top_p.top_p = 0.95f;
  SamplingParams top_k_p = top_p;
  top_k_p.top_k = 40;
  const double greedy_ms = run(greedy);
  const double top_p_ms = run(top_p);
  const double top_k_p_ms = run(top_k_p);
  const double sorted_ms = ms_per_call([&](int r) { full_sort_draw(base, top_p, r); }, 41);
  return {greedy_ms, top_p_ms, top_k_p_ms, sorted_ms};
}

void bench() {
  constexpr int32_t kVocab = 200064;
  std::mt19937_64 rng(7);
  const BenchRow lm = bench_on(zipf_logits(rng, kVocab));
  const BenchRow flat = bench_on(model_like_logits(rng, kVocab, 2.0f, 8));
  std::printf("sampler at %d ids, ms per call (median of 41, one thread):\n", kVocab);
  std::printf("  %-44s %12s %12s\n", "", "model-like", "flat");
  std::printf("  %-44s %12.3f %12.3f\n", "greedy", lm.greedy, flat.greedy);
  std::printf("  %-44s %12.3f %12.3f\n", "temperature 1, top_p 0.95 (sample_token)", lm.top_p, flat.top_p);
  std::printf("  %-44s %12.3f %12.3f\n", "temperature 1, top_k 40 + top_p 0.95", lm.top_k_p, flat.top_k_p);
  std::printf("  %-44s %12.3f %12.3f\n", "top_p 0.95 by a full sort (the draw alone)", lm.sorted, flat.sorted);
  std::printf("  %-44s %11.1fx %11.1fx\n", "full sort / selection", lm.sorted / lm.top_p, flat.sorted / flat.top_p);
  std::printf(
      "{\"bench\":\"sampler\",\"vocab\":%d,\"greedy_ms\":%.3f,\"top_p_ms\":%.3f,\"top_k_top_p_ms\":%.3f,"
      "\"full_sort_top_p_ms\":%.3f,\"speedup\":%.2f,\"flat_top_p_ms\":%.3f,\"flat_full_sort_top_p_ms\":%.3f,"
      "\"flat_speedup\":%.2f}\n",
      kVocab, lm.greedy, lm.top_p, lm.top_k_p, lm.sorted, lm.sorted / lm.top_p, flat.top_p, flat.sorted,
      flat.sorted / flat.top_p);
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937_64 rng(20261202);
  int cases = 0;
  int mismatches = 0;
  const int32_t vocabs[] = {7, 1000, 10240, 200064};
  const float temperatures[] = {0.3f, 0.7f, 1.0f, 1.5f};
  const float top_ps[] = {0.5f, 0.9f, 0.95f, 0.999f, 1.0f};
  const int top_ks[] = {0, 1, 40};
  for (const int32_t vocab : vocabs) {
    const int logit_sets = vocab > 100000 ? 3 : 12;
    for (int set = 0; set < logit_sets; ++set) {
      const float spread = set % 3 == 0 ? 0.5f : set % 3 == 1 ? 2.0f : 6.0f;
      std::vector<float> logits = model_like_logits(rng, vocab, spread, set % 4);
      if (set == 1) std::fill(logits.begin(), logits.begin() + std::min(vocab, 50), logits[0]);  // ties
      for (const float t : temperatures)
        for (const float p : top_ps)
          for (const int k : top_ks) {
            SamplingParams params;
            params.temperature = t;
            params.top_p = p;
            params.top_k = k;
            params.seed = rng();
            const bool nucleus = p < 1 && (k == 0 || k >= vocab);
            const std::vector<int32_t> want_set = nucleus ? full_sort_nucleus(logits, p, t) : std::vector<int32_t>{};
            if (nucleus) {
              ++cases;
              if (studio::model::top_p_nucleus(logits, p, t) != want_set) {
                ++mismatches;
                std::printf("nucleus differs: vocab=%d t=%g top_p=%g\n", vocab, t, p);
              }
            }
            for (int64_t position = 0; position < 3; ++position) {
              std::vector<float> copy = logits;
              const int32_t got = studio::model::draw(copy, params, position, argmax_of(logits));
              ++cases;
              const bool ok = nucleus ? std::binary_search(want_set.begin(), want_set.end(), got)
                                      : got == full_sort_draw(logits, params, position);
              if (!ok) {
                ++mismatches;
                std::printf("draw differs: vocab=%d t=%g top_p=%g top_k=%d position=%lld: %d\n", vocab, t, p, k,
                            static_cast<long long>(position), got);
              }
            }
          }
    }
  }
  mismatches += check_frequencies(rng);
  ++cases;
  std::printf("sampler_check: cases=%d mismatches=%d\n", cases, mismatches);
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) bench();
  return mismatches == 0 ? 0 : 1;
}
