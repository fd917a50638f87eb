#include "backend/cpu/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "backend/cpu/kernel_blocks.h"
#include "backend/cpu/simd.h"
#include "io/quant_format.h"

namespace studio::cpu {

namespace {

using namespace blocks;

/**
 * Unpacks 8 values of a bit-stream row whose first bit is byte-aligned: 8 values of Bits bits fill exactly
 * Bits bytes (2, 3, 5 and 6 bits straddle bytes; the LSB-first stream makes this one little-endian word).
 */
template <int Bits>
inline void unpack8(const uint8_t* p, bool whole_word_readable, float* out) {
  // One 8-byte load where the row has the bytes (a narrow copy would stall store forwarding); the row's
  // last chunk copies only its own Bits bytes so nothing past the tensor is read. Little-endian hosts.
  uint64_t word = 0;
  if (whole_word_readable)
    std::memcpy(&word, p, 8);
  else
    std::memcpy(&word, p, Bits);
  constexpr uint64_t mask = (uint64_t{1} << Bits) - 1;
#if defined(__AVX512F__)
  const __m512i shifts = _mm512_set_epi64(7 * Bits, 6 * Bits, 5 * Bits, 4 * Bits, 3 * Bits, 2 * Bits, Bits, 0);
  const __m512i v = _mm512_and_si512(_mm512_srlv_epi64(_mm512_set1_epi64(static_cast<long long>(word)), shifts),
                                     _mm512_set1_epi64(mask));
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(v)));
#elif defined(__AVX2__)
  const __m256i w = _mm256_set1_epi64x(static_cast<long long>(word));
  const __m256i m = _mm256_set1_epi64x(mask);
  const __m256i a = _mm256_and_si256(_mm256_srlv_epi64(w, _mm256_set_epi64x(3 * Bits, 2 * Bits, Bits, 0)), m);
  const __m256i b = _mm256_and_si256(_mm256_srlv_epi64(w, _mm256_set_epi64x(7 * Bits, 6 * Bits, 5 * Bits, 4 * Bits)), m);
  // Low 32 bits of each qword: [a0 a1 b0 b1 | a2 a3 b2 b3], then reorder the 64-bit pairs to a0..a3 b0..b3.
  const __m256 packed = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  const __m256i ordered = _mm256_permute4x64_epi64(_mm256_castps_si256(packed), _MM_SHUFFLE(3, 1, 2, 0));
  _mm256_storeu_ps(out, _mm256_cvtepi32_ps(ordered));
#else
  for (int j = 0; j < 8; ++j) out[j] = static_cast<float>((word >> (j * Bits)) & mask);
#endif
}

/**
 * Unpacks group g of a packed row into buf in the lane layout that prepare_x gives the inputs: for 4 bits,
 * each kStep values as [kLanes even elements, kLanes odd elements] (what decode4 yields); else natural order.
 */
template <int Bits>
inline void decode_group(const uint8_t* row, size_t row_bytes, int group, int64_t g, float* buf) {
  if constexpr (Bits == 4) {
    const uint8_t* p = row + g * group / 2;
    for (int i = 0; i < group; i += simd::kStep) {
      simd::V lo, hi;
      simd::decode4(p + i / 2, lo, hi);
      simd::store(buf + i, lo);
      simd::store(buf + i + simd::kLanes, hi);
    }
  } else if constexpr (Bits == 8) {
    const uint8_t* p = row + g * group;
    for (int i = 0; i < group; i += simd::kLanes) simd::store(buf + i, simd::decode8(p + i));
  } else {
    // A group starts at bit g*group*Bits, a multiple of 8 * Bits: byte-aligned, and so is every 8-value chunk.
    const size_t start = static_cast<size_t>(g) * group * Bits / 8;
    for (int i = 0; i < group; i += 8) {
      const size_t at = start + i * Bits / 8;
      unpack8<Bits>(row + at, at + 8 <= row_bytes, buf + i);
    }
  }
}

/**
 * The lane-wise dots of group g with NB tokens' inputs straight from the packed bytes (4 and 8 bits): the
 * weights are unpacked once for all NB tokens, and each token gets the same FMA sequence as
 * dot_lanes(decoded group, x), so one token and many give the same bits.
 */
