// The weights of one shard, looked up in the checkpoint, validated against the config and handed to the
// backend. Loading reads every byte once and reports progress: a backend computing on the mapping (cpu) has it
// faulted in (so the first forward does not fault pages in); one that reads the weights into its own memory
// (mlx) leaves the mapping untouched.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "model/config.h"

namespace studio::model {

struct LayerWeights {
  std::unique_ptr<Vector> input_norm, post_norm, q_norm, k_norm, route_bias;
  std::unique_ptr<Matrix> q, k, v, o, router, gate, up, down;
  /** Bytes read per forward regardless of routing: attention, norms, router. */
  size_t dense_bytes = 0;
  /** Bytes of one expert's gate + up + down (weights, scales, biases). */
  size_t expert_bytes = 0;
};

struct ShardWeights {
  std::unique_ptr<Matrix> embed;       // first stage only
  std::unique_ptr<Vector> final_norm;  // last stage only
  std::unique_ptr<Matrix> lm_head;     // last stage only
  std::vector<LayerWeights> layers;
  size_t embed_row_bytes = 0;
  size_t head_bytes = 0;  // final norm + lm_head
  size_t total_bytes = 0;
};

using ProgressFn = std::function<void(double done, double total)>;

/** Finds, validates and loads the shard's tensors; throws naming the file and the tensor at fault. */
ShardWeights load_weights(io::Checkpoint& checkpoint, const ModelConfig& config, const ShardRange& range,
                          Backend& backend, const ProgressFn& progress);

}  // namespace studio::model
