// The model configuration the engine computes with (parsed and validated from config.json on the TS side by
// common/model-config.ts, checked again here for what the engine relies on).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "io/checkpoint.h"

namespace studio::model {

struct ModelConfig {
  int64_t hidden = 0;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;
  float rope_theta = 0;
  float rms_eps = 0;
  int64_t intermediate = 0;
  int experts = 0;
  int top_k = 0;
  int64_t vocab = 0;
  int64_t max_positions = 0;
  io::QuantSpec quant;  // bits 0: none
  std::map<std::string, io::QuantSpec> quant_overrides;

  /** The spec for module `path`: its override, else the global one (bits 0 when there is none). */
  io::QuantSpec quant_for(const std::string& path) const {
    auto it = quant_overrides.find(path);
    return it == quant_overrides.end() ? quant : it->second;
  }
  int64_t q_width() const { return static_cast<int64_t>(heads) * head_dim; }
  int64_t kv_width() const { return static_cast<int64_t>(kv_heads) * head_dim; }
};

/** Layers [start, end) plus the embedding (first stage) and final norm + lm_head (last stage). */
struct ShardRange {
  int start = 0;
  int end = 0;
  bool embed = false;
  bool head = false;
};

}  // namespace studio::model
