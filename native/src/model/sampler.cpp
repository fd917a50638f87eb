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
bool better(const std::span<const float> l, int32_t a, int32_t b) {
  return l[a] > l[b] || (l[a] == l[b] && a < b);
}

struct Scored {
  float logit;
  int32_t id;
};

// The same total order as better(), on (logit, id) pairs kept side by side.
bool before(const Scored& a, const Scored& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); }

std::vector<int32_t> ids_of(const std::vector<Scored>& scored) {
  std::vector<int32_t> ids(scored.size());
  for (size_t i = 0; i < scored.size(); ++i) ids[i] = scored[i].id;
  return ids;
}

// Ids of the k best logits, best first. Small k (top_k, top_logprobs): one pass keeping the k best so far in a
// heap whose front is the worst of them, so nearly every id is turned away by one comparison.
std::vector<int32_t> best_ids(std::span<const float> logits, int32_t k) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  std::vector<Scored> kept;
  if (k > 4096) {
    kept.resize(vocab);
    for (int32_t i = 0; i < vocab; ++i) kept[i] = {logits[i], i};
    std::nth_element(kept.begin(), kept.begin() + (k - 1), kept.end(), before);
    kept.resize(k);
  } else {
    kept.reserve(k);
    for (int32_t i = 0; i < vocab; ++i) {
      const Scored s{logits[i], i};
      if (static_cast<int32_t>(kept.size()) < k) {
        kept.push_back(s);
        std::push_heap(kept.begin(), kept.end(), before);
      } else if (before(s, kept.front())) {
        std::pop_heap(kept.begin(), kept.end(), before);
        kept.back() = s;
        std::push_heap(kept.begin(), kept.end(), before);
      }
    }
  }
  std::sort(kept.begin(), kept.end(), before);
  return ids_of(kept);
}

// The nucleus of top_p: the fewest best tokens whose weights reach top_p of the whole vocabulary's, in id order.
// Sorting all 200,064 ids for it took 23 ms a token. Instead one pass sums the weights into buckets of logit
// value (monotone in the logit, so whole buckets from the top are whole prefixes of the best-first order), the
// bucket where the running sum reaches top_p is the only one sorted, and the token where it crosses, the cut,
// is the nucleus' worst: every token at or before it in the best-first order is in.
constexpr int kBuckets = 4096;

std::vector<int32_t> nucleus_ids(std::span<const float> logits, double top_p, double inv_t, double m) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  const float lo = *std::min_element(logits.begin(), logits.end());
  const double scale = m > lo ? (kBuckets - 1) / (m - lo) : 0.0;
  auto bucket = [&](float l) { return std::clamp(static_cast<int>((l - lo) * scale), 0, kBuckets - 1); };
  auto weight = [&](float l) { return std::exp((l - m) * inv_t); };
  std::vector<double> bucket_mass(kBuckets, 0.0);
  double mass = 0;
  for (const float l : logits) {
    const double w = weight(l);
    mass += w;
    bucket_mass[bucket(l)] += w;
  }
  const double target = top_p * mass;
  Scored cut{logits[0], 0};
  double cum = 0;
  bool found = false;
  for (int b = kBuckets - 1; b >= 0 && !found; --b) {
    if (cum + bucket_mass[b] < target && b > 0) {
      cum += bucket_mass[b];
      continue;
    }
    std::vector<Scored> members;
    for (int32_t i = 0; i < vocab; ++i)
      if (bucket(logits[i]) == b) members.push_back({logits[i], i});
    std::sort(members.begin(), members.end(), before);
    for (const Scored& s : members) {
      cut = s;
      // Summed one by one the weights may fall a rounding short of the bucket's sum: then the next bucket goes on.
      if ((cum += weight(s.logit)) >= target) {
        found = true;
        break;
      }
    }
  }
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < vocab; ++i)
    if (!before(cut, {logits[i], i})) ids.push_back(i);
  return ids;
}

}  // namespace

