// The int16 path of the cpu kernels, for x86 builds with AVX2 or AVX-512(BW): 4- and 8-bit weights widened to
// int16 and dotted exactly in integers with the inputs quantized per group (see PreparedX in kernels.h). The
// integer dots are exact, so an AVX-512 build gives the same bits with or without VNNI.
#include <cmath>

#include "backend/cpu/kernel_blocks.h"
#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

using namespace blocks;

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define STUDIO_INT16_DOT 1

// AVX-512: 16 int32 lanes, 32 int16 words per vector. VNNI's vpdpwssd sums the word pairs straight into the
// lanes; without VNNI (AVX-512BW alone) vpmaddwd + vpaddd give the same exact integers, so the same bits.
// The ISA's operations: a struct of static functions, used like a namespace, so the shared templates of
// kernel_blocks.h can take it as a parameter.
struct isa {

using IVec = __m512i;
using FVec = __m512;
static constexpr int kWords = 32;
static constexpr int kLanes = kWords / 2;

static inline IVec zero_i() { return _mm512_setzero_si512(); }
static inline IVec load_i(const int16_t* p) { return _mm512_loadu_si512(p); }
static inline IVec pair_dot_add(IVec acc, IVec w, IVec x) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, w, x);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x));
#endif
}
static inline FVec zero_f() { return _mm512_setzero_ps(); }
static inline FVec to_float(IVec d) { return _mm512_cvtepi32_ps(d); }
static inline FVec fmadd(float s, FVec d, FVec acc) { return _mm512_fmadd_ps(_mm512_set1_ps(s), d, acc); }
static inline FVec load_f(const float* p) { return _mm512_loadu_ps(p); }
static inline void store_f(float* p, FVec v) { _mm512_storeu_ps(p, v); }
static inline FVec mul_f(FVec a, FVec b) { return _mm512_mul_ps(a, b); }
/** kWords bytes widened to int16 words. */
static inline IVec widen_bytes(const uint8_t* p) {
  return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
/** kWords / 2 bytes widened to the low half of the words, the rest zero; and kWords / 2 words loaded likewise. */
static inline IVec widen_half_bytes(const uint8_t* p) {
  return _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
static inline IVec load_half_i(const int16_t* p) { return _mm512_maskz_loadu_epi16(0xFFFF, p); }
static inline IVec low_nibbles(IVec b) { return _mm512_and_si512(b, _mm512_set1_epi16(15)); }
static inline IVec high_nibbles(IVec b) { return _mm512_srli_epi16(b, 4); }
/** Sixteen bf16 widened exactly (a bf16 is the top half of an f32). */
static inline FVec widen_bf16(const uint8_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

};

#elif defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define STUDIO_INT16_DOT 1

// AVX2: 8 int32 lanes, 16 int16 words per vector; vpmaddwd + vpaddd sum the word pairs exactly. Against the
// float path it unpacks a group of 4-bit weights with three integer instructions instead of converting each
// weight to a float, which is most of a decoded token's instructions. (A struct, as the AVX-512 one above.)
struct isa {

using IVec = __m256i;
using FVec = __m256;
static constexpr int kWords = 16;
static constexpr int kLanes = kWords / 2;

static inline IVec zero_i() { return _mm256_setzero_si256(); }
static inline IVec load_i(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static inline IVec pair_dot_add(IVec acc, IVec w, IVec x) { return _mm256_add_epi32(acc, _mm256_madd_epi16(w, x)); }
static inline FVec zero_f() { return _mm256_setzero_ps(); }
static inline FVec to_float(IVec d) { return _mm256_cvtepi32_ps(d); }
static inline FVec fmadd(float s, FVec d, FVec acc) { return _mm256_fmadd_ps(_mm256_set1_ps(s), d, acc); }
static inline FVec load_f(const float* p) { return _mm256_loadu_ps(p); }
static inline void store_f(float* p, FVec v) { _mm256_storeu_ps(p, v); }
static inline FVec mul_f(FVec a, FVec b) { return _mm256_mul_ps(a, b); }
static inline IVec widen_bytes(const uint8_t* p) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// Half vectors: never needed here (a half group, 16 words at the least, fills a whole vector), but named for
// the group-32 branch that AVX-512 takes.
[[maybe_unused]] static inline IVec widen_half_bytes(const uint8_t* p) {
  return _mm256_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
[[maybe_unused]] static inline IVec load_half_i(const int16_t* p) {
  return _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline IVec low_nibbles(IVec b) { return _mm256_and_si256(b, _mm256_set1_epi16(15)); }
static inline IVec high_nibbles(IVec b) { return _mm256_srli_epi16(b, 4); }
static inline FVec widen_bf16(const uint8_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

};
#endif

#if defined(STUDIO_INT16_DOT)

// The float lanes of the int16 path are the build's float lanes (simd.h), so its row sums use simd::hsum.
constexpr int kLanes = isa::kLanes;
static_assert(kLanes == simd::kLanes);

/**
 * Group g of a 4/8-bit row widened to int16 words, in the layout prepare_x gives the int16 inputs: vector v
 * pairs with input words [v * kWords, (v + 1) * kWords) of the group.
 */
template <int Bits, int Group>
struct WideGroup {
  /** 4-bit, group 32 on AVX-512: 16 evens and 16 odds, each in half a vector (the upper words zero). */
  static constexpr bool kHalves = Bits == 4 && Group / 2 < isa::kWords;
  static constexpr int kVectors = kHalves ? 2 : Group / isa::kWords;
  isa::IVec w[kVectors];
};

/**
 * 4-bit inputs come as chunks of 64 values (32 for group 32), each [evens, odds]; a chunk's packed bytes hold
 * an even value in each low nibble and the next odd one in the high nibble. So the chunk's bytes, widened a
 * vector at a time, give first the evens' vectors (low nibbles) and then the odds' (high nibbles). 8-bit:
 * bytes in order.
 */
template <int Bits, int Group>
inline WideGroup<Bits, Group> widen(const uint8_t* row, int64_t g) {
  using W = WideGroup<Bits, Group>;
  W out;
  if constexpr (W::kHalves) {
    const isa::IVec b = isa::widen_half_bytes(row + g * Group / 2);
    out.w[0] = isa::low_nibbles(b);
    out.w[1] = isa::high_nibbles(b);
  } else if constexpr (Bits == 4) {
    constexpr int chunk = Group < 64 ? Group : 64;
    constexpr int per_half = chunk / 2 / isa::kWords;  // vectors per half (evens or odds) of a chunk
    const uint8_t* p = row + g * Group / 2;
    for (int c = 0; c < Group / chunk; ++c)
      for (int h = 0; h < per_half; ++h) {
        const isa::IVec b = isa::widen_bytes(p + c * chunk / 2 + h * isa::kWords);
        out.w[c * 2 * per_half + h] = isa::low_nibbles(b);
        out.w[c * 2 * per_half + per_half + h] = isa::high_nibbles(b);
      }
  } else {
    const uint8_t* p = row + g * Group;
    for (int v = 0; v < W::kVectors; ++v) out.w[v] = isa::widen_bytes(p + v * isa::kWords);
  }
  return out;
}

/** Exact integer dot of a widened group with its int16 inputs, as kLanes int32 lanes. */
template <int Bits, int Group>
inline isa::IVec int_dot(const WideGroup<Bits, Group>& wg, const int16_t* xq) {
  using W = WideGroup<Bits, Group>;
  isa::IVec acc = isa::zero_i();
  if constexpr (W::kHalves) {
    for (int v = 0; v < 2; ++v) acc = isa::pair_dot_add(acc, wg.w[v], isa::load_half_i(xq + v * isa::kWords / 2));
  } else {
    for (int v = 0; v < W::kVectors; ++v) acc = isa::pair_dot_add(acc, wg.w[v], isa::load_i(xq + v * isa::kWords));
  }
  return acc;
}

/** How far ahead of the decode loop's weight reads to prefetch, in bytes (512, 1024, 2048, 4096 measured: 1024 best). */
constexpr int64_t kPrefetchAhead = 1024;

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
    row_factors<isa, SD, BD>(m, o, groups, xscale, tokens, scale_x.data(), bias_row.data());
    for_each_block(tokens, [&](int64_t b0, auto nb) {
      constexpr int NB = decltype(nb)::value;
      const int64_t t0 = t_begin + b0;
      isa::FVec lanes[NB];
      for (int k = 0; k < NB; ++k) lanes[k] = isa::zero_f();
      for (int64_t g = 0; g < groups; ++g) {
        // One prefetch per cache line, kPrefetchAhead bytes down the weight stream: the hardware streamer stops
        // at every 4 KiB page (four rows of a 2048-wide 4-bit matrix) and a single core then waits on misses.
        constexpr int64_t kGroupBytes = Group * Bits / 8;
        if ((g * kGroupBytes) % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(row + g * kGroupBytes + kPrefetchAhead), _MM_HINT_T0);
        const WideGroup<Bits, Group> wg = widen<Bits, Group>(row, g);
        for (int k = 0; k < NB; ++k) {
          const int16_t* xq = x.xq.data() + (t0 + k) * m.in + g * Group;
          const isa::FVec d = isa::to_float(int_dot<Bits, Group>(wg, xq));
          lanes[k] = isa::fmadd(scale_x[(b0 + k) * groups + g], d, lanes[k]);
        }
      }
      for (int k = 0; k < NB; ++k)
        y[(t0 + k) * y_stride + o] =
            simd::hsum({lanes[k]}) + simd::dot(bias_row.data(), x.sums.data() + (t0 + k) * groups, groups);
    });
  }
}

template <int Bits, int Group>
QuantRowsFn pick_int16_dtype(const MatView& m) {
  using io::DType;
  if (m.scale_dtype == DType::BF16 && m.bias_dtype == DType::BF16)
    return in_small_batches<int16_rows_batch<Bits, Group, DType::BF16, DType::BF16>>;
  if (m.scale_dtype == DType::F32 && m.bias_dtype == DType::F32)
    return in_small_batches<int16_rows_batch<Bits, Group, DType::F32, DType::F32>>;
  return in_small_batches<int16_rows_batch<Bits, Group, DType::Other, DType::Other>>;
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

}  // namespace blocks

}  // namespace studio::cpu
