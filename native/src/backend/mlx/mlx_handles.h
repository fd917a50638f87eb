// The handles the mlx backend gives the model: weights, vectors and activations as mlx::core arrays. The model
// never looks inside; only mlx_backend.cpp and mlx_kv_cache.cpp do.
#pragma once

#include <mlx/mlx.h>

#include <optional>
#include <stdexcept>

#include "backend/backend.h"

namespace studio::mlxb {

namespace mx = mlx::core;

/** A weight matrix: plain [experts?, out, in] or MLX affine-quantized (packed uint32 + scales + biases). */
class MlxMatrix final : public Matrix {
 public:
  MlxMatrix(mx::array weight, std::optional<mx::array> scales, std::optional<mx::array> biases, int bits, int group)
      : weight(std::move(weight)), scales(std::move(scales)), biases(std::move(biases)), bits(bits), group(group) {}

  bool quantized() const { return bits != 0; }

  mx::array weight;
  std::optional<mx::array> scales;
  std::optional<mx::array> biases;
  int bits = 0;
  int group = 0;
};

/** A 1-D weight (norm weight in its stored dtype, routing bias in f32). */
class MlxVector final : public Vector {
 public:
  explicit MlxVector(mx::array data) : data(std::move(data)) {}
  mx::array data;
};

/**
 * [rows, cols] activations. An operation replaces `value` with a new (lazy) array rather than writing into
 * it: MLX arrays are immutable, and a handle passed as both input and output then just rebinds.
 */
class MlxActivations final : public Activations {
 public:
  const mx::array& get() const {
    if (!value) throw std::logic_error("mlx backend: activations read before anything wrote them");
    return *value;
  }
  void set(mx::array a) { value = std::move(a); }

  std::optional<mx::array> value;
};

}  // namespace studio::mlxb
