// Tensors as the checkpoint stores them: a dtype, a shape and bytes inside a memory-mapped shard.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace studio::io {

/** Element types the engine computes with; Other marks a dtype the file may hold but the engine cannot use. */
enum class DType : uint8_t { F32, F16, BF16, U32, Other };

const char* dtype_name(DType d);

/** One tensor viewed in place (the shard's mapping outlives it). */
struct HostTensor {
  std::string name;
  std::string file;
  DType dtype = DType::Other;
  std::string dtype_text;  // as written in the header, for messages
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  /** Where data starts in `file`: a backend that copies weights reads them from here rather than the mapping. */
  uint64_t file_offset = 0;

  int64_t numel() const;
  std::string shape_text() const;
};

/**
 * A weight matrix y = x W^T as stored: plain [experts?, out, in] in f32/f16/bf16, or MLX affine-quantized:
 * weight uint32 [experts?, out, in*bits/32], scales and biases [experts?, out, in/group] (f32/f16/bf16).
 * experts == 0 means a single matrix; otherwise the expert matrices are stacked, expert e contiguous.
 */
struct MatrixSource {
  HostTensor weight;
  std::optional<HostTensor> scales;
  std::optional<HostTensor> biases;
  int bits = 0;  // 0: plain
  int group = 0;
  int64_t experts = 0;
  int64_t out = 0;
  int64_t in = 0;

  bool quantized() const { return bits != 0; }
  /** Bytes of one row of one matrix, packed (quantized) or plain. */
  size_t row_bytes() const;
  /** Bytes of all parts (weight + scales + biases). */
  size_t total_bytes() const;
};

/** bf16 / f16 / f32 element i of p as float. */
float load_float(const uint8_t* p, DType d, size_t i);
float bf16_to_float(uint16_t v);
float f16_to_float(uint16_t v);

}  // namespace studio::io