template <int Bits, int Group, int NB>
inline void dot_packed(const uint8_t* row, int64_t g, const float* const* x, simd::V* out) {
  simd::V acc0[NB], acc1[NB];
  for (int k = 0; k < NB; ++k) acc0[k] = acc1[k] = simd::zero();
  for (int i = 0; i < Group; i += simd::kStep) {
    simd::V lo, hi;
    if constexpr (Bits == 4) {
      simd::decode4(row + (g * Group + i) / 2, lo, hi);
    } else {
      lo = simd::decode8(row + g * Group + i);
      hi = simd::decode8(row + g * Group + i + simd::kLanes);
    }
    for (int k = 0; k < NB; ++k) {
      acc0[k] = simd::fma(lo, simd::load(x[k] + g * Group + i), acc0[k]);
      acc1[k] = simd::fma(hi, simd::load(x[k] + g * Group + i + simd::kLanes), acc1[k]);
    }
  }
  for (int k = 0; k < NB; ++k) out[k] = simd::add(acc0[k], acc1[k]);
}

/** Converts a plain row (f32/f16/bf16) to floats. */
void decode_plain_row(const MatView& m, int64_t o, float* buf) {
  const uint8_t* row = m.weight + o * m.row_bytes;
  if (m.weight_dtype == io::DType::F32) {
    std::memcpy(buf, row, m.in * sizeof(float));
    return;
  }
  for (int64_t k = 0; k < m.in; ++k) buf[k] = io::load_float(row, m.weight_dtype, k);
}

void matmul_plain(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                  int64_t y_stride) {
  thread_local std::vector<float> buf;
  buf.resize(m.in);
  for (int64_t t0 = 0; t0 < x.rows; t0 += kTile) {
    const int64_t t1 = std::min(x.rows, t0 + kTile);
    for (int64_t o = row_begin; o < row_end; ++o) {
      decode_plain_row(m, o, buf.data());
      for (int64_t t = t0; t < t1; ++t) y[t * y_stride + o] = simd::dot(buf.data(), x.x.data() + t * m.in, m.in);
    }
  }
}

/**
 * A small batch of tokens on 4/8-bit rows, float inputs. Per row and token: lanes accumulate scale_g * dot_g
 * over groups, biases accumulate bias_g * sum(x_g) as a scalar, and the row ends with hsum(lanes) + biases.
 */
template <int Bits, int Group, io::DType SD, io::DType BD>
void quant_rows_small(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                      int64_t y_stride) {
  const int64_t groups = m.in / Group;
  const float* xs = x.sums.data();
  for (int64_t o = row_begin; o < row_end; ++o) {
    const uint8_t* row = m.weight + o * m.row_bytes;
    for_each_block(x.rows, [&](int64_t t0, auto nb) {
      constexpr int NB = decltype(nb)::value;
      const float* xt[NB];
      simd::V lanes[NB], d[NB];
      float bias_sum[NB];
      for (int k = 0; k < NB; ++k) {
        xt[k] = x.x.data() + (t0 + k) * m.in;
        lanes[k] = simd::zero();
        bias_sum[k] = 0;
      }
      for (int64_t g = 0; g < groups; ++g) {
        const float s = element<SD>(m.scales, o * groups + g, m.scale_dtype);
        const float b = element<BD>(m.biases, o * groups + g, m.bias_dtype);
        dot_packed<Bits, Group, NB>(row, g, xt, d);
        for (int k = 0; k < NB; ++k) {
          lanes[k] = simd::fma(simd::set1(s), d[k], lanes[k]);
          const float bx = b * xs[(t0 + k) * groups + g];
          bias_sum[k] = bias_sum[k] + bx;
        }
      }
      for (int k = 0; k < NB; ++k) y[(t0 + k) * y_stride + o] = simd::hsum(lanes[k]) + bias_sum[k];
    });
  }
}

/**
 * Quantized rows [row_begin, row_end) for every prepared token. Small batches of 4/8-bit rows read the packed
 * bytes directly (quant_rows_small); other widths and larger batches unpack a group once per tile of tokens
 * and reuse it, with exactly the same arithmetic per token.
 * Bits and Group are compile-time so the unpacking and the group loops unroll.
 */
