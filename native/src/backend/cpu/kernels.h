// CPU compute kernels on weights exactly as the checkpoint stores them (packed MLX affine or plain
// bf16/f16/f32), never dequantizing a whole matrix. Each output element is computed by one call in a fixed
// order: per group g of row o, d = dot(q_g, x_g) in the SIMD lane layout, acc += scale*d + bias*sum(x_g).
// The same code runs for one token or many (tokens are tiled; a group is unpacked once per tile and reused).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/cpu/workspace.h"
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

/**
 * Inputs rearranged once per matmul for one weight format: lane-ordered values and per-group sums. Where the
 * build has 16-bit integer pair dots (x86 with AVX2 or AVX-512), 4- and 8-bit matrices take the inputs as int16 per
 * group (xq = round(x / xscale), xscale = max|x_g| / 32767, error <= 1.5e-5 of the group's largest input) and
 * sum q * xq exactly in integers: less cpu per decoded token than the float path (bench/RESULTS.md). In the
 * int8 precision mode (Inputs::Int8; x86 builds with AVX2, aarch64 with dotprod), 4-bit matrices take int8 inputs instead
 * (xscale = max|x_g| / 127; kernels_int8.cpp), faster again and coarser.
 * The arrays are views into an Arena (workspace.h): valid until its next reset().
 */
struct PreparedX {
  int64_t rows = 0;
  int64_t in = 0;
  int bits = 0;
  int group = 0;
  bool int16 = false;
  bool int8 = false;
  std::span<float> x;        // float path, rows * in
  std::span<int16_t> xq;     // int16 path, rows * in
  std::span<int8_t> xb;      // int8 path, rows * in
  std::span<float> xscale;   // int16 and int8 paths, rows * groups
  std::span<float> sums;     // quantized formats, rows * groups
};

/** True when this build has the int16 path (prepare_x uses it unless asked for exact f32 inputs). */
bool has_int16_dot();
/** True when this build has the int8 path (x86 with AVX2, aarch64 with dotprod): Inputs::Int8 uses it for 4-bit matrices. */
bool has_int8_dot();

/**
 * How a matmul's inputs are prepared: F32 keeps them exact (the router); Default is the build's precise path
 * (int16 for 4/8-bit matrices where the build has it, else f32); Int8 is the fast precision mode, int8 inputs for
 * 4-bit matrices where the build has the int8 path, Default otherwise.
 */
enum class Inputs { F32, Default, Int8 };

/** Prepares rows (each `in` floats) for matrices of m's format. */
void prepare_x(const MatView& m, std::span<const float* const> rows, PreparedX& out, Arena& arena,
               Inputs inputs = Inputs::Default);

/** prepare_x in two steps: take room for `rows` rows from the arena, then fill rows [begin, end) (any thread). */
void reserve_x(const MatView& m, int64_t rows, PreparedX& out, Arena& arena, Inputs inputs = Inputs::Default);
void fill_x(const MatView& m, std::span<const float* const> rows, PreparedX& out, int64_t begin, int64_t end);

/** dst row i = src row rows[i], as prepared (dst reserved for rows.size() rows of src's format). */
void gather_x(const PreparedX& src, std::span<const int64_t> rows, PreparedX& dst);

/** y[t * y_stride + o] = (x_t W^T)[o] for o in [row_begin, row_end) and every prepared row t. */
void matmul_rows(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                 int64_t y_stride);

/** out[k] = W[row][k] dequantized (embedding gather). */
void dequant_row(const MatView& m, int64_t row, float* out);

}  // namespace studio::cpu
