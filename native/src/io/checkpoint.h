// A checkpoint directory: model.safetensors.index.json (or a single model.safetensors) and its shards.
// Shards are mapped lazily, so an engine maps only the files holding its own tensors. Lookups validate
// dtype and shape and build MatrixSource views for plain and MLX-quantized weights.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/tensor.h"

namespace studio::io {

struct QuantSpec {
  int bits = 0;
  int group = 0;
};

class Checkpoint {
 public:
  /** Reads the index (or finds the single file); throws naming the index file on bad JSON. */
  explicit Checkpoint(std::string dir);

  bool has(const std::string& name) const;
  /** The tensor, mapping its shard on first use; throws "<file>: tensor <name>: ..." when absent. */
  const HostTensor& tensor(const std::string& name);
  /** A float-like vector of length n (norm weights, biases): F32, F16 or BF16. */
  const HostTensor& vector(const std::string& name, int64_t n);
  /** A float32 vector of length n (e_score_correction_bias). */
  const HostTensor& f32_vector(const std::string& name, int64_t n);
  /**
   * The matrix at module path (e.g. "model.layers.0.self_attn.q_proj"), shape [experts?, out, in].
   * quant: the spec that applies if "<path>.scales" exists (override or global; bits 0 when none).
   */
  MatrixSource matrix(const std::string& path, int64_t experts, int64_t out, int64_t in, QuantSpec quant);

  /** Distinct shard files mapped so far. */
  std::vector<std::string> mapped_files() const;

 private:
  std::string dir_;
  std::string index_file_;
  std::map<std::string, std::string> weight_map_;  // tensor -> shard file name
  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;

  const SafetensorsFile& shard(const std::string& file);
  [[noreturn]] void fail(const HostTensor& t, const std::string& why) const;
};

}  // namespace studio::io