template <int Bits, int Group, io::DType SD, io::DType BD>
void quant_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  constexpr int group = Group;
  const int64_t groups = m.in / group;
  const float* xp = x.x.data();
  const float* xs = x.sums.data();
  alignas(64) float buf[kMaxGroup];
  if constexpr (Bits == 4 || Bits == 8) {
    if (x.rows <= kSmallBatch) {
      quant_rows_small<Bits, Group, SD, BD>(m, x, row_begin, row_end, y, y_stride);
      return;
    }
  }
  simd::V lanes[kTile];
  float bias_sum[kTile];
  for (int64_t t0 = 0; t0 < x.rows; t0 += kTile) {
    const int64_t t1 = std::min(x.rows, t0 + kTile);
    for (int64_t o = row_begin; o < row_end; ++o) {
      const uint8_t* row = m.weight + o * m.row_bytes;
      for (int64_t t = t0; t < t1; ++t) {
        lanes[t - t0] = simd::zero();
        bias_sum[t - t0] = 0;
      }
      for (int64_t g = 0; g < groups; ++g) {
        decode_group<Bits>(row, m.row_bytes, group, g, buf);
        const simd::V sv = simd::set1(element<SD>(m.scales, o * groups + g, m.scale_dtype));
        const float b = element<BD>(m.biases, o * groups + g, m.bias_dtype);
        int64_t t = t0;
        for (; t + kBlock <= t1; t += kBlock) {
          simd::V a0[kBlock], a1[kBlock];
          const float* xt[kBlock];
          for (int k = 0; k < kBlock; ++k) {
            a0[k] = simd::zero();
            a1[k] = simd::zero();
            xt[k] = xp + (t + k) * m.in + g * group;
          }
          for (int i = 0; i < group; i += simd::kStep) {
            const simd::V w0 = simd::load(buf + i), w1 = simd::load(buf + i + simd::kLanes);
            for (int k = 0; k < kBlock; ++k) {
              a0[k] = simd::fma(w0, simd::load(xt[k] + i), a0[k]);
              a1[k] = simd::fma(w1, simd::load(xt[k] + i + simd::kLanes), a1[k]);
            }
          }
          for (int k = 0; k < kBlock; ++k) {
            lanes[t + k - t0] = simd::fma(sv, simd::add(a0[k], a1[k]), lanes[t + k - t0]);
            const float bx = b * xs[(t + k) * groups + g];
            bias_sum[t + k - t0] = bias_sum[t + k - t0] + bx;
          }
        }
        for (; t < t1; ++t) {
          const simd::V d = simd::dot_lanes(buf, xp + t * m.in + g * group, group);
          lanes[t - t0] = simd::fma(sv, d, lanes[t - t0]);
          const float bx = b * xs[t * groups + g];
          bias_sum[t - t0] = bias_sum[t - t0] + bx;
        }
      }
      for (int64_t t = t0; t < t1; ++t) y[t * y_stride + o] = simd::hsum(lanes[t - t0]) + bias_sum[t - t0];
    }
  }
}


template <int Bits, int Group>
QuantRowsFn pick_dtype(const MatView& m) {
  using io::DType;
  if (m.scale_dtype == DType::BF16 && m.bias_dtype == DType::BF16) return quant_rows<Bits, Group, DType::BF16, DType::BF16>;
  if (m.scale_dtype == DType::F32 && m.bias_dtype == DType::F32) return quant_rows<Bits, Group, DType::F32, DType::F32>;
  // f16 or mixed scale/bias dtypes: the generic loader.
  return quant_rows<Bits, Group, DType::Other, DType::Other>;
}

template <int Bits>
QuantRowsFn pick_group(const MatView& m) {
  if (m.group == 32) return pick_dtype<Bits, 32>(m);
  if (m.group == 64) return pick_dtype<Bits, 64>(m);
  return pick_dtype<Bits, 128>(m);
}

QuantRowsFn pick_quant_kernel(const MatView& m, bool int16) {
  if (int16)
    if (QuantRowsFn kernel = int16_rows_kernel(m)) return kernel;
  switch (m.bits) {
    case 2: return pick_group<2>(m);
    case 3: return pick_group<3>(m);
    case 4: return pick_group<4>(m);
    case 5: return pick_group<5>(m);
    case 6: return pick_group<6>(m);
    default: return pick_group<8>(m);
  }
}

}  // namespace

MatView view_of(const io::MatrixSource& source, int64_t e) {
  MatView m;
  m.bits = source.bits;
  m.group = source.group;
  m.out = source.out;
  m.in = source.in;
  m.row_bytes = source.row_bytes();
  m.weight_dtype = source.weight.dtype;
  m.weight = source.weight.data + static_cast<size_t>(e) * source.out * m.row_bytes;
  if (source.quantized()) {
    const size_t groups = source.in / source.group;
    const size_t per_matrix = source.out * groups;
    m.scale_dtype = source.scales->dtype;
    m.bias_dtype = source.biases->dtype;
    const size_t ss = m.scale_dtype == io::DType::F32 ? 4 : 2;
    const size_t bs = m.bias_dtype == io::DType::F32 ? 4 : 2;
    m.scales = source.scales->data + e * per_matrix * ss;
    m.biases = source.biases->data + e * per_matrix * bs;
  }
  return m;
}

