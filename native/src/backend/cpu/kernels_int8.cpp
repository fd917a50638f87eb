// The int8 path of the cpu kernels: 4-bit weights times inputs quantized to int8 per group (what llama.cpp's Q8
// inputs do), for x86 builds with AVX2 (AVX-512 builds run the same 256-bit code) and aarch64 builds with the
// dot-product extension (ARMv8.2 dotprod: every Apple silicon chip, Graviton 2 and later). It is the engine's fast
// precision mode, chosen per engine (native/README.md, "Precision modes of the cpu backend"): against the int16
// path each group needs half the input bytes and half the multiply instructions, at the cost of coarser inputs
// (max|x_g| / 127 per step instead of / 32767).
//
// A group's packed bytes hold an even element in each low nibble and the next odd one in the high nibble, so
// masking and shifting the bytes gives the evens and the odds as unsigned bytes (0..15); the inputs come in
// chunks of 64 as [32 evens, 32 odds] int8 (group 32: [16 evens, 16 odds]). AVX2: vpmaddubsw multiplies unsigned
// weights by signed inputs and adds pairs into int16 (at most 2 * 15 * 127 = 3,810 per pair, so even the four
// products of a 128-wide group, 15,240, sum without saturating), and vpmaddwd by ones widens them to int32. NEON:
// sdot sums groups of four products straight into int32 (the nibbles fit a signed byte). Every integer is exact,
// so the result depends only on the inputs' rounding, never on the batch or the thread.
#include <algorithm>
#include <cmath>

#include "backend/cpu/kernel_blocks.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define STUDIO_INT8_AVX2 1
#define STUDIO_INT8_DOT 1
#elif defined(__aarch64__) && defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define STUDIO_INT8_SDOT 1
#define STUDIO_INT8_DOT 1
#endif

namespace studio::cpu {

namespace {

using namespace blocks;

#if defined(STUDIO_INT8_AVX2)

// The ISA's operations: a struct of static functions, used like a namespace, so the shared templates of
// kernel_blocks.h can take it as a parameter.
struct isa {

/** Float lanes of the path (the lanes of a group's int32 dot). */
static constexpr int kLanes = 8;
using FVec = __m256;
using IVec = __m256i;
/** Weights per byte vector. */
static constexpr int kBytes = 32;
using BVec = __m256i;

static inline FVec zero_f() { return _mm256_setzero_ps(); }
static inline FVec load_f(const float* p) { return _mm256_loadu_ps(p); }
static inline void store_f(float* p, FVec v) { _mm256_storeu_ps(p, v); }
static inline FVec mul_f(FVec a, FVec b) { return _mm256_mul_ps(a, b); }
static inline FVec fma_f(FVec a, FVec b, FVec acc) { return _mm256_fmadd_ps(a, b, acc); }
static inline FVec scale_add(float s, IVec d, FVec acc) { return _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(d), acc); }
/** The sum of the lanes in a fixed order (the same on AVX2 and AVX-512 builds). */
static inline float hsum(FVec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
/** kLanes bf16 widened exactly (a bf16 is the top half of an f32). */
static inline FVec widen_bf16(const uint8_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline void prefetch(const uint8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

/** Group of `Group` 4-bit weights (packed at p) as bytes in the inputs' layout: Group / kBytes vectors. */
template <int Group>
static inline void unpack(const uint8_t* p, BVec* w) {
  const __m256i low = _mm256_set1_epi8(15);
  if constexpr (Group == 32) {
    // 16 bytes: evens in the low lane, odds in the high lane.
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    w[0] = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1), low);
  } else {
    for (int c = 0; c < Group / 64; ++c) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + c * 32));
      w[2 * c] = _mm256_and_si256(b, low);
      w[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
    }
  }
}

/** Exact integer dot of an unpacked group with its int8 inputs, as kLanes int32 lanes. */
template <int Group>
static inline IVec int_dot(const BVec* w, const int8_t* xq) {
  __m256i pairs = _mm256_maddubs_epi16(w[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
  for (int v = 1; v < Group / kBytes; ++v)
    pairs = _mm256_add_epi16(
        pairs, _mm256_maddubs_epi16(w[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + kBytes * v))));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

};

#elif defined(STUDIO_INT8_SDOT)

// The same operations for NEON with dotprod.
struct isa {

static constexpr int kLanes = 4;
using FVec = float32x4_t;
using IVec = int32x4_t;
static constexpr int kBytes = 16;
using BVec = int8x16_t;

static inline FVec zero_f() { return vdupq_n_f32(0.0f); }
static inline FVec load_f(const float* p) { return vld1q_f32(p); }
static inline void store_f(float* p, FVec v) { vst1q_f32(p, v); }
static inline FVec mul_f(FVec a, FVec b) { return vmulq_f32(a, b); }
static inline FVec fma_f(FVec a, FVec b, FVec acc) { return vfmaq_f32(acc, a, b); }
static inline FVec scale_add(float s, IVec d, FVec acc) { return vfmaq_f32(acc, vdupq_n_f32(s), vcvtq_f32_s32(d)); }
static inline float hsum(FVec a) {
  const float32x2_t s = vadd_f32(vget_low_f32(a), vget_high_f32(a));
  return vget_lane_f32(vpadd_f32(s, s), 0);
}
static inline FVec widen_bf16(const uint8_t* p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p)), 16));
}
static inline void prefetch(const uint8_t* p) { __builtin_prefetch(p); }

