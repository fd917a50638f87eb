// Standalone check of sampling on the MLX device (backend/mlx/mlx_sampler.cpp) against the host sampler
// (model/sampler.cpp) on the same logits and the same seeded draw, over random logits (f32, and bf16-rounded so
// that equal logits are common), vocabulary sizes up to MiniMax's 200,064, and temperature / top_p / top_k /
// top_logprobs mixes:
//   - greedy: the very token of the host, always;
//   - top_logprobs: the host's very ids in the host's order, log-probabilities within kLogprobTolerance;
//   - a draw: the host's token, except where the host's draw sits within a relative float distance of a
//     boundary (the uniform or top_p moved by that much, a share of the total probability mass, makes a full-sort
//     double reference pick the device's token): such ties are counted by distance (1e-6 .. 1e-3), and one
//     farther than 1e-3 is a mismatch;
//   - the same inputs give the same device token twice.
// Prints "mlx_sampler_check: cases=N exact=E ties=T mismatches=M" (and the ties by distance) and exits 0 only
// when M is 0. With --bench it times device picks at 200,064 ids instead.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/mlx/mlx_sampler.h"
#include "model/sampler.h"

namespace {

namespace mx = mlx::core;
using studio::DeviceDraw;
using studio::model::counter_uniform;
using studio::model::SamplingParams;

// f32 log-sum-exp over 200,064 logits against the host's double one.
constexpr double kLogprobTolerance = 1e-4;
constexpr double kTieDistances[] = {1e-6, 1e-5, 1e-4, 1e-3};

bool better(std::span<const float> l, int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

// The host's draw rules by a full sort in double, with top_p given: each candidate in draw order with the share
// of the drawn mass before it and after it, so [before, after) is the range of uniforms that picks it.
struct Span {
  int32_t id;
  double before, after;
};

std::vector<Span> reference_spans(std::span<const float> logits, const SamplingParams& params, double top_p) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  std::vector<int32_t> cand(vocab);
  std::iota(cand.begin(), cand.end(), 0);
  std::sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) { return better(logits, a, b); });
  const double m = logits[cand[0]];
  const double inv_t = 1.0 / params.temperature;
  auto weight = [&](int32_t id) { return std::exp((logits[id] - m) * inv_t); };
  const bool top_k = params.top_k > 0 && params.top_k < vocab;
  if (top_k) cand.resize(params.top_k);
  if (top_p > 0 && top_p < 1) {
    double total = 0;
    for (const int32_t id : cand) total += weight(id);
    double cum = 0;
    for (size_t i = 0; i < cand.size(); ++i)
      if ((cum += weight(cand[i])) >= top_p * total) {
        cand.resize(i + 1);
        break;
      }
  }
  // Without top_k the candidates are drawn over in id order.
  if (!top_k) std::sort(cand.begin(), cand.end());
  double total = 0;
  for (const int32_t id : cand) total += weight(id);
  std::vector<Span> spans;
  double cum = 0;
  for (const int32_t id : cand) {
    const double before = cum;
    cum += weight(id);
    spans.push_back({id, before / total, cum / total});
  }
  return spans;
}

int32_t reference_draw(std::span<const float> logits, const SamplingParams& params, double uniform) {
  const std::vector<Span> spans = reference_spans(logits, params, params.top_p);
  for (const Span& s : spans)
    if (uniform < s.after) return s.id;
  return spans.back().id;
}

// How far (a share of the probability mass) the uniform or top_p must move for the reference to pick `token`,
// as an f32 running sum's rounding moves them; infinity when top_p moved by up to 1e-3 never keeps it.
double tie_distance(std::span<const float> logits, const SamplingParams& params, double uniform, int32_t token) {
  double best = INFINITY;
  for (const double dp : {0.0, -1e-6, 1e-6, -1e-5, 1e-5, -1e-4, 1e-4, -1e-3, 1e-3}) {
    if (dp != 0 && !(params.top_p < 1)) continue;
    for (const Span& s : reference_spans(logits, params, std::min(params.top_p + dp, 1.0)))
      if (s.id == token) {
        const double du = uniform < s.before ? s.before - uniform : uniform >= s.after ? uniform - s.after : 0.0;
        best = std::min(best, std::max(std::abs(dp), du));
      }
  }
  return best;
}

