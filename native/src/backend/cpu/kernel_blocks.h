// Building blocks the cpu kernels share (kernels.cpp: the float path and the dispatch; kernels_int16.cpp: the
// int16 path of AVX2 and AVX-512 builds; kernels_int8.cpp: the int8 path): tile sizes, element loads of scales and
// biases, token blocks, and the integer paths' entry points.
#pragma once

#include <algorithm>
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

/** The int16 kernel for m's format (4/8 bits), or nullptr where the build has no int16 dot product. */
QuantRowsFn int16_rows_kernel(const MatView& m);

/** Lays out one row's int16 inputs (4-bit: chunks of 64, or 32 for group 32, as [evens, odds]). */
void quantize_row_int16(const float* src, const MatView& m, int16_t* dst, float* scale);

/** The int8 kernel for m's format (4 bits, group 32/64/128), or nullptr where the build has no int8 path. */
QuantRowsFn int8_rows_kernel(const MatView& m);

/** Lays out one row's int8 inputs (chunks of 64, or 32 for group 32, as [evens, odds]). */
void quantize_row_int8(const float* src, const MatView& m, int8_t* dst, float* scale);

}  // namespace studio::cpu::blocks
