// The int8 path of the cpu kernels, for x86 builds with AVX2 (AVX-512 builds run the same 256-bit code): 4-bit
// weights times inputs quantized to int8 per group (what llama.cpp's Q8 inputs do). It is the engine's fast
// precision mode, chosen per engine (native/README.md, "Precision modes"): against the int16 path each group
// needs half the input bytes and half the multiply instructions, at the cost of coarser inputs
// (max|x_g| / 127 per step instead of / 32767).
//
// A group's packed bytes hold an even element in each low nibble and the next odd one in the high nibble, so
// masking and shifting a 32-byte load gives 32 evens and 32 odds as unsigned bytes (0..15); the inputs come in
// chunks of 64 as [32 evens, 32 odds] int8 (group 32: [16 evens, 16 odds]). vpmaddubsw multiplies unsigned
// weights by signed inputs and adds pairs into int16: at most 2 * 15 * 127 = 3,810 per pair, so even the four
// products of a 128-wide group (15,240) sum without saturating, and vpmaddwd by ones widens them to int32. Every
// integer is exact, so the result depends only on the inputs' rounding, never on the batch or the thread.
#include <algorithm>
#include <cmath>

#include "backend/cpu/kernel_blocks.h"
#include "backend/cpu/simd.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define STUDIO_INT8_DOT 1
#endif

namespace studio::cpu {

namespace {

using namespace blocks;

#if defined(STUDIO_INT8_DOT)

/** Group g of a 4-bit row as unsigned bytes in the inputs' layout: Group / 32 vectors of 32 weights. */
template <int Group>
struct ByteGroup {
  static constexpr int kVectors = Group / 32;
  __m256i w[kVectors];
};

template <int Group>
inline ByteGroup<Group> unpack(const uint8_t* row, int64_t g) {
  ByteGroup<Group> out;
  const __m256i low = _mm256_set1_epi8(15);
  const uint8_t* p = row + g * Group / 2;
  if constexpr (Group == 32) {
    // 16 bytes: evens in the low lane, odds in the high lane.
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
    out.w[0] = _mm256_and_si256(both, low);
  } else {
    for (int c = 0; c < Group / 64; ++c) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + c * 32));
      out.w[2 * c] = _mm256_and_si256(b, low);
      out.w[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
    }
  }
  return out;
}

/** Exact integer dot of an unpacked group with its int8 inputs, as 8 int32 lanes. */
template <int Group>
inline __m256i int_dot(const ByteGroup<Group>& wg, const int8_t* xq) {
  __m256i pairs = _mm256_maddubs_epi16(wg.w[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
  for (int v = 1; v < ByteGroup<Group>::kVectors; ++v)
    pairs = _mm256_add_epi16(
        pairs, _mm256_maddubs_epi16(wg.w[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * v))));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/** The sum of 8 float lanes in a fixed order (the same on AVX2 and AVX-512 builds). */
inline float hsum8(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

/** 8 consecutive float-like elements of dtype D (bf16 and f32 widen in registers; others go one by one). */
template <io::DType D>
inline __m256 lanes8(const uint8_t* p, int64_t i, io::DType runtime) {
  if constexpr (D == io::DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p + 4 * i));
  } else if constexpr (D == io::DType::BF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    alignas(32) float f[8];
    for (int k = 0; k < 8; ++k) f[k] = io::load_float(p, runtime, i + k);
    return _mm256_load_ps(f);
  }
}

/**
 * Row o's per-group factors: scale_g * xscale_{t,g} for each token t, and bias_g; 8 groups per step where the
 * row has them (the same single multiplications either way).
 */
template <io::DType SD, io::DType BD>
inline void row_factors(const MatView& m, int64_t o, int64_t groups, const float* xscale, int64_t tokens,
                        float* scale_x, float* bias) {
  const int64_t base = o * groups;
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 s = lanes8<SD>(m.scales, base + g, m.scale_dtype);
    for (int64_t t = 0; t < tokens; ++t)
      _mm256_storeu_ps(scale_x + t * groups + g, _mm256_mul_ps(s, _mm256_loadu_ps(xscale + t * groups + g)));
    _mm256_storeu_ps(bias + g, lanes8<BD>(m.biases, base + g, m.bias_dtype));
  }
  for (; g < groups; ++g) {
    const float s = element<SD>(m.scales, base + g, m.scale_dtype);
    for (int64_t t = 0; t < tokens; ++t) scale_x[t * groups + g] = s * xscale[t * groups + g];
    bias[g] = element<BD>(m.biases, base + g, m.bias_dtype);
  }
}

/** sum_g bias_g * sums_g: 8 lanes of fused products, then the lanes and the tail in a fixed order. */
inline float bias_dot(const float* bias, const float* sums, int64_t groups) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(bias + g), _mm256_loadu_ps(sums + g), acc);
  float total = hsum8(acc);
  for (; g < groups; ++g) total = std::fma(bias[g], sums[g], total);
  return total;
}