/**
 * A random token under temperature, top_k and top_p: the candidates (the top_k best first, with the top_p cut on
 * their cumulative weight; or the top_p nucleus in id order; or every token), then one uniform draw keyed by
 * (seed, position) over their weights in that order.
 */
int32_t draw(std::span<float> logits, const SamplingParams& params, int64_t position, int32_t argmax) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  const double inv_t = 1.0 / params.temperature;
  const double m = logits[argmax];
  const bool cut_p = params.top_p > 0 && params.top_p < 1;
  std::vector<int32_t> cand;
  if (params.top_k > 0 && params.top_k < vocab)
    cand = best_ids(logits, params.top_k);
  else if (cut_p)
    cand = nucleus_ids(logits, params.top_p, inv_t, m);
  else {
    cand.resize(vocab);
    std::iota(cand.begin(), cand.end(), 0);
  }
  std::vector<double> p(cand.size());
  double total = 0;
  for (size_t i = 0; i < cand.size(); ++i) total += p[i] = std::exp((logits[cand[i]] - m) * inv_t);
  size_t keep = cand.size();
  // Within the top_k (best first) the top_p cut still applies; the nucleus already is one.
  if (cut_p && params.top_k > 0 && params.top_k < vocab) {
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

std::vector<int32_t> top_p_nucleus(std::span<const float> logits, float top_p, float temperature) {
  int32_t argmax = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(logits.size()); ++i)
    if (better(logits, i, argmax)) argmax = i;
  return nucleus_ids(logits, top_p, 1.0 / temperature, logits[argmax]);
}

double counter_uniform(uint64_t seed, uint64_t counter) {
  const uint64_t bits = mix64(mix64(seed) ^ counter);
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

namespace {

// The ids a mask leaves, in id order (empty when it leaves none: the mask is then ignored).
std::vector<int32_t> unmasked_ids(int32_t vocab, const SamplingParams& params) {
  std::vector<int32_t> ids;
  if (!params.allow.empty()) {
    for (const int32_t id : params.allow)
      if (id >= 0 && id < vocab) ids.push_back(id);
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    std::erase_if(ids, [&](int32_t id) { return std::find(params.ban.begin(), params.ban.end(), id) != params.ban.end(); });
  } else {
    std::vector<char> banned(vocab, 0);
    for (const int32_t id : params.ban)
      if (id >= 0 && id < vocab) banned[id] = 1;
    ids.reserve(vocab);
    for (int32_t i = 0; i < vocab; ++i)
      if (!banned[i]) ids.push_back(i);
  }
  return ids;
}

}  // namespace

Sample sample_token(std::span<float> logits, const SamplingParams& params, int64_t position) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  for (const auto& [token, bias] : params.logit_bias)
    if (token >= 0 && token < vocab) logits[token] += bias;

  if (!params.allow.empty() || !params.ban.empty()) {
    // Sample over the ids the mask leaves, gathered in id order, then map the picks back to vocabulary ids.
    const std::vector<int32_t> ids = unmasked_ids(vocab, params);
    if (!ids.empty() && static_cast<int32_t>(ids.size()) < vocab) {
      std::vector<float> kept(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) kept[i] = logits[ids[i]];
      SamplingParams inner = params;
      inner.logit_bias.clear();
      inner.allow.clear();
      inner.ban.clear();
      Sample out = sample_token(kept, inner, position);
      out.token = ids[out.token];
      for (auto& [id, lp] : out.top) id = ids[id];
      return out;
    }
  }

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
  if (params.temperature > 0) out.token = draw(logits, params, position, argmax);
  out.logprob = logprob(out.token);
  if (params.top_logprobs > 0)
    for (const int32_t id : best_ids(logits, std::min(params.top_logprobs, vocab))) out.top.emplace_back(id, logprob(id));
  return out;
}

}  // namespace studio::model
