// Standalone numerical check of the cpu kernels (backend/cpu/kernels.cpp) without node, so the SIMD path a
// build compiles (AVX-512 / AVX2 / NEON / portable) can be checked on any host, e.g. an aarch64 build under
// qemu-aarch64 on an x86 machine. For every weight format (packed 2/3/4/5/6/8 bits x group 32/64/128 x
// bf16/f16/f32 scales and biases, and plain f32/f16/bf16), with the build's default inputs, f32 inputs (4 and 8
// bits) and the int8 precision mode (4 bits), it checks:
//   - matmul_rows against a double-precision formula sum_k (s_g * q_k + b_g) * x_k, within a float bound;
//   - determinism: each row's bits do not depend on how many rows share the call (1, 2, 3, 5, 8, 9 or 21: the
//     small-batch blocks of 1-4 tokens and the tiled path) nor on how the output rows are split between calls (threads);
//   - dequant_row (embedding gather) against the formula.
// Prints one line per failure, then "kernels_check: <simd> int16=I int8=J cases=N failures=F worst=R digest=H
// int8_digest=H8" (worst: the largest error as a fraction of its bound; digest: FNV-1a of every output's bits but
// the int8 mode's, equal between builds that run the same arithmetic; int8_digest: the int8 mode's outputs, which
// only builds with the int8 kernels compute). Exit code 0 only when everything holds.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace {

using studio::cpu::Inputs;
using studio::cpu::MatView;
using studio::cpu::PreparedX;
using studio::io::DType;

constexpr const char* kSimd = studio::cpu::simd::kName;

constexpr int64_t kOut = 9;     // output rows: not a multiple of any split, so row ranges are uneven
constexpr int64_t kIn = 384;    // a multiple of every group size; 384 * bits / 8 bytes per row for every width
constexpr int64_t kBatch = 21;  // > the kernels' 16-token tile, and not a multiple of their 4-token block

/** Deterministic generator (the same numbers on every platform and standard library). */
class Lcg {
 public:
  explicit Lcg(uint64_t seed) : state_(seed * 6364136223846793005ULL + 1442695040888963407ULL) {}
  uint32_t next() {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state_ >> 33);
  }
  /** Uniform in [-1, 1). */
  float uniform() { return static_cast<float>(next() % 2000001) / 1000000.0f - 1.0f; }

 private:
  uint64_t state_;
};

/** A 16-bit float pattern (f16 or bf16) of a normal number with magnitude in [2^-9, 2^-3) and random sign. */
uint16_t random_half(Lcg& rng, DType d) {
  const uint32_t sign = rng.next() & 1, mant = rng.next();
  const int exp = -9 + static_cast<int>(rng.next() % 6);
  if (d == DType::F16) return static_cast<uint16_t>(sign << 15 | (exp + 15) << 10 | (mant & 0x3FF));
  return static_cast<uint16_t>(sign << 15 | (exp + 127) << 7 | (mant & 0x7F));
}

/** Decodes the patterns random_half makes (normal numbers only), independently of io::load_float. */
double half_value(uint16_t h, DType d) {
  const double sign = (h >> 15) ? -1.0 : 1.0;
  if (d == DType::F16) return sign * std::ldexp(1.0 + (h & 0x3FF) / 1024.0, ((h >> 10) & 0x1F) - 15);
  return sign * std::ldexp(1.0 + (h & 0x7F) / 128.0, ((h >> 7) & 0xFF) - 127);
}

/** A float-like array of one dtype: its bytes as the kernels read them, and each value as a double. */
struct Floats {
  std::vector<uint8_t> bytes;
  std::vector<double> values;
};

Floats random_floats(Lcg& rng, DType d, size_t n, float f32_scale) {
  Floats f;
  f.bytes.resize(n * (d == DType::F32 ? 4 : 2));
  for (size_t i = 0; i < n; ++i) {
    if (d == DType::F32) {
      const float v = rng.uniform() * f32_scale;
      std::memcpy(f.bytes.data() + 4 * i, &v, 4);
      f.values.push_back(v);
    } else {
      const uint16_t h = random_half(rng, d);
      std::memcpy(f.bytes.data() + 2 * i, &h, 2);
      f.values.push_back(half_value(h, d));
    }
  }
  return f;
}

