// Standalone check of the cpu attention (backend/cpu/attention.cpp) without node, like kernels_check: any SIMD
// path a build compiles can be checked on any host (an aarch64 build under qemu-aarch64 too). It checks:
//   - causal grouped-query attention against a double-precision softmax, within a float bound;
//   - determinism: each query row's bits do not depend on how a prompt is cut into calls (whole, 1-token
//     steps, uneven chunks that cross the row and position blocks), on the thread count, or on other sequences
//     sharing the call;
//   - every block of the cache starts on a 64-byte line;
//   - all of that again with the cache in f16 (the reference then reads the keys and values as f16 rounds them),
//     and the vector f16 conversion against the scalar one over a sweep of float bit patterns.
// Prints one line per failure, then "attention_check: <simd> cases=N failures=F worst=R digest=H f16_digest=H".
// With `--bench CONTEXT ROWS THREADS [HEADS KV_HEADS HEAD_DIM [f16]]` it instead times one chunk of ROWS query rows
// whose last row sits at position CONTEXT - 1 (the last chunk of a CONTEXT-token prompt), and one decode row at
// CONTEXT, and prints the Gflop/s of each (2 * dim flops per score and per weighted value).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/cpu_kv_cache.h"
#include "backend/cpu/half.h"
#include "backend/cpu/simd.h"
#include "backend/cpu/thread_pool.h"

namespace {

using studio::AttentionSegment;
using studio::AttentionShape;
using studio::cpu::CpuKvCache;
using studio::cpu::KvElement;
using studio::cpu::ThreadPool;

constexpr const char* kSimd = studio::cpu::simd::kName;

/** Deterministic generator (the same numbers on every platform). */
class Lcg {
 public:
  explicit Lcg(uint64_t seed) : state_(seed * 6364136223846793005ULL + 1442695040888963407ULL) {}
  float uniform() {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>((state_ >> 33) % 2000001) / 1000000.0f - 1.0f;
  }

 private:
  uint64_t state_;
};

/** One sequence's prompt: q, k, v rows of the shape, and a cache holding every position's k and v. */
struct Prompt {
  AttentionShape shape;
  int64_t length = 0;
  std::vector<float> q, k, v;  // length x (heads | kv_heads) * dim
  CpuKvCache cache;

  Prompt(const AttentionShape& s, int64_t n, uint64_t seed, float spread, KvElement element = KvElement::F32)
      : shape(s), length(n), cache(1, s.kv_heads * s.head_dim, element) {
    Lcg rng(seed);
    const int64_t qw = int64_t{s.heads} * s.head_dim, kw = int64_t{s.kv_heads} * s.head_dim;
    q.resize(n * qw);
    k.resize(n * kw);
    v.resize(n * kw);
    // spread scales the keys so that scores span a few units (peaked softmaxes, as trained models give).
    for (float& x : q) x = rng.uniform();
    for (float& x : k) x = spread * rng.uniform();
    for (float& x : v) x = rng.uniform();
    cache.reserve(n);
    for (int64_t p = 0; p < n; ++p)
      for (int h = 0; h < s.kv_heads; ++h) {
        cache.store(0, p, h, s.head_dim, k.data() + p * kw + int64_t{h} * s.head_dim,
                    v.data() + p * kw + int64_t{h} * s.head_dim);
      }
    cache.commit(n);
    // The reference reads what the cache holds.
    if (element == KvElement::F16)
      for (std::vector<float>* kv : {&k, &v})
        for (float& x : *kv) x = studio::cpu::half::to_float(studio::cpu::half::from_float(x));
  }
  int64_t q_width() const { return int64_t{shape.heads} * shape.head_dim; }
};

/** Attention output of rows [first, first + rows) of the prompt, computed in one call. */
std::vector<float> run_rows(ThreadPool& pool, Prompt& p, int64_t first, int64_t rows) {
  std::vector<float> out(rows * p.q_width());
  const AttentionSegment seg{&p.cache, 0, rows, first};
  studio::cpu::grouped_attention(pool, p.q.data() + first * p.q_width(), rows, 0, {&seg, 1}, p.shape, out.data());
  return out;
}

struct Report {
  int cases = 0;
  int failures = 0;
  double worst = 0;
  uint64_t digest = 1469598103934665603ULL;      // outputs over an f32 cache
  uint64_t f16_digest = 1469598103934665603ULL;  // outputs over an f16 cache

