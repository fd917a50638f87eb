// The int16 path of the cpu kernels, for builds with AVX-512 VNNI: 4- and 8-bit weights widened to int16 and
// dotted exactly in integers with the inputs quantized per group (see PreparedX in kernels.h).
#include <cmath>

#include "backend/cpu/kernel_blocks.h"
#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

using namespace blocks;

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define STUDIO_INT16_DOT 1

/** Group g of a 4/8-bit row widened to int16 words, in the layout prepare_x gives the int16 inputs. */
template <int Bits, int Group>
struct WideGroup {
  static constexpr int kVectors = Bits == 4 ? (Group == 32 ? 2 : Group / 32) : Group / 32;
  __m512i w[kVectors];
};

/** 4-bit: per chunk of 64 values (32 for group 32) the low nibbles (evens), then the high ones; 8-bit: in order. */
template <int Bits, int Group>
inline WideGroup<Bits, Group> widen(const uint8_t* row, int64_t g) {
  WideGroup<Bits, Group> out;
  if constexpr (Bits == 4 && Group == 32) {
    const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * 16)));
    out.w[0] = _mm512_zextsi256_si512(_mm256_and_si256(b, _mm256_set1_epi16(15)));
    out.w[1] = _mm512_zextsi256_si512(_mm256_srli_epi16(b, 4));
  } else if constexpr (Bits == 4) {
    const uint8_t* p = row + g * Group / 2;
    for (int c = 0; c < Group / 64; ++c) {
      const __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * c)));
      out.w[2 * c] = _mm512_and_si512(b, _mm512_set1_epi16(15));
      out.w[2 * c + 1] = _mm512_srli_epi16(b, 4);
    }
  } else {
    const uint8_t* p = row + g * Group;
    for (int c = 0; c < Group / 32; ++c)
      out.w[c] = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * c)));
  }
  return out;
}

/** Exact integer dot of a widened group with its int16 inputs, as 16 int32 lanes. */
template <int Bits, int Group>
inline __m512i int_dot(const WideGroup<Bits, Group>& wg, const int16_t* xq) {
  if constexpr (Bits == 4 && Group == 32) {
    __m256i a = _mm256_dpwssd_epi32(_mm256_setzero_si256(), _mm512_castsi512_si256(wg.w[0]),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
    a = _mm256_dpwssd_epi32(a, _mm512_castsi512_si256(wg.w[1]), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 16)));
    return _mm512_zextsi256_si512(a);
  } else {
    __m512i acc = _mm512_setzero_si512();
    for (int c = 0; c < WideGroup<Bits, Group>::kVectors; ++c)
      acc = _mm512_dpwssd_epi32(acc, wg.w[c], _mm512_loadu_si512(xq + 32 * c));
    return acc;
  }
}

/** How far ahead of the decode loop's weight reads to prefetch, in bytes (512, 1024, 2048, 4096 measured: 1024 best). */
constexpr int64_t kPrefetchAhead = 1024;

/** Sixteen consecutive float-like elements of dtype D (bf16 and f32 widen in registers; others go one by one). */
template <io::DType D>
inline __m512 element16(const uint8_t* p, int64_t i, io::DType runtime) {
  if constexpr (D == io::DType::F32) {
    return _mm512_loadu_ps(p + 4 * i);
  } else if constexpr (D == io::DType::BF16) {
    // A bf16 is the top half of an f32: widening and shifting gives exactly the scalar conversion's value.
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    alignas(64) float f[16];
    for (int k = 0; k < 16; ++k) f[k] = io::load_float(p, runtime, i + k);
    return _mm512_load_ps(f);
  }
}

/**
 * Row o's per-group factors for the small-batch loop: bias_g, and scale_g * xscale_{t,g} for each of the batch's
 * tokens t, sixteen groups per step (the same single multiplications as one at a time, so the same bits).
 */
template <io::DType SD, io::DType BD>
inline void row_factors(const MatView& m, int64_t o, int64_t groups, const float* xscale, int64_t tokens,
                        float* scale_x, float* bias) {
  const int64_t base = o * groups;
  int64_t g = 0;
  for (; g + 16 <= groups; g += 16) {
    const __m512 s = element16<SD>(m.scales, base + g, m.scale_dtype);
    for (int64_t t = 0; t < tokens; ++t)
      _mm512_storeu_ps(scale_x + t * groups + g, _mm512_mul_ps(s, _mm512_loadu_ps(xscale + t * groups + g)));
    _mm512_storeu_ps(bias + g, element16<BD>(m.biases, base + g, m.bias_dtype));
  }
  for (; g < groups; ++g) {
    const float s = element<SD>(m.scales, base + g, m.scale_dtype);
    for (int64_t t = 0; t < tokens; ++t) scale_x[t * groups + g] = s * xscale[t * groups + g];
    bias[g] = element<BD>(m.biases, base + g, m.bias_dtype);
  }
}

/**
 * Tokens [t_begin, t_end) (at most kSmallBatch) on a 4/8-bit row range, int16 inputs: each row is streamed once
 * (prefetched ahead) and each group widened once per block of tokens. Per token: lanes accumulate
 * (scale_g * xscale_g) * float(int dot) over groups, and the row ends with hsum(lanes) + dot(biases, per-group
 * input sums).
 */
