// Float vectors for the cpu kernels: AVX-512 (16 lanes), AVX2+FMA (8), NEON (8, as two float32x4), or a
// portable scalar fallback (8). Every kernel is written once against these; the lane layout, and so the
// summation order, is fixed for a given build, which is what makes results independent of batch size and
// thread count. kLanes is the vector width; packed 4-bit blocks cover 2 * kLanes elements.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#define STUDIO_SIMD_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define STUDIO_SIMD_AVX2 1
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define STUDIO_SIMD_NEON 1
#endif

namespace studio::cpu::simd {

#if defined(STUDIO_SIMD_AVX512)

/** The path's name, as the addon's cpuInfo() and the kernel checks report it. */
constexpr const char* kName = "avx512";
constexpr int kLanes = 16;
struct V {
  __m512 v;
};
inline V zero() { return {_mm512_setzero_ps()}; }
inline V load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline V add(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V set1(float f) { return {_mm512_set1_ps(f)}; }
inline float hsum(V a) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline V max(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V round(V a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
/** 2^n for integral n in [-126, 127] given as floats. */
inline V pow2i(V n) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127)), 23))};
}
/** a where keep >= floor, else 0. */
inline V zero_below(V a, V keep, float floor) {
  return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(keep.v, _mm512_set1_ps(floor), _CMP_GE_OQ), a.v)};
}
/** kLanes bytes of 4-bit pairs -> lo = low nibbles (even elements), hi = high nibbles (odd elements). */
inline void decode4(const uint8_t* p, V& lo, V& hi) {
  __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  lo.v = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  hi.v = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}
/** kLanes bytes -> kLanes floats. */
inline V decode8(const uint8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
}

#elif defined(STUDIO_SIMD_AVX2)

constexpr const char* kName = "avx2";
constexpr int kLanes = 8;
struct V {
  __m256 v;
};
inline V zero() { return {_mm256_setzero_ps()}; }
inline V load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm256_storeu_ps(p, a.v); }
inline V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V add(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V set1(float f) { return {_mm256_set1_ps(f)}; }
inline float hsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));  // lanes i + (i+4)
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                                // (0+2), (1+3)
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));                                            // 0 + 1
  return _mm_cvtss_f32(s);
}
inline V max(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }
inline V round(V a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
inline V pow2i(V n) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23))};
}
inline V zero_below(V a, V keep, float floor) {
  return {_mm256_and_ps(a.v, _mm256_cmp_ps(keep.v, _mm256_set1_ps(floor), _CMP_GE_OQ))};
}
inline void decode4(const uint8_t* p, V& lo, V& hi) {
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  lo.v = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
  hi.v = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}
inline V decode8(const uint8_t* p) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
}

#elif defined(STUDIO_SIMD_NEON)

constexpr const char* kName = "neon";
constexpr int kLanes = 8;
struct V {
  float32x4_t lo, hi;
};
inline V zero() { return {vdupq_n_f32(0), vdupq_n_f32(0)}; }
inline V load(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
inline void store(float* p, V a) {
  vst1q_f32(p, a.lo);
  vst1q_f32(p + 4, a.hi);
}
inline V fma(V a, V b, V c) { return {vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi)}; }
inline V add(V a, V b) { return {vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi)}; }
inline V mul(V a, V b) { return {vmulq_f32(a.lo, b.lo), vmulq_f32(a.hi, b.hi)}; }
inline V set1(float f) { return {vdupq_n_f32(f), vdupq_n_f32(f)}; }
inline float hsum(V a) {
  float32x4_t s = vaddq_f32(a.lo, a.hi);
  float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
  return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}
inline V max(V a, V b) { return {vmaxq_f32(a.lo, b.lo), vmaxq_f32(a.hi, b.hi)}; }
inline V round(V a) { return {vrndnq_f32(a.lo), vrndnq_f32(a.hi)}; }
inline V pow2i(V n) {
  auto one = [](float32x4_t x) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(x), vdupq_n_s32(127)), 23));
  };
  return {one(n.lo), one(n.hi)};
}
inline V zero_below(V a, V keep, float floor) {
  const float32x4_t f = vdupq_n_f32(floor);
  return {vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a.lo), vcgeq_f32(keep.lo, f))),
          vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a.hi), vcgeq_f32(keep.hi, f)))};
}
inline void decode4(const uint8_t* p, V& lo, V& hi) {
  uint16x8_t w = vmovl_u8(vld1_u8(p));
  uint16x8_t l = vandq_u16(w, vdupq_n_u16(15));
  uint16x8_t h = vshrq_n_u16(w, 4);
  lo = {vcvtq_f32_u32(vmovl_u16(vget_low_u16(l))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(l)))};
  hi = {vcvtq_f32_u32(vmovl_u16(vget_low_u16(h))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(h)))};
}
inline V decode8(const uint8_t* p) {
  uint16x8_t w = vmovl_u8(vld1_u8(p));
  return {vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(w)))};
}

