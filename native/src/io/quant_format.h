// MLX affine quantization: w = scale * q + bias per group of `group` consecutive inputs. q is unsigned with
// `bits` bits; a row is one LSB-first bit stream (element k at bits [k*bits, (k+1)*bits)), so 3, 5 and 6 bits
// straddle byte and word boundaries. Rows start on 32-bit word boundaries because in*bits is a multiple of 32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace studio::io {

inline bool supported_bits(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
}

inline bool supported_group(int group) { return group == 32 || group == 64 || group == 128; }

/** q of element k in a packed row of row_bytes bytes; never reads past the row. */
inline uint32_t quant_value(const uint8_t* row, size_t row_bytes, int bits, int64_t k) {
  const uint64_t bit = static_cast<uint64_t>(k) * bits;
  const size_t byte = bit >> 3;
  const unsigned shift = bit & 7;
  uint32_t window = row[byte];
  if (shift + bits > 8 && byte + 1 < row_bytes) window |= static_cast<uint32_t>(row[byte + 1]) << 8;
  return (window >> shift) & ((1u << bits) - 1);
}

/** Unpacks n values starting at element first into out (natural order). */
inline void unpack_values(const uint8_t* row, size_t row_bytes, int bits, int64_t first, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(quant_value(row, row_bytes, bits, first + i));
}

}  // namespace studio::io
