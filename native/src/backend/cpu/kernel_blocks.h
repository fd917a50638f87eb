// Building blocks the cpu kernels share (kernels.cpp: the float path and the dispatch; kernels_int16.cpp: the
// int16 path of AVX2 and AVX-512 builds; kernels_int8.cpp: the int8 path): tile sizes, element loads of scales and
// biases, token blocks, and the integer paths' entry points.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "backend/cpu/kernels.h"
#include "io/quant_format.h"

namespace studio::cpu::blocks {

// Tokens per tile of the float path: the tile's inputs stay in L2 while a row's groups are unpacked once for
// all of them.
inline constexpr int64_t kTile = 16;
inline constexpr int kMaxGroup = 128;

/** Element i of a float-like array of dtype D, inlined (scales and biases are read once per group). */
template <io::DType D>
inline float element(const uint8_t* p, int64_t i, io::DType runtime) {
  if constexpr (D == io::DType::F32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  } else if constexpr (D == io::DType::BF16) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  } else {
    return io::load_float(p, runtime, i);
  }
}

/**
 * Isa::kLanes consecutive float-like elements of dtype D as one float vector of an integer path's ISA (Isa: a
 * struct of static vector operations, as kernels_int16.cpp and kernels_int8.cpp define): bf16 and f32 widen in
 * registers, others go one by one.
 */
template <class Isa, io::DType D>
inline typename Isa::FVec element_lanes(const uint8_t* p, int64_t i, io::DType runtime) {
  if constexpr (D == io::DType::F32) {
    return Isa::load_f(reinterpret_cast<const float*>(p + 4 * i));
  } else if constexpr (D == io::DType::BF16) {
    return Isa::widen_bf16(p + 2 * i);
  } else {
    alignas(64) float f[Isa::kLanes];
    for (int k = 0; k < Isa::kLanes; ++k) f[k] = io::load_float(p, runtime, i + k);
    return Isa::load_f(f);
  }
}

/**
 * Row o's per-group factors for an integer path's small-batch loop: bias_g, and scale_g * xscale_{t,g} for each of
 * the batch's tokens t, Isa::kLanes groups per step (the same single multiplications as one at a time, so the
 * same bits).
 */
template <class Isa, io::DType SD, io::DType BD>
inline void row_factors(const MatView& m, int64_t o, int64_t groups, const float* xscale, int64_t tokens,
                        float* scale_x, float* bias) {
  const int64_t base = o * groups;
  int64_t g = 0;
  for (; g + Isa::kLanes <= groups; g += Isa::kLanes) {
    const typename Isa::FVec s = element_lanes<Isa, SD>(m.scales, base + g, m.scale_dtype);
    for (int64_t t = 0; t < tokens; ++t)
      Isa::store_f(scale_x + t * groups + g, Isa::mul_f(s, Isa::load_f(xscale + t * groups + g)));
    Isa::store_f(bias + g, element_lanes<Isa, BD>(m.biases, base + g, m.bias_dtype));
  }
  for (; g < groups; ++g) {
    const float s = element<SD>(m.scales, base + g, m.scale_dtype);
    for (int64_t t = 0; t < tokens; ++t) scale_x[t * groups + g] = s * xscale[t * groups + g];
    bias[g] = element<BD>(m.biases, base + g, m.bias_dtype);
  }
}

/** Tokens that share one pass over a decoded group in the tiled path (their inputs stay in registers). */
inline constexpr int kBlock = 4;

/**
 * Up to this many tokens (a batch of decode steps) run the small-batch kernels: each weight row is streamed
 * once from memory for all of them, in blocks of kBlock tokens whose accumulators stay in registers. More
 * tokens (prefill) take the tiled path of the float kernels, or, in the int16 path, batches of this many tokens
 * one after the other. All run the same arithmetic per token.
 */
inline constexpr int64_t kSmallBatch = 8;

