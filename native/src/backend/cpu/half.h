// IEEE half precision (f16) for the cpu backend's KV cache in its f16 mode (docs: native/README.md, "The KV
// cache's element type"). Both directions round exactly as IEEE says (f32 -> f16 to nearest, ties to even;
// f16 -> f32 is exact), so every build (F16C on x86, NEON on aarch64, the scalar fallback) gives the same bits.
// Values past f16's largest finite value (65504) are stored as that value, not as infinity: one key or value
// out of range must not turn a whole attention row into NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace studio::cpu::half {

constexpr float kMax = 65504.0f;

/** One float to f16 bits (the scalar path; the vector paths agree with it bit for bit). */
inline uint16_t from_float(float f) {
  f = std::clamp(f, -kMax, kMax);  // NaN passes through
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (magnitude < 0x38800000u) {
    // Below f16's smallest normal (2^-14): a multiple of 2^-24, rounded to nearest even by nearbyint (exact
    // scaling by a power of two first). 1024 * 2^-24 is the smallest normal, which the same bits encode.
    float scaled;
    std::memcpy(&scaled, &magnitude, sizeof scaled);
    return sign | static_cast<uint16_t>(std::nearbyint(scaled * 16777216.0f));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 23-bit mantissa to 10 bits, ties to even; a carry
  // moves into the exponent as it should.
  const uint32_t rebased = magnitude - 0x38000000u;
  return sign | static_cast<uint16_t>((rebased + 0xfffu + ((rebased >> 13) & 1u)) >> 13);
}

/** f16 bits to float (exact). */
inline float to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    const float v = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  const uint32_t exponent_bits = exponent == 31 ? 0x7f800000u : (exponent + 112) << 23;  // inf/NaN stay so
  const uint32_t bits = sign | exponent_bits | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/** n floats to f16. */
inline void store(const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
#if defined(__F16C__)
  const __m256 lo = _mm256_set1_ps(-kMax), hi = _mm256_set1_ps(kMax);
  for (; i + 8 <= n; i += 8) {
    // max/min return their second operand for NaN, so the input goes second to keep NaN a NaN.
    const __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(in + i)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
#elif defined(__aarch64__)
  const float32x4_t lo = vdupq_n_f32(-kMax), hi = vdupq_n_f32(kMax);
  for (; i + 4 <= n; i += 4) {
    // FMINNM/FMAXNM would turn NaN into the bound; plain FMIN/FMAX keep it, as the scalar path does.
    const float32x4_t x = vminq_f32(hi, vmaxq_f32(lo, vld1q_f32(in + i)));
    vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(x)));
  }
#endif
  for (; i < n; ++i) out[i] = from_float(in[i]);
}

/** n f16 values to floats. */
inline void load(const uint16_t* in, float* out, size_t n) {
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#elif defined(__aarch64__)
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(in + i))));
#endif
  for (; i < n; ++i) out[i] = to_float(in[i]);
}

}  // namespace studio::cpu::half