void reserve_x(const MatView& m, int64_t rows, PreparedX& out, Arena& arena, Inputs inputs) {
  out.rows = rows;
  out.in = m.in;
  out.bits = m.bits;
  out.group = m.group;
  out.int8 = inputs == Inputs::Int8 && int8_rows_kernel(m) != nullptr;
  out.int16 = !out.int8 && inputs != Inputs::F32 && has_int16_dot() && (m.bits == 4 || m.bits == 8);
  const bool floats = !out.int8 && !out.int16;
  const int64_t groups = m.bits == 0 ? 0 : m.in / m.group;
  out.x = floats ? arena.take<float>(rows * m.in) : std::span<float>();
  out.xq = out.int16 ? arena.take<int16_t>(rows * m.in) : std::span<int16_t>();
  out.xb = out.int8 ? arena.take<int8_t>(rows * m.in) : std::span<int8_t>();
  out.xscale = floats ? std::span<float>() : arena.take<float>(rows * groups);
  out.sums = arena.take<float>(rows * groups);
}

void fill_x(const MatView& m, std::span<const float* const> rows, PreparedX& out, int64_t begin, int64_t end) {
  const int64_t groups = m.bits == 0 ? 0 : m.in / m.group;
  for (int64_t t = begin; t < end; ++t) {
    const float* src = rows[t];
    if (out.int8) {
      quantize_row<int8_t, 127>(src, m, out.xb.data() + t * m.in, out.xscale.data() + t * groups);
    } else if (out.int16) {
      quantize_row<int16_t, 32767>(src, m, out.xq.data() + t * m.in, out.xscale.data() + t * groups);
    } else if (m.bits == 4) {
      // decode4 yields the even elements of a kStep block, then the odd ones: order the inputs the same way.
      constexpr int L = simd::kLanes;
      float* dst = out.x.data() + t * m.in;
      for (int64_t i = 0; i < m.in; i += simd::kStep)
        for (int j = 0; j < L; ++j) {
          dst[i + j] = src[i + 2 * j];
          dst[i + L + j] = src[i + 2 * j + 1];
        }
    } else {
      std::memcpy(out.x.data() + t * m.in, src, m.in * sizeof(float));
    }
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0;
      if (out.int8) {
        // The rounded inputs' sum: the bias term then sees the same inputs as the weights' term, so their
        // rounding errors cancel as they do in (s * q + b) * x (about half the error of the exact sums).
        int32_t q = 0;
        for (int k = 0; k < m.group; ++k) q += out.xb[t * m.in + g * m.group + k];
        s = static_cast<float>(q) * out.xscale[t * groups + g];
      } else {
        for (int k = 0; k < m.group; ++k) s += src[g * m.group + k];
      }
      out.sums[t * groups + g] = s;
    }
  }
}

void prepare_x(const MatView& m, std::span<const float* const> rows, PreparedX& out, Arena& arena, Inputs inputs) {
  reserve_x(m, static_cast<int64_t>(rows.size()), out, arena, inputs);
  fill_x(m, rows, out, 0, out.rows);
}

void gather_x(const PreparedX& src, std::span<const int64_t> rows, PreparedX& dst) {
  const int64_t in = src.in;
  const int64_t groups = src.bits == 0 ? 0 : in / src.group;
  auto copy = [&](auto from, auto to, int64_t width) {
    if (from.empty()) return;
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(to.data() + i * width, from.data() + rows[i] * width, width * sizeof(from[0]));
  };
  copy(src.x, dst.x, in);
  copy(src.xq, dst.xq, in);
  copy(src.xb, dst.xb, in);
  copy(src.xscale, dst.xscale, groups);
  copy(src.sums, dst.sums, groups);
}

void matmul_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                 int64_t y_stride) {
  if (m.bits == 0) {
    matmul_plain(m, x, row_begin, row_end, y, y_stride);
    return;
  }
  if (x.int8) {
    int8_rows_kernel(m)(m, x, row_begin, row_end, y, y_stride);
    return;
  }
  pick_quant_kernel(m, x.int16)(m, x, row_begin, row_end, y, y_stride);
}

void dequant_row(const MatView& m, int64_t row, float* out) {
  if (m.bits == 0) {
    decode_plain_row(m, row, out);
    return;
  }
  const uint8_t* p = m.weight + row * m.row_bytes;
  const int64_t groups = m.in / m.group;
  for (int64_t k = 0; k < m.in; ++k) {
    const int64_t g = k / m.group;
    const float s = io::load_float(m.scales, m.scale_dtype, row * groups + g);
    const float b = io::load_float(m.biases, m.bias_dtype, row * groups + g);
    const float q = static_cast<float>(io::quant_value(p, m.row_bytes, m.bits, k));
    const float sq = s * q;
    out[k] = sq + b;
  }
}

}  // namespace studio::cpu