template <int Bits, int Group, io::DType SD, io::DType BD>
void int16_rows_batch(const MatView& m, const PreparedX& x, int64_t t_begin, int64_t t_end, int64_t row_begin,
                      int64_t row_end, float* y, int64_t y_stride) {
  const int64_t groups = m.in / Group;
  const int64_t tokens = t_end - t_begin;
  const float* xscale = x.xscale.data() + t_begin * groups;
  thread_local std::vector<float> scale_x, bias_row;
  scale_x.resize(tokens * groups);
  bias_row.resize(groups);
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = m.weight + o * m.row_bytes;
    row_factors<SD, BD>(m, o, groups, xscale, tokens, scale_x.data(), bias_row.data());
    for_each_block(tokens, [&](int64_t b0, auto nb) {
      constexpr int NB = decltype(nb)::value;
      const int64_t t0 = t_begin + b0;
      __m512 lanes[NB];
      for (int k = 0; k < NB; ++k) lanes[k] = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        // One prefetch per cache line, kPrefetchAhead bytes down the weight stream: the hardware streamer stops
        // at every 4 KiB page (four rows of a 2048-wide 4-bit matrix) and a single core then waits on misses.
        constexpr int64_t kGroupBytes = Group * Bits / 8;
        if ((g * kGroupBytes) % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(row + g * kGroupBytes + kPrefetchAhead), _MM_HINT_T0);
        const WideGroup<Bits, Group> wg = widen<Bits, Group>(row, g);
        for (int k = 0; k < NB; ++k) {
          const int16_t* xq = x.xq.data() + (t0 + k) * m.in + g * Group;
          const __m512 d = _mm512_cvtepi32_ps(int_dot<Bits, Group>(wg, xq));
          lanes[k] = _mm512_fmadd_ps(_mm512_set1_ps(scale_x[(b0 + k) * groups + g]), d, lanes[k]);
        }
      }
      for (int k = 0; k < NB; ++k)
        y[(t0 + k) * y_stride + o] =
            simd::hsum({lanes[k]}) + simd::dot(bias_row.data(), x.sums.data() + (t0 + k) * groups, groups);
    });
  }
}

/**
 * The int16 path for 4/8-bit rows. Any number of tokens runs as batches of kSmallBatch tokens, each streaming
 * the row range once: a batch's int16 inputs (8 x 4 KiB at 2048 wide) stay in L1 while the rows pass, where a
 * 16-token tile with a widened row in a buffer read its inputs from L2 for every row (46 against 83 Gmac/s per
 * core on a 1024 x 2048 matrix). The row range is a work item's (kRowChunk rows), so its packed bytes stay in
 * L2 between batches. Every token gets the same arithmetic whatever the batching.
 */
template <int Bits, int Group, io::DType SD, io::DType BD>
void int16_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  for (int64_t t0 = 0; t0 < x.rows; t0 += kSmallBatch)
    int16_rows_batch<Bits, Group, SD, BD>(m, x, t0, std::min(x.rows, t0 + kSmallBatch), row_begin, row_end, y,
                                          y_stride);
}

template <int Bits, int Group>
QuantRowsFn pick_int16_dtype(const MatView& m) {
  using io::DType;
  if (m.scale_dtype == DType::BF16 && m.bias_dtype == DType::BF16) return int16_rows<Bits, Group, DType::BF16, DType::BF16>;
  if (m.scale_dtype == DType::F32 && m.bias_dtype == DType::F32) return int16_rows<Bits, Group, DType::F32, DType::F32>;
  return int16_rows<Bits, Group, DType::Other, DType::Other>;
}

template <int Bits>
QuantRowsFn pick_int16_group(const MatView& m) {
  if (m.group == 32) return pick_int16_dtype<Bits, 32>(m);
  if (m.group == 64) return pick_int16_dtype<Bits, 64>(m);
  return pick_int16_dtype<Bits, 128>(m);
}
#endif

}  // namespace

bool has_int16_dot() {
#if defined(STUDIO_INT16_DOT)
  return true;
#else
  return false;
#endif
}

namespace blocks {

QuantRowsFn int16_rows_kernel(const MatView& m) {
#if defined(STUDIO_INT16_DOT)
  if (m.bits == 4) return pick_int16_group<4>(m);
  if (m.bits == 8) return pick_int16_group<8>(m);
#endif
  (void)m;
  return nullptr;
}

/** Lays out one row's int16 inputs (4-bit: chunks of 64, or 32 for group 32, as [evens, odds]). */
void quantize_row_int16(const float* src, const MatView& m, int16_t* dst, float* scale) {
  const int64_t groups = m.in / m.group;
  const int chunk = m.bits == 4 ? std::min(64, m.group) : 0;
  for (int64_t g = 0; g < groups; ++g) {
    const float* xg = src + g * m.group;
    float max_abs = 0;
    for (int k = 0; k < m.group; ++k) max_abs = std::max(max_abs, std::fabs(xg[k]));
    scale[g] = max_abs / 32767.0f;
    const float inv = max_abs > 0 ? 32767.0f / max_abs : 0.0f;
    int16_t* dg = dst + g * m.group;
    auto q = [&](float v) { return static_cast<int16_t>(std::clamp(std::nearbyint(v * inv), -32767.0f, 32767.0f)); };
    if (chunk == 0) {
      for (int k = 0; k < m.group; ++k) dg[k] = q(xg[k]);
      continue;
    }
    const int half = chunk / 2;
    for (int c = 0; c < m.group; c += chunk)
      for (int j = 0; j < half; ++j) {
        dg[c + j] = q(xg[c + 2 * j]);
        dg[c + half + j] = q(xg[c + 2 * j + 1]);
      }
  }
}

}  // namespace blocks

}  // namespace studio::cpu