/**
 * Tokens [t_begin, t_end) (at most kSmallBatch) on a 4-bit row range: each row is streamed once and each group
 * unpacked once per block of tokens. Per token: lanes accumulate (scale_g * xscale_g) * float(int dot) over
 * groups, and the row ends with hsum(lanes) + sum_g bias_g * (group g's input sum).
 */
template <int Group, io::DType SD, io::DType BD>
void int8_rows_batch(const MatView& m, const PreparedX& x, int64_t t_begin, int64_t t_end, int64_t row_begin,
                     int64_t row_end, float* y, int64_t y_stride) {
  const int64_t groups = m.in / Group;
  const int64_t tokens = t_end - t_begin;
  thread_local std::vector<float> scale_x, bias_row;
  scale_x.resize(tokens * groups);
  bias_row.resize(groups);
  const float* xscale = x.xscale.data() + t_begin * groups;
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = m.weight + o * m.row_bytes;
    row_factors<SD, BD>(m, o, groups, xscale, tokens, scale_x.data(), bias_row.data());
    for_each_block(tokens, [&](int64_t b0, auto nb) {
      constexpr int NB = decltype(nb)::value;
      const int64_t t0 = t_begin + b0;
      __m256 lanes[NB];
      for (int k = 0; k < NB; ++k) lanes[k] = _mm256_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        // One prefetch per cache line, a kilobyte down the weight stream (as the int16 path).
        if ((g * Group / 2) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(row + g * Group / 2 + 1024), _MM_HINT_T0);
        const ByteGroup<Group> wg = unpack<Group>(row, g);
        for (int k = 0; k < NB; ++k) {
          const int8_t* xq = x.xb.data() + (t0 + k) * m.in + g * Group;
          const __m256 d = _mm256_cvtepi32_ps(int_dot<Group>(wg, xq));
          lanes[k] = _mm256_fmadd_ps(_mm256_set1_ps(scale_x[(b0 + k) * groups + g]), d, lanes[k]);
        }
      }
      for (int k = 0; k < NB; ++k)
        y[(t0 + k) * y_stride + o] = hsum8(lanes[k]) + bias_dot(bias_row.data(), x.sums.data() + (t0 + k) * groups, groups);
    });
  }
}

/** Any number of tokens, as batches of kSmallBatch tokens that each stream the row range once (as int16_rows). */
template <int Group, io::DType SD, io::DType BD>
void int8_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  for (int64_t t0 = 0; t0 < x.rows; t0 += kSmallBatch)
    int8_rows_batch<Group, SD, BD>(m, x, t0, std::min(x.rows, t0 + kSmallBatch), row_begin, row_end, y, y_stride);
}

template <int Group>
QuantRowsFn pick_int8_dtype(const MatView& m) {
  using io::DType;
  if (m.scale_dtype == DType::BF16 && m.bias_dtype == DType::BF16) return int8_rows<Group, DType::BF16, DType::BF16>;
  if (m.scale_dtype == DType::F32 && m.bias_dtype == DType::F32) return int8_rows<Group, DType::F32, DType::F32>;
  return int8_rows<Group, DType::Other, DType::Other>;
}
#endif

}  // namespace

bool has_int8_dot() {
#if defined(STUDIO_INT8_DOT)
  return true;
#else
  return false;
#endif
}

namespace blocks {

QuantRowsFn int8_rows_kernel(const MatView& m) {
#if defined(STUDIO_INT8_DOT)
  if (m.bits != 4) return nullptr;
  if (m.group == 32) return pick_int8_dtype<32>(m);
  if (m.group == 64) return pick_int8_dtype<64>(m);
  if (m.group == 128) return pick_int8_dtype<128>(m);
#endif
  (void)m;
  return nullptr;
}

/**
 * One row's int8 inputs: per group, xscale = max|x_g| / 127 and q = round(x * (127 / max|x_g|)) in [-127, 127],
 * laid out in chunks of 64 (32 for group 32) as [evens, odds] like the packed weights' nibbles.
 */
void quantize_row_int8(const float* src, const MatView& m, int8_t* dst, float* scale) {
  const int64_t groups = m.in / m.group;
  const int chunk = std::min(64, m.group);
  const int half = chunk / 2;
  for (int64_t g = 0; g < groups; ++g) {
    const float* xg = src + g * m.group;
    float max_abs = 0;
    for (int k = 0; k < m.group; ++k) max_abs = std::max(max_abs, std::fabs(xg[k]));
    scale[g] = max_abs / 127.0f;
    const float inv = max_abs > 0 ? 127.0f / max_abs : 0.0f;
    auto q = [&](float v) { return static_cast<int8_t>(std::clamp(std::nearbyint(v * inv), -127.0f, 127.0f)); };
    int8_t* dg = dst + g * m.group;
    for (int c = 0; c < m.group; c += chunk)
      for (int j = 0; j < half; ++j) {
        dg[c + j] = q(xg[c + 2 * j]);
        dg[c + half + j] = q(xg[c + 2 * j + 1]);
      }
  }
}

}  // namespace blocks

}  // namespace studio::cpu
