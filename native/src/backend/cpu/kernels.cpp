#include "backend/cpu/kernels.h"

#include <algorithm>

#include "backend/cpu/simd.h"
#include "io/quant_format.h"

namespace studio::cpu {

namespace {

// Tokens per tile: the tile's inputs stay in L2 while a row's groups are unpacked once for all of them.
constexpr int64_t kTile = 16;
constexpr int kMaxGroup = 128;

/** Unpacks group g of a packed row into buf in the lane layout that prepare_x gives the inputs. */
inline void decode_group(const uint8_t* row, size_t row_bytes, int bits, int group, int64_t g, float* buf) {
  if (bits == 4) {
    const uint8_t* p = row + g * group / 2;
    for (int i = 0; i < group; i += 16) simd::decode4(p + i / 2, buf + i);
    return;
  }
  if (bits == 8) {
    const uint8_t* p = row + g * group;
    for (int i = 0; i < group; i += 8) simd::decode8(p + i, buf + i);
    return;
  }
  io::unpack_values(row, row_bytes, bits, g * group, group, buf);
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

void matmul_quant(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                  int64_t y_stride) {
  alignas(64) float buf[kMaxGroup];
  float acc[kTile];
  const int64_t groups = m.in / m.group;
  for (int64_t t0 = 0; t0 < x.rows; t0 += kTile) {
    const int64_t t1 = std::min(x.rows, t0 + kTile);
    for (int64_t o = row_begin; o < row_end; ++o) {
      const uint8_t* row = m.weight + o * m.row_bytes;
      std::fill(acc, acc + kTile, 0.0f);
      for (int64_t g = 0; g < groups; ++g) {
        decode_group(row, m.row_bytes, m.bits, m.group, g, buf);
        const float s = io::load_float(m.scales, m.scale_dtype, o * groups + g);
        const float b = io::load_float(m.biases, m.bias_dtype, o * groups + g);
        for (int64_t t = t0; t < t1; ++t) {
          const float d = simd::dot(buf, x.x.data() + t * m.in + g * m.group, m.group);
          const float part = s * d + b * x.sums[t * groups + g];
          acc[t - t0] = acc[t - t0] + part;
        }
      }
      for (int64_t t = t0; t < t1; ++t) y[t * y_stride + o] = acc[t - t0];
    }
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

void prepare_x(const MatView& m, std::span<const float* const> rows, PreparedX& out) {
  out.rows = static_cast<int64_t>(rows.size());
  out.in = m.in;
  out.bits = m.bits;
  out.group = m.group;
  out.x.resize(out.rows * m.in);
  if (m.bits == 0) {
    for (int64_t t = 0; t < out.rows; ++t) std::memcpy(out.x.data() + t * m.in, rows[t], m.in * sizeof(float));
    out.sums.clear();
    return;
  }
  const int64_t groups = m.in / m.group;
  out.sums.resize(out.rows * groups);
  for (int64_t t = 0; t < out.rows; ++t) {
    const float* src = rows[t];
    float* dst = out.x.data() + t * m.in;
    if (m.bits == 4) {
      // decode4 puts even elements in lanes 0..7 and odd ones in 8..15: order the inputs the same way.
      for (int64_t i = 0; i < m.in; i += 16)
        for (int j = 0; j < 8; ++j) {
          dst[i + j] = src[i + 2 * j];
          dst[i + 8 + j] = src[i + 2 * j + 1];
        }
    } else {
      std::memcpy(dst, src, m.in * sizeof(float));
    }
    for (int64_t g = 0; g < groups; ++g) {
      float s = 0;
      for (int k = 0; k < m.group; ++k) s += src[g * m.group + k];
      out.sums[t * groups + g] = s;
    }
  }
}

void matmul_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                 int64_t y_stride) {
  if (m.bits == 0) {
    matmul_plain(m, x, row_begin, row_end, y, y_stride);
    return;
  }
  matmul_quant(m, x, row_begin, row_end, y, y_stride);
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
