// Hidden states cross stages in the backend's activation dtype (docs/architecture.md): f32 for cpu, bf16 for mlx.
// The model takes and gives f32; these convert at the JS boundary. bf16 -> f32 is exact, and f32 -> bf16 is
// exact too for values the mlx backend produced (they are bf16 already); other values round to nearest even.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace studio::addon {

enum class WireDtype { F32, BF16 };

inline size_t wire_element_bytes(WireDtype d) { return d == WireDtype::BF16 ? 2 : 4; }

inline const char* wire_dtype_name(WireDtype d) { return d == WireDtype::BF16 ? "bf16" : "f32"; }

/** The f32 values of `bytes` hidden bytes in dtype d; `where` names the item in the error. */
inline std::vector<float> decode_hidden(const uint8_t* bytes, size_t length, WireDtype d, const std::string& where) {
  const size_t width = wire_element_bytes(d);
  if (length % width != 0)
    throw std::invalid_argument(where + ".hidden byte length " + std::to_string(length) + " is not a multiple of " +
                                std::to_string(width) + " (" + wire_dtype_name(d) + ")");
  std::vector<float> out(length / width);
  if (d == WireDtype::F32) {
    std::memcpy(out.data(), bytes, length);
    return out;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

/** f32 values as bf16 bytes (round to nearest even; NaN stays NaN). */
inline std::vector<uint16_t> to_bf16(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
      out[i] = static_cast<uint16_t>((bits >> 16) | 0x40);
      continue;
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

}  // namespace studio::addon