std::vector<float> random_logits(std::mt19937_64& rng, int32_t vocab, float spread, bool bf16) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<float> logits(vocab);
  for (auto& l : logits) l = normal(rng);
  for (int i = 0; i < 4; ++i) logits[pick(rng)] += 4.0f * spread;
  if (bf16)
    for (auto& l : logits) l = static_cast<float>(mx::bfloat16_t(l));
  return logits;
}

struct Tally {
  int cases = 0, exact = 0, mismatches = 0;
  std::vector<int> ties = std::vector<int>(std::size(kTieDistances), 0);
  double worst_logprob = 0;
};

void fail(Tally& t, const std::string& what) {
  ++t.mismatches;
  if (t.mismatches <= 10) std::printf("MISMATCH %s\n", what.c_str());
}

void check_case(Tally& t, const std::vector<float>& logits, const SamplingParams& params, int64_t position) {
  const double uniform = counter_uniform(params.seed, static_cast<uint64_t>(position));
  const DeviceDraw draw{params.temperature, params.top_p, params.top_k, params.top_logprobs,
                        params.temperature > 0 ? uniform : 0.0};
  const mx::array row(logits.data(), {static_cast<int32_t>(logits.size())}, mx::float32);
  const mx::Stream s = mx::default_stream(mx::default_device());
  const std::vector<studio::DevicePick> picks =
      studio::mlxb::pick_rows(mx::stack({row, row}), std::vector<DeviceDraw>{draw, draw}, s);
  std::vector<float> host_logits = logits;
  const studio::model::Sample host = studio::model::sample_token(host_logits, params, position);
  const std::string what = "vocab " + std::to_string(logits.size()) + " t " + std::to_string(params.temperature) +
                           " top_p " + std::to_string(params.top_p) + " top_k " + std::to_string(params.top_k) +
                           ": host " + std::to_string(host.token) + " device " + std::to_string(picks[0].token);
  ++t.cases;
  if (picks[0].token != picks[1].token) return fail(t, what + " (two rows of the same draw differ)");
  if (picks[0].top.size() != host.top.size()) return fail(t, what + " (top_logprobs count)");
  for (size_t i = 0; i < host.top.size(); ++i) {
    if (picks[0].top[i].first != host.top[i].first) return fail(t, what + " (top_logprobs ids)");
    t.worst_logprob = std::max(t.worst_logprob, std::abs(double(picks[0].top[i].second) - host.top[i].second));
  }
  if (picks[0].token == host.token) {
    ++t.exact;
    t.worst_logprob = std::max(t.worst_logprob, std::abs(double(picks[0].logprob) - host.logprob));
    return;
  }
  if (params.temperature <= 0) return fail(t, what + " (greedy)");
  if (reference_draw(logits, params, uniform) != host.token)
    return fail(t, what + " (the double reference disagrees with the host sampler)");
  const double d = tie_distance(logits, params, uniform, picks[0].token);
  for (size_t i = 0; i < std::size(kTieDistances); ++i)
    if (d <= kTieDistances[i]) {
      if (d > 1e-5) std::printf("tie at %.1e: %s\n", d, what.c_str());
      return void(++t.ties[i]);
    }
  fail(t, what + " (" + std::to_string(d) + " from a boundary)");
}

}  // namespace