/** Calls body(t0, std::integral_constant<int, n>) for each block of n = min(kBlock, rows - t0) tokens. */
template <typename Body>
inline void for_each_block(int64_t rows, Body&& body) {
  for (int64_t t0 = 0; t0 < rows; t0 += kBlock) {
    switch (std::min<int64_t>(kBlock, rows - t0)) {
      case 1: body(t0, std::integral_constant<int, 1>{}); break;
      case 2: body(t0, std::integral_constant<int, 2>{}); break;
      case 3: body(t0, std::integral_constant<int, 3>{}); break;
      default: body(t0, std::integral_constant<int, 4>{}); break;
    }
  }
}

/** One kernel: y for rows [row_begin, row_end) of m and every prepared input row. */
using QuantRowsFn = void (*)(const MatView&, const PreparedX&, int64_t, int64_t, float*, int64_t);

/** One batch of an integer path: tokens [t_begin, t_end) on rows [row_begin, row_end). */
using BatchFn = void (*)(const MatView&, const PreparedX&, int64_t, int64_t, int64_t, int64_t, float*, int64_t);

/**
 * The integer paths run any number of tokens as batches of kSmallBatch tokens, each streaming the row range once:
 * a batch's integer inputs (8 x 4 KiB of int16 at 2048 wide) stay in L1 while the rows pass, where a 16-token tile
 * with a widened row in a buffer read its inputs from L2 for every row (46 against 83 Gmac/s per core on a 1024 x
 * 2048 matrix). The row range is a work item's (kRowChunk rows), so its packed bytes stay in L2 between batches.
 * Every token gets the same arithmetic whatever the batching.
 */
template <BatchFn Batch>
void in_small_batches(const MatView& m, const PreparedX& x, int64_t row_begin, int64_t row_end, float* y,
                      int64_t y_stride) {
  for (int64_t t0 = 0; t0 < x.rows; t0 += kSmallBatch)
    Batch(m, x, t0, std::min(x.rows, t0 + kSmallBatch), row_begin, row_end, y, y_stride);
}

/** The int16 kernel for m's format (4/8 bits), or nullptr where the build has no int16 dot product. */
QuantRowsFn int16_rows_kernel(const MatView& m);


/** The int8 kernel for m's format (4 bits, group 32/64/128), or nullptr where the build has no int8 path. */
QuantRowsFn int8_rows_kernel(const MatView& m);

/**
 * One row's integer inputs for m's format: per group, scale = max|x_g| / Levels and q = round(x * (Levels /
 * max|x_g|)) to even, in [-Levels, Levels] (int16: 32767, int8: 127). For 4-bit matrices each chunk of 64 values
 * (32 for group 32) is laid out as [evens, odds], like the packed weights' nibbles; 8-bit keeps the order.
 */
template <typename T, int Levels>
void quantize_row(const float* src, const MatView& m, T* dst, float* scale) {
  constexpr float levels = Levels;
  const int64_t groups = m.in / m.group;
  const int chunk = m.bits == 4 ? std::min(64, m.group) : m.group;
  const int half = chunk / 2;
  for (int64_t g = 0; g < groups; ++g) {
    const float* xg = src + g * m.group;
    float max_abs = 0;
    for (int k = 0; k < m.group; ++k) max_abs = std::max(max_abs, std::fabs(xg[k]));
    scale[g] = max_abs / levels;
    const float inv = max_abs > 0 ? levels / max_abs : 0.0f;
    auto q = [&](float v) { return static_cast<T>(std::clamp(std::nearbyint(v * inv), -levels, levels)); };
    T* dg = dst + g * m.group;
    if (m.bits != 4) {
      for (int k = 0; k < m.group; ++k) dg[k] = q(xg[k]);
      continue;
    }
    for (int c = 0; c < m.group; c += chunk)
      for (int j = 0; j < half; ++j) {
        dg[c + j] = q(xg[c + 2 * j]);
        dg[c + half + j] = q(xg[c + 2 * j + 1]);
      }
  }
}

}  // namespace studio::cpu::blocks
