// CPU compute kernels on weights exactly as the checkpoint stores them (packed MLX affine or plain
// bf16/f16/f32), never dequantizing a whole matrix. Each output element is computed by one call in a fixed
// order: per group g of row o, d = dot(q_g, x_g) in the SIMD lane layout, acc += scale*d + bias*sum(x_g).
// The same code runs for one token or many (tokens are tiled; a group is unpacked once per tile and reused).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "io/tensor.h"

namespace studio::cpu {

/** One matrix (or one expert of a stacked matrix) as kernels see it. */
struct MatView {
  const uint8_t* weight = nullptr;
  size_t row_bytes = 0;
  io::DType weight_dtype = io::DType::F32;
  const uint8_t* scales = nullptr;
  const uint8_t* biases = nullptr;
  io::DType scale_dtype = io::DType::F32;
  io::DType bias_dtype = io::DType::F32;
  int bits = 0;  // 0: plain
  int group = 0;
  int64_t out = 0;
  int64_t in = 0;
};

/** The view of expert e (or of the single matrix when source.experts == 0 and e == 0). */
MatView view_of(const io::MatrixSource& source, int64_t e);

/** Inputs rearranged once per matmul for one weight format: lane-ordered values and per-group sums. */
struct PreparedX {
  int64_t rows = 0;
  int64_t in = 0;
  int bits = 0;
  int group = 0;
  std::vector<float> x;
  std::vector<float> sums;
};

/** Prepares rows (each `in` floats) for matrices of m's format. */
void prepare_x(const MatView& m, std::span<const float* const> rows, PreparedX& out);

/** y[t * y_stride + o] = (x_t W^T)[o] for o in [row_begin, row_end) and every prepared row t. */
void matmul_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                 int64_t y_stride);

/** out[k] = W[row][k] dequantized (embedding gather). */
void dequant_row(const MatView& m, int64_t row, float* out);

}  // namespace studio::cpu
