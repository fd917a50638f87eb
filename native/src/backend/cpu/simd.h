// Eight-lane float vectors for the cpu kernels: AVX2+FMA, NEON, or a portable scalar fallback. Every kernel is
// written once against these; the lane layout (and so the summation order) is the same for every call on a
// given build, which is what makes results independent of batch size and thread count.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define STUDIO_SIMD_AVX2 1
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define STUDIO_SIMD_NEON 1
#endif

namespace studio::cpu::simd {

#if defined(STUDIO_SIMD_AVX2)

struct V8 {
  __m256 v;
};
inline V8 zero() { return {_mm256_setzero_ps()}; }
inline V8 load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void store(float* p, V8 a) { _mm256_storeu_ps(p, a.v); }
inline V8 fma(V8 a, V8 b, V8 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V8 add(V8 a, V8 b) { return {_mm256_add_ps(a.v, b.v)}; }
inline float hsum(V8 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));  // lanes i + (i+4)
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                                // (0+2), (1+3)
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));                                            // 0 + 1
  return _mm_cvtss_f32(s);
}
/** 8 bytes of 4-bit pairs -> out[0..7] = low nibbles (even elements), out[8..15] = high nibbles (odd). */
inline void decode4(const uint8_t* p, float* out) {
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  __m256i lo = _mm256_and_si256(b, _mm256_set1_epi32(15));
  __m256i hi = _mm256_srli_epi32(b, 4);
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(lo));
  _mm256_storeu_ps(out + 8, _mm256_cvtepi32_ps(hi));
}
/** 8 bytes -> 8 floats. */
inline void decode8(const uint8_t* p, float* out) {
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(b));
}

#elif defined(STUDIO_SIMD_NEON)

struct V8 {
  float32x4_t lo, hi;
};
inline V8 zero() { return {vdupq_n_f32(0), vdupq_n_f32(0)}; }
inline V8 load(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
inline void store(float* p, V8 a) {
  vst1q_f32(p, a.lo);
  vst1q_f32(p + 4, a.hi);
}
inline V8 fma(V8 a, V8 b, V8 c) { return {vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi)}; }
inline V8 add(V8 a, V8 b) { return {vaddq_f32(a.lo, b.lo), vaddq_f32(a.hi, b.hi)}; }
inline float hsum(V8 a) {
  float32x4_t s = vaddq_f32(a.lo, a.hi);
  float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
  return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);
}
inline void decode4(const uint8_t* p, float* out) {
  uint16x8_t w = vmovl_u8(vld1_u8(p));
  uint16x8_t lo = vandq_u16(w, vdupq_n_u16(15));
  uint16x8_t hi = vshrq_n_u16(w, 4);
  vst1q_f32(out, vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))));
  vst1q_f32(out + 4, vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))));
  vst1q_f32(out + 8, vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))));
  vst1q_f32(out + 12, vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi))));
}
inline void decode8(const uint8_t* p, float* out) {
  uint16x8_t w = vmovl_u8(vld1_u8(p));
  vst1q_f32(out, vcvtq_f32_u32(vmovl_u16(vget_low_u16(w))));
  vst1q_f32(out + 4, vcvtq_f32_u32(vmovl_u16(vget_high_u16(w))));
}

#else

struct V8 {
  float v[8];
};
inline V8 zero() { return {}; }
inline V8 load(const float* p) {
  V8 r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
}
inline void store(float* p, V8 a) { std::memcpy(p, a.v, sizeof a.v); }
inline V8 fma(V8 a, V8 b, V8 c) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  return r;
}
inline V8 add(V8 a, V8 b) {
  V8 r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] + b.v[i];
  return r;
}
inline float hsum(V8 a) {
  float s[4];
  for (int i = 0; i < 4; ++i) s[i] = a.v[i] + a.v[i + 4];
  float t0 = s[0] + s[2], t1 = s[1] + s[3];
  return t0 + t1;
}
inline void decode4(const uint8_t* p, float* out) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<float>(p[i] & 15);
    out[i + 8] = static_cast<float>(p[i] >> 4);
  }
}
inline void decode8(const uint8_t* p, float* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<float>(p[i]);
}

#endif

/** Dot product of n floats (any n): 16-wide body with two accumulators, then a scalar tail in order. */
inline float dot(const float* a, const float* b, int64_t n) {
  V8 acc0 = zero(), acc1 = zero();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = fma(load(a + i), load(b + i), acc0);
    acc1 = fma(load(a + i + 8), load(b + i + 8), acc1);
  }
  float s = hsum(add(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace studio::cpu::simd