/**
 * Group of `Group` 4-bit weights (packed at p) as signed bytes in the inputs' layout: per chunk, the 16-byte
 * loads' low nibbles (evens), then their high nibbles (odds).
 */
template <int Group>
static inline void unpack(const uint8_t* p, BVec* w) {
  const uint8x16_t low = vdupq_n_u8(15);
  constexpr int chunk = Group < 64 ? Group : 64;  // values per [evens, odds] chunk
  constexpr int per_half = chunk / 2 / kBytes;    // vectors per half of a chunk
  for (int c = 0; c < Group / chunk; ++c)
    for (int h = 0; h < per_half; ++h) {
      const uint8x16_t b = vld1q_u8(p + c * chunk / 2 + h * kBytes);
      w[c * 2 * per_half + h] = vreinterpretq_s8_u8(vandq_u8(b, low));
      w[c * 2 * per_half + per_half + h] = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
    }
}

template <int Group>
static inline IVec int_dot(const BVec* w, const int8_t* xq) {
  int32x4_t acc = vdupq_n_s32(0);
  for (int v = 0; v < Group / kBytes; ++v) acc = vdotq_s32(acc, w[v], vld1q_s8(xq + kBytes * v));
  return acc;
}

};

#endif

#if defined(STUDIO_INT8_DOT)

constexpr int kLanes = isa::kLanes;

/** sum_g bias_g * sums_g: kLanes lanes of fused products, then the lanes and the tail in a fixed order. */
inline float bias_dot(const float* bias, const float* sums, int64_t groups) {
  isa::FVec acc = isa::zero_f();
  int64_t g = 0;
  for (; g + kLanes <= groups; g += kLanes) acc = isa::fma_f(isa::load_f(bias + g), isa::load_f(sums + g), acc);
  float total = isa::hsum(acc);
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
    row_factors<isa, SD, BD>(m, o, groups, xscale, tokens, scale_x.data(), bias_row.data());
    for_each_block(tokens, [&](int64_t b0, auto nb) {
      constexpr int NB = decltype(nb)::value;
      const int64_t t0 = t_begin + b0;
      isa::FVec lanes[NB];
      for (int k = 0; k < NB; ++k) lanes[k] = isa::zero_f();
      for (int64_t g = 0; g < groups; ++g) {
        // One prefetch per cache line, a kilobyte down the weight stream (as the int16 path).
        if ((g * Group / 2) % 64 == 0) isa::prefetch(row + g * Group / 2 + 1024);
        isa::BVec w[Group / isa::kBytes];
        isa::unpack<Group>(row + g * Group / 2, w);
        for (int k = 0; k < NB; ++k) {
          const int8_t* xq = x.xb.data() + (t0 + k) * m.in + g * Group;
          lanes[k] = isa::scale_add(scale_x[(b0 + k) * groups + g], isa::int_dot<Group>(w, xq), lanes[k]);
        }
      }
      for (int k = 0; k < NB; ++k) {
        const float bias = bias_dot(bias_row.data(), x.sums.data() + (t0 + k) * groups, groups);
        y[(t0 + k) * y_stride + o] = isa::hsum(lanes[k]) + bias;
      }
    });
  }
}

template <int Group>
QuantRowsFn pick_int8_dtype(const MatView& m) {
  using io::DType;
  if (m.scale_dtype == DType::BF16 && m.bias_dtype == DType::BF16)
    return in_small_batches<int8_rows_batch<Group, DType::BF16, DType::BF16>>;
  if (m.scale_dtype == DType::F32 && m.bias_dtype == DType::F32)
    return in_small_batches<int8_rows_batch<Group, DType::F32, DType::F32>>;
  return in_small_batches<int8_rows_batch<Group, DType::Other, DType::Other>>;
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

}  // namespace blocks

}  // namespace studio::cpu