// --bench: ms per device pick at 200,064 ids (median of 21, one row), printed, then one JSON line.
int bench() {
  constexpr int32_t kVocab = 200064;
  std::mt19937_64 rng(7);
  std::vector<float> logits(kVocab);
  // Zipf-like in rank (s = 1.1), in random order, as a trained model's next-token distribution falls off.
  for (int32_t r = 0; r < kVocab; ++r) logits[r] = -1.1f * std::log(static_cast<float>(r + 1));
  std::shuffle(logits.begin(), logits.end(), rng);
  const mx::array row(logits.data(), {1, kVocab}, mx::float32);
  mx::eval(row);
  const mx::Stream s = mx::default_stream(mx::default_device());
  auto time = [&](DeviceDraw d) {
    std::vector<double> ms;
    for (int i = 0; i < 21; ++i) {
      d.uniform = counter_uniform(1, static_cast<uint64_t>(i));
      const auto start = std::chrono::steady_clock::now();
      studio::mlxb::pick_rows(row, std::vector<DeviceDraw>{d}, s);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  const double greedy = time({0, 1, 0, 0, 0});
  const double top_p = time({1, 0.95f, 0, 0, 0});
  const double top_k_p = time({1, 0.95f, 40, 0, 0});
  const double all = time({1, 1, 0, 0, 0});
  std::printf("device sampler at %d ids on MLX's %s device, ms per pick (median of 21):\n", kVocab,
              mx::default_device() == mx::Device::gpu ? "gpu" : "cpu");
  std::printf("  greedy %.3f; temperature 1: top_p 0.95 %.3f, top_k 40 + top_p 0.95 %.3f, no cut %.3f\n", greedy,
              top_p, top_k_p, all);
  std::printf(
      "{\"bench\":\"mlx-sampler\",\"vocab\":%d,\"greedy_ms\":%.3f,\"top_p_ms\":%.3f,\"top_k_top_p_ms\":%.3f,"
      "\"no_cut_ms\":%.3f}\n",
      kVocab, greedy, top_p, top_k_p, all);
  return 0;
}

int main(int argc, char** argv) {
  // The GPU where MLX has one (Metal, CUDA): the kernels users run; else its cpu device.
  mx::set_default_device(mx::gpu::is_available() ? mx::Device::gpu : mx::Device::cpu);
  if (argc > 1 && std::string(argv[1]) == "--bench") return bench();
  std::mt19937_64 rng(18);
  Tally t;
  const int32_t vocabs[] = {5, 1000, 200064};
  const float temperatures[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.6f};
  const float top_ps[] = {1.0f, 0.95f, 0.9f, 0.5f, 0.1f};
  const int top_ks[] = {0, 1, 40, 300};
  std::uniform_int_distribution<uint64_t> seeds;
  std::uniform_int_distribution<int64_t> positions(0, 1 << 20);
  for (const int32_t vocab : vocabs) {
    const int rounds = vocab > 100000 ? 1 : 6;
    for (int r = 0; r < rounds; ++r)
      for (const bool bf16 : {false, true}) {
        const std::vector<float> logits = random_logits(rng, vocab, r % 2 ? 3.0f : 1.0f, bf16);
        for (const float temperature : temperatures)
          for (const float top_p : top_ps)
            for (const int top_k : top_ks) {
              if (temperature == 0 && (top_p < 1 || top_k > 0)) continue;
              SamplingParams params;
              params.temperature = temperature;
              params.top_p = top_p;
              params.top_k = top_k;
              params.top_logprobs = (top_k + r) % 3 == 0 ? 5 : 0;
              for (int draw = 0; draw < (vocab > 100000 ? 2 : 6); ++draw) {
                params.seed = seeds(rng);
                check_case(t, logits, params, positions(rng));
              }
            }
      }
  }
  std::printf("mlx_sampler_check: cases=%d exact=%d ties=%d mismatches=%d\n", t.cases, t.exact,
              std::accumulate(t.ties.begin(), t.ties.end(), 0), t.mismatches);
  for (size_t i = 0; i < std::size(kTieDistances); ++i)
    std::printf("  ties within %.0e of a boundary: %d\n", kTieDistances[i], t.ties[i]);
  std::printf("  largest |logprob difference|: %.2e (tolerance %.0e)\n", t.worst_logprob, kLogprobTolerance);
  if (t.worst_logprob > kLogprobTolerance) ++t.mismatches;
  return t.mismatches == 0 ? 0 : 1;
}