  void fail(const std::string& what) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
  void hash(const std::vector<float>& v, KvElement element) {
    uint64_t& h = element == KvElement::F16 ? f16_digest : digest;
    for (float f : v) {
      uint32_t b;
      std::memcpy(&b, &f, 4);
      for (int i = 0; i < 4; ++i) h = (h ^ ((b >> (8 * i)) & 0xFF)) * 1099511628211ULL;
    }
  }
};

/** Row r's output in double precision. */
std::vector<double> reference_row(const Prompt& p, int64_t r) {
  const AttentionShape& s = p.shape;
  const int dim = s.head_dim, group = s.heads / s.kv_heads;
  const int64_t kw = int64_t{s.kv_heads} * dim;
  std::vector<double> out(p.q_width()), score(r + 1);
  for (int h = 0; h < s.heads; ++h) {
    const int kv = h / group;
    const float* q = p.q.data() + r * p.q_width() + int64_t{h} * dim;
    double top = -INFINITY;
    for (int64_t j = 0; j <= r; ++j) {
      double d = 0;
      for (int i = 0; i < dim; ++i) d += double{q[i]} * p.k[j * kw + int64_t{kv} * dim + i];
      score[j] = d * s.scale;
      top = std::max(top, score[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j <= r; ++j) sum += score[j] = std::exp(score[j] - top);
    for (int i = 0; i < dim; ++i) {
      double a = 0;
      for (int64_t j = 0; j <= r; ++j) a += score[j] * p.v[j * kw + int64_t{kv} * dim + i];
      out[int64_t{h} * dim + i] = a / sum;
    }
  }
  return out;
}

void check_accuracy(ThreadPool& pool, Prompt& p, const std::string& name, Report& r) {
  const std::vector<float> whole = run_rows(pool, p, 0, p.length);
  r.hash(whole, p.cache.element());
  // Values lie in [-1, 1): an output is a convex combination of them, so its error is bounded absolutely.
  const double bound = 2e-5 * std::sqrt(static_cast<double>(p.shape.head_dim));
  for (int64_t row = 0; row < p.length; ++row) {
    ++r.cases;
    const std::vector<double> ref = reference_row(p, row);
    double err = 0;
    for (int64_t i = 0; i < p.q_width(); ++i) err = std::max(err, std::fabs(whole[row * p.q_width() + i] - ref[i]));
    r.worst = std::max(r.worst, err / bound);
    if (err > bound) r.fail(name + " row " + std::to_string(row) + ": error " + std::to_string(err));
  }
}

void check_determinism(ThreadPool& pool, ThreadPool& single, Prompt& p, const std::string& name, Report& r) {
  const KvElement element = p.cache.element();
  const std::vector<float> whole = run_rows(pool, p, 0, p.length);
  const int64_t w = p.q_width();
  auto same = [&](const std::vector<float>& got, int64_t first, const std::string& how) {
    ++r.cases;
    if (std::memcmp(got.data(), whole.data() + first * w, got.size() * sizeof(float)) != 0)
      r.fail(name + " " + how + " at row " + std::to_string(first) + " differs from the whole prompt");
  };
  // Uneven chunks: across the 16-row and 64-position blocks, single rows, the last row alone.
  const int64_t cuts[] = {0, 1, 7, 40, 41, 70, 129, p.length - 1, p.length};
  for (size_t c = 0; c + 1 < std::size(cuts); ++c) {
    if (cuts[c] >= cuts[c + 1] || cuts[c + 1] > p.length) continue;
    same(run_rows(pool, p, cuts[c], cuts[c + 1] - cuts[c]), cuts[c], "chunk");
    same(run_rows(single, p, cuts[c], cuts[c + 1] - cuts[c]), cuts[c], "chunk on one thread");
  }
  for (int64_t row = 0; row < p.length; row += 13) same(run_rows(pool, p, row, 1), row, "decode step");
  // Two sequences in one call: the second's rows give the same bits as alone.
  Prompt other(p.shape, 21, 99, 3.0f, element);
  std::vector<float> q(static_cast<size_t>((21 + 5) * w)), out(q.size());
  std::memcpy(q.data(), other.q.data(), 21 * w * sizeof(float));
  std::memcpy(q.data() + 21 * w, p.q.data() + 60 * w, 5 * w * sizeof(float));
  const AttentionSegment segs[] = {{&other.cache, 0, 21, 0}, {&p.cache, 21, 5, 60}};
  studio::cpu::grouped_attention(pool, q.data(), 26, 0, segs, p.shape, out.data());
  same(std::vector<float>(out.begin() + 21 * w, out.end()), 60, "batch of two sequences");
}

/**
 * Every cached block's keys and values start on a 64-byte line: a block from a plain new[] sat 16 bytes past
 * one, and attention's vector loads then straddled two lines (bench/RESULTS.md).
 */
void check_alignment(const Prompt& p, const std::string& name, Report& r) {
  const int dim = p.shape.head_dim;
  for (int64_t pos = 0; pos < p.length; pos += CpuKvCache::kBlock)
    for (int h = 0; h < p.shape.kv_heads; ++h) {
      ++r.cases;
      const auto keys = reinterpret_cast<uintptr_t>(p.cache.key_block(0, pos, h, dim));
      const auto values = reinterpret_cast<uintptr_t>(p.cache.value_at(0, pos, h, dim));
      if (keys % 64 != 0 || values % 64 != 0)
        r.fail(name + " block at " + std::to_string(pos) + ", kv head " + std::to_string(h) + ": keys at " +
               std::to_string(keys % 64) + ", values at " + std::to_string(values % 64) + " bytes past a line");
    }
}

/**
 * The f16 conversion's vector path (F16C, NEON) against the scalar one, bit for bit: a sweep of float bit
 * patterns (normals, subnormals, values that round to f16 subnormals, past the f16 range, NaN) and the edges.
 */
void check_half_conversion(Report& r) {
  namespace half = studio::cpu::half;
  std::vector<float> in;
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 4093) {
    const auto b = static_cast<uint32_t>(bits);
    float f;
    std::memcpy(&f, &b, sizeof f);
    in.push_back(f);
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e30f, -1e30f, 6.1035156e-05f, 5.9604645e-08f,
                  2.9802322e-08f, 2.9802326e-08f, INFINITY, -INFINITY, NAN})
    in.push_back(f);
  std::vector<uint16_t> stored(in.size());
  half::store(in.data(), stored.data(), in.size());
  std::vector<float> back(in.size());
  half::load(stored.data(), back.data(), in.size());
  int wrong = 0;
  ++r.cases;  // one case: the sweep
  for (size_t i = 0; i < in.size(); ++i) {
    const float want = half::to_float(half::from_float(in[i]));
    const bool nan = std::isnan(in[i]);
    // NaN stays NaN (its payload is not promised); anything else must match bit for bit, never past 65504.
    const bool ok = nan ? std::isnan(back[i])
                        : stored[i] == half::from_float(in[i]) && std::memcmp(&back[i], &want, sizeof want) == 0 &&
                              std::fabs(back[i]) <= half::kMax;
    if (!ok && ++wrong <= 5) r.fail("f16 conversion of " + std::to_string(in[i]));
  }
  if (wrong > 5) r.fail("f16 conversion: " + std::to_string(wrong) + " values in all");
}

int bench(int argc, char** argv) {
  const int64_t context = std::atoll(argv[2]), rows = std::atoll(argv[3]);
  const int threads = std::atoi(argv[4]);
  AttentionShape s{32, 4, 128, 0};
  if (argc >= 8) s = {std::atoi(argv[5]), std::atoi(argv[6]), std::atoi(argv[7]), 0};
  s.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  ThreadPool pool(threads);
  const bool f16 = argc >= 9 && std::string(argv[8]) == "f16";
  Prompt p(s, context + 1, 7, 3.0f, f16 ? KvElement::F16 : KvElement::F32);
  auto time = [&](int64_t first, int64_t n, int repeats) {
    double best = 1e30;
    for (int i = 0; i < repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run_rows(pool, p, first, n);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  auto flops = [&](int64_t first, int64_t n) {
    double f = 0;
    for (int64_t r = first; r < first + n; ++r) f += 4.0 * (r + 1) * s.heads * s.head_dim;
    return f;
  };
  const double chunk = time(context - rows, rows, 3), step = time(context, 1, 10);
  std::printf("attention %s kv %s heads %d/%d dim %d, %d threads: chunk of %lld rows ending at %lld: %.2f ms "
              "(%.1f Gflop/s); "
              "decode at %lld: %.3f ms (%.1f Gflop/s)\n",
              kSimd, f16 ? "f16" : "f32", s.heads, s.kv_heads, s.head_dim, threads, static_cast<long long>(rows),
              static_cast<long long>(context), chunk * 1e3, flops(context - rows, rows) / chunk / 1e9,
              static_cast<long long>(context), step * 1e3, flops(context, 1) / step / 1e9);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && std::string(argv[1]) == "--bench") return bench(argc, argv);
  Report r;
  ThreadPool pool(3), single(1);
  struct Case {
    AttentionShape shape;
    int64_t length;
  };
  // 48/8 x 128 (MiniMax-M2), 32/4 x 128 (bench), 4/2 x 64 (tiny), and a head_dim that is no multiple of the lanes.
  const Case cases[] = {{{48, 8, 128, 0}, 150}, {{32, 4, 128, 0}, 200}, {{4, 2, 64, 0}, 140}, {{6, 3, 40, 0}, 90}};
  for (const KvElement element : {KvElement::F32, KvElement::F16})
    for (Case c : cases) {
      c.shape.scale = 1.0f / std::sqrt(static_cast<float>(c.shape.head_dim));
      const std::string name = std::to_string(c.shape.heads) + "/" + std::to_string(c.shape.kv_heads) + "x" +
                               std::to_string(c.shape.head_dim) + (element == KvElement::F16 ? " f16" : "");
      Prompt p(c.shape, c.length, static_cast<uint64_t>(c.shape.heads * 100 + c.shape.head_dim), 3.0f, element);
      check_accuracy(pool, p, name, r);
      check_determinism(pool, single, p, name, r);
      check_alignment(p, name, r);
    }
  check_half_conversion(r);
  std::printf("attention_check: %s cases=%d failures=%d worst=%.3f digest=%016llx f16_digest=%016llx\n", kSimd,
              r.cases, r.failures, r.worst, static_cast<unsigned long long>(r.digest),
              static_cast<unsigned long long>(r.f16_digest));
  return r.failures == 0 ? 0 : 1;
}