/** One weight matrix: the packed or plain bytes plus the dense double values the formula uses. */
struct Matrix {
  MatView view;
  std::vector<uint8_t> weight;
  Floats scales, biases;
  std::vector<double> dense;  // kOut x kIn: s * q + b, or the plain value
  std::vector<double> abs_terms;  // kOut x kIn: |s * q| + |b| (for the error bound)
};

/** Packs q values LSB-first into a bit stream, the MLX affine layout (io/quant_format.h). */
void pack(std::vector<uint8_t>& row, int bits, int64_t k, uint32_t q) {
  for (int b = 0; b < bits; ++b) {
    const uint64_t bit = static_cast<uint64_t>(k) * bits + b;
    if ((q >> b) & 1) row[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
  }
}

Matrix quantized_matrix(Lcg& rng, int bits, int group, DType scale_dtype, DType bias_dtype) {
  Matrix m;
  const int64_t groups = kIn / group;
  const size_t row_bytes = static_cast<size_t>(kIn) * bits / 8;
  m.scales = random_floats(rng, scale_dtype, kOut * groups, 0.05f);
  m.biases = random_floats(rng, bias_dtype, kOut * groups, 0.1f);
  m.weight.assign(kOut * row_bytes, 0);
  for (int64_t o = 0; o < kOut; ++o) {
    std::vector<uint8_t> row(row_bytes, 0);
    for (int64_t k = 0; k < kIn; ++k) {
      const uint32_t q = rng.next() & ((1u << bits) - 1);
      pack(row, bits, k, q);
      const double s = m.scales.values[o * groups + k / group], b = m.biases.values[o * groups + k / group];
      m.dense.push_back(s * q + b);
      m.abs_terms.push_back(std::fabs(s * q) + std::fabs(b));
    }
    std::memcpy(m.weight.data() + o * row_bytes, row.data(), row_bytes);
  }
  m.view = MatView{m.weight.data(), row_bytes, DType::U32, m.scales.bytes.data(), m.biases.bytes.data(),
                   scale_dtype, bias_dtype, bits, group, kOut, kIn};
  return m;
}

Matrix plain_matrix(Lcg& rng, DType dtype, int64_t in) {
  Matrix m;
  const Floats w = random_floats(rng, dtype, kOut * in, 0.1f);
  m.weight = w.bytes;
  m.dense = w.values;
  for (double v : w.values) m.abs_terms.push_back(std::fabs(v));
  m.view = MatView{m.weight.data(), static_cast<size_t>(in) * (dtype == DType::F32 ? 4 : 2), dtype, nullptr,
                   nullptr, DType::F32, DType::F32, 0, 0, kOut, in};
  return m;
}

/** kBatch input rows of `in` values; row t has magnitude 10^(t%3 - 1), and row 2's first 32 inputs are 0. */
std::vector<std::vector<float>> random_inputs(Lcg& rng, int64_t in) {
  std::vector<std::vector<float>> rows(kBatch, std::vector<float>(in));
  for (int64_t t = 0; t < kBatch; ++t)
    for (int64_t k = 0; k < in; ++k) rows[t][k] = rng.uniform() * std::pow(10.0f, static_cast<float>(t % 3 - 1));
  for (int64_t k = 0; k < std::min<int64_t>(32, in); ++k) rows[2][k] = 0;
  return rows;
}

/** y (rows x kOut) of the kernels for the given input rows, output rows computed in calls of `split` rows. */
std::vector<float> run_kernel(const MatView& m, std::span<const float* const> rows, Inputs inputs, int64_t split) {
  studio::cpu::Arena arena;
  PreparedX px;
  studio::cpu::prepare_x(m, rows, px, arena, inputs);
  std::vector<float> y(rows.size() * kOut, NAN);
  for (int64_t r0 = 0; r0 < kOut; r0 += split)
    studio::cpu::matmul_rows(m, px, r0, std::min(kOut, r0 + split), y.data(), kOut);
  return y;
}

struct Report {
  int cases = 0;
  int failures = 0;
  double worst = 0;  // largest |error| / bound
  uint64_t digest = 1469598103934665603ULL;
  uint64_t int8_digest = 1469598103934665603ULL;
  bool int8_cases = false;  // hash() feeds int8_digest while set

  void fail(const std::string& what) {
    ++failures;
    std::printf("FAIL %s\n", what.c_str());
  }
  void hash(std::span<const float> values) {
    for (float v : values) {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      uint64_t& d = int8_cases ? int8_digest : digest;
      for (int i = 0; i < 4; ++i) d = (d ^ ((bits >> (8 * i)) & 0xFF)) * 1099511628211ULL;
    }
  }
};

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

/**
 * Error bound of one output. Float path: a few ulps of the sum of absolute terms (covers the order of the
 * lane sums and the bias * sum(x_g) split). int16 path (4/8 bits on x86 hosts with AVX2 or AVX-512): plus the rounding of
 * each input to max|x_g| / 32767 steps, weighted by |s * q|. The int8 path is checked on its rounded inputs (below).
 */
double error_bound(const Matrix& m, const std::vector<float>& x, int64_t o, double levels) {
  double terms = 0, rounding = 0;
  const int64_t in = m.view.in;
  for (int64_t k = 0; k < in; ++k) terms += m.abs_terms[o * in + k] * std::fabs(x[k]);
  if (levels > 0) {
    for (int64_t g = 0; g < in / m.view.group; ++g) {
      double max_abs = 0, weight = 0;
      for (int64_t k = g * m.view.group; k < (g + 1) * m.view.group; ++k) {
        max_abs = std::max(max_abs, static_cast<double>(std::fabs(x[k])));
        weight += m.abs_terms[o * in + k];
      }
      rounding += weight * max_abs / levels * 0.5;
    }
  }
  return 1e-5 * terms + 1.01 * rounding + 1e-30;
}

/**
 * The int8 path's inputs as the mode specifies them, computed here in the same f32 operations: per group,
 * q = round-to-even(x * (127 / max|x_g|)), x' = q * (max|x_g| / 127). The kernel must compute the formula on x'
 * exactly but for float rounding (its bias term takes the rounded inputs' sum too).
 */
std::vector<float> int8_rounded(const std::vector<float>& x, int group) {
  std::vector<float> out(x.size());
  for (size_t g = 0; g < x.size(); g += group) {
    float max_abs = 0;
    for (int k = 0; k < group; ++k) max_abs = std::max(max_abs, std::fabs(x[g + k]));
    const float step = max_abs / 127.0f, inv = max_abs > 0 ? 127.0f / max_abs : 0.0f;
    for (int k = 0; k < group; ++k) out[g + k] = static_cast<float>(std::nearbyint(x[g + k] * inv) * static_cast<double>(step));
  }
  return out;
}

void check_against_formula(const Matrix& m, const std::vector<std::vector<float>>& given,
                           const std::vector<float>& y, double levels, const std::string& name, Report& r) {
  // int8: the formula on the rounded inputs, with no rounding allowance.
  std::vector<std::vector<float>> x = given;
  if (levels == 127.0) {
    for (auto& row : x) row = int8_rounded(row, m.view.group);
    levels = 0;
  }
  for (size_t t = 0; t < x.size(); ++t)
    for (int64_t o = 0; o < kOut; ++o) {
      double want = 0;
      for (int64_t k = 0; k < m.view.in; ++k) want += m.dense[o * m.view.in + k] * x[t][k];
      const double err = std::fabs(y[t * kOut + o] - want), bound = error_bound(m, x[t], o, levels);
      r.worst = std::max(r.worst, err / bound);
      if (!(err <= bound)) {
        r.fail(name + " row " + std::to_string(t) + " out " + std::to_string(o) + ": got " +
               std::to_string(y[t * kOut + o]) + ", want " + std::to_string(want) + " (bound " +
               std::to_string(bound) + ")");
        return;
      }
    }
}

/** Row t's bits from a batch equal its bits computed in a smaller call (`first` is that call's first row). */
void check_same_bits(const std::vector<float>& batch, const std::vector<float>& part, size_t first,
                     const std::string& name, Report& r) {
  for (size_t i = 0; i < part.size(); ++i)
    if (!same_bits(batch[first * kOut + i], part[i])) {
      r.fail(name + ": row " + std::to_string(first + i / kOut) + " out " + std::to_string(i % kOut) +
             " differs from the " + std::to_string(kBatch) + "-row call");
      return;
    }
}

/** matmul_rows on the whole batch, each row alone, the first 5 rows together, and rows split 1 / 4 at a time. */
void check_matmul(const Matrix& m, const std::vector<std::vector<float>>& x, Inputs inputs, const std::string& name,
                  Report& r) {
  ++r.cases;
  std::vector<const float*> rows;
  for (const auto& row : x) rows.push_back(row.data());
  studio::cpu::Arena arena;
  PreparedX probe;
  studio::cpu::prepare_x(m.view, std::span(rows).first(1), probe, arena, inputs);
  const std::vector<float> batch = run_kernel(m.view, rows, inputs, kOut);
  r.int8_cases = inputs == Inputs::Int8;
  r.hash(batch);
  r.int8_cases = false;
  check_against_formula(m, x, batch, probe.int8 ? 127.0 : probe.int16 ? 32767.0 : 0.0, name, r);
  for (size_t t = 0; t < rows.size(); ++t)
    check_same_bits(batch, run_kernel(m.view, std::span(rows).subspan(t, 1), inputs, kOut), t, name + " alone", r);
  for (size_t n : {2, 3, 5, 8, 9})
    check_same_bits(batch, run_kernel(m.view, std::span(rows).first(n), inputs, kOut), 0,
                    name + " " + std::to_string(n) + " rows", r);
  check_same_bits(batch, run_kernel(m.view, rows, inputs, 1), 0, name + " split 1", r);
  check_same_bits(batch, run_kernel(m.view, rows, inputs, 4), 0, name + " split 4", r);
}

void check_dequant(const Matrix& m, const std::string& name, Report& r) {
  std::vector<float> out(m.view.in);
  for (int64_t o = 0; o < kOut; ++o) {
    studio::cpu::dequant_row(m.view, o, out.data());
    r.hash(out);
    for (int64_t k = 0; k < m.view.in; ++k) {
      const double want = m.dense[o * m.view.in + k];
      // s * q and + b each round once in f32.
      if (!(std::fabs(out[k] - want) <= 2.4e-7 * m.abs_terms[o * m.view.in + k])) {
        r.fail(name + " dequant_row " + std::to_string(o) + "[" + std::to_string(k) + "]: got " +
               std::to_string(out[k]) + ", want " + std::to_string(want));
        return;
      }
    }
  }
}

const char* dtype_text(DType d) { return d == DType::F32 ? "f32" : d == DType::F16 ? "f16" : "bf16"; }

void check_quantized(Report& r) {
  const std::vector<std::pair<DType, DType>> dtypes = {
      {DType::BF16, DType::BF16}, {DType::F16, DType::F16}, {DType::F32, DType::F32}, {DType::F16, DType::BF16}};
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int group : {32, 64, 128})
      for (const auto& [sd, bd] : dtypes) {
        Lcg rng(static_cast<uint64_t>(bits * 1000 + group * 10 + static_cast<int>(sd) * 3 + static_cast<int>(bd)));
        const Matrix m = quantized_matrix(rng, bits, group, sd, bd);
        const auto x = random_inputs(rng, kIn);
        const std::string name = std::to_string(bits) + "-bit g" + std::to_string(group) + " scales " +
                                 dtype_text(sd) + " biases " + dtype_text(bd);
        check_matmul(m, x, Inputs::Default, name, r);
        if (bits == 4 || bits == 8) check_matmul(m, x, Inputs::F32, name + " exact", r);
        // Builds without the int8 path run the default path here (so the case count is the same everywhere).
        if (bits == 4) check_matmul(m, x, Inputs::Int8, name + " int8", r);
        check_dequant(m, name, r);
      }
}

void check_plain(Report& r) {
  // 100 inputs: not a multiple of the dot loop's step, so the scalar tail runs too.
  for (DType d : {DType::F32, DType::F16, DType::BF16})
    for (int64_t in : {kIn, int64_t{100}}) {
      Lcg rng(static_cast<uint64_t>(in * 7 + static_cast<int>(d)));
      const Matrix m = plain_matrix(rng, d, in);
      const auto x = random_inputs(rng, in);
      check_matmul(m, x, Inputs::Default, std::string("plain ") + dtype_text(d) + " in " + std::to_string(in), r);
    }
}

}  // namespace

int main() {
  Report r;
  check_quantized(r);
  check_plain(r);
  std::printf("kernels_check: %s int16=%d int8=%d cases=%d failures=%d worst=%.3f digest=%016llx int8_digest=%016llx\n",
              kSimd, studio::cpu::has_int16_dot() ? 1 : 0, studio::cpu::has_int8_dot() ? 1 : 0, r.cases, r.failures,
              r.worst, static_cast<unsigned long long>(r.digest), static_cast<unsigned long long>(r.int8_digest));
  return r.failures == 0 ? 0 : 1;
}