#else

constexpr const char* kName = "portable";
constexpr int kLanes = 8;
struct V {
  float v[8];
};
inline V zero() { return {}; }
inline V load(const float* p) {
  V r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
}
inline void store(float* p, V a) { std::memcpy(p, a.v, sizeof a.v); }
inline V fma(V a, V b, V c) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  return r;
}
inline V add(V a, V b) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] + b.v[i];
  return r;
}
inline V mul(V a, V b) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i];
  return r;
}
inline V set1(float f) {
  V r;
  for (float& x : r.v) x = f;
  return r;
}
inline float hsum(V a) {
  float s[4];
  for (int i = 0; i < 4; ++i) s[i] = a.v[i] + a.v[i + 4];
  float t0 = s[0] + s[2], t1 = s[1] + s[3];
  return t0 + t1;
}
inline V max(V a, V b) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
  return r;
}
inline V round(V a) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = std::nearbyint(a.v[i]);
  return r;
}
inline V pow2i(V n) {
  V r;
  for (int i = 0; i < 8; ++i) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n.v[i]) + 127) << 23;
    std::memcpy(&r.v[i], &bits, 4);
  }
  return r;
}
inline V zero_below(V a, V keep, float floor) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = keep.v[i] >= floor ? a.v[i] : 0.0f;
  return r;
}
inline void decode4(const uint8_t* p, V& lo, V& hi) {
  for (int i = 0; i < 8; ++i) {
    lo.v[i] = static_cast<float>(p[i] & 15);
    hi.v[i] = static_cast<float>(p[i] >> 4);
  }
}
inline V decode8(const uint8_t* p) {
  V r;
  for (int i = 0; i < 8; ++i) r.v[i] = static_cast<float>(p[i]);
  return r;
}

#endif

/** Elements one step of the dot loops covers (two vectors). Group sizes (>= 32) are multiples of it. */
constexpr int kStep = 2 * kLanes;

/** Lane-wise partial dot of n (a multiple of kStep) floats: two accumulators, then added. */
inline V dot_lanes(const float* a, const float* b, int64_t n) {
  V acc0 = zero(), acc1 = zero();
  for (int64_t i = 0; i < n; i += kStep) {
    acc0 = fma(load(a + i), load(b + i), acc0);
    acc1 = fma(load(a + i + kLanes), load(b + i + kLanes), acc1);
  }
  return add(acc0, acc1);
}

/** Dot product of n floats (any n): the kStep-wide body as dot_lanes, then a scalar tail in order. */
inline float dot(const float* a, const float* b, int64_t n) {
  const int64_t body = n - n % kStep;
  float s = hsum(dot_lanes(a, b, body));
  for (int64_t i = body; i < n; ++i) s += a[i] * b[i];
  return s;
}

/** The largest lane (exact: the order of comparisons does not matter). */
inline float hmax(V a) {
  alignas(64) float f[kLanes];
  store(f, a);
  float m = f[0];
  for (int i = 1; i < kLanes; ++i) m = f[i] > m ? f[i] : m;
  return m;
}

/**
 * exp(x) for x <= 0 (softmax numerators), vectorised: x = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial
 * for e^r (the single-precision minimax coefficients of the Cephes library's expf; relative error ~2e-7), times
 * 2^n; exactly 0 below -87 (where 2^n would leave the normal range) and for -inf. The same fused operations
 * in every build's lanes, so a lane's result never depends on its neighbours.
 */
inline V exp_nonpositive(V x) {
  constexpr float kFloor = -87.0f;
  const V xc = max(x, set1(kFloor));
  const V n = round(mul(xc, set1(1.44269504088896341f)));
  V r = fma(n, set1(-0.693359375f), xc);
  r = fma(n, set1(2.12194440e-4f), r);
  V p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  const V y = add(fma(p, mul(r, r), r), set1(1.0f));
  return zero_below(mul(y, pow2i(n)), x, kFloor);
}

}  // namespace studio::cpu::simd
