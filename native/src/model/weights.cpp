#include "model/weights.h"

#include <optional>
#include <stdexcept>
#include <string>

namespace studio::model {

namespace {

// Collects every tensor the shard uses, validated, before anything is handed to the backend.
class Collector {
 public:
  Collector(io::Checkpoint& c, const ModelConfig& cfg) : ckpt_(c), cfg_(cfg) {}

  io::MatrixSource matrix(const std::string& path, int64_t experts, int64_t out, int64_t in) {
    io::MatrixSource m = ckpt_.matrix(path, experts, out, in, cfg_.quant_for(path));
    // Note the checkpoint's own tensors (stable addresses), not the copies inside m.
    note(ckpt_.tensor(path + ".weight"));
    if (m.scales) note(ckpt_.tensor(path + ".scales"));
    if (m.biases) note(ckpt_.tensor(path + ".biases"));
    return m;
  }
  const io::HostTensor& vector(const std::string& name, int64_t n) { return note(ckpt_.vector(name, n)); }
  const io::HostTensor& f32_vector(const std::string& name, int64_t n) { return note(ckpt_.f32_vector(name, n)); }

  size_t total() const { return total_; }
  const std::vector<const io::HostTensor*>& tensors() const { return tensors_; }

 private:
  const io::HostTensor& note(const io::HostTensor& t) {
    tensors_.push_back(&t);
    total_ += t.bytes;
    return t;
  }
  io::Checkpoint& ckpt_;
  const ModelConfig& cfg_;
  std::vector<const io::HostTensor*> tensors_;
  size_t total_ = 0;
};

struct LayerSources {
  const io::HostTensor *input_norm, *post_norm, *q_norm, *k_norm, *route_bias;
  io::MatrixSource q, k, v, o, router, gate, up, down;
};

LayerSources collect_layer(Collector& c, const ModelConfig& cfg, int layer) {
  const std::string p = "model.layers." + std::to_string(layer);
  LayerSources s{};
  s.input_norm = &c.vector(p + ".input_layernorm.weight", cfg.hidden);
  s.post_norm = &c.vector(p + ".post_attention_layernorm.weight", cfg.hidden);
  s.q_norm = &c.vector(p + ".self_attn.q_norm.weight", cfg.q_width());
  s.k_norm = &c.vector(p + ".self_attn.k_norm.weight", cfg.kv_width());
  s.q = c.matrix(p + ".self_attn.q_proj", 0, cfg.q_width(), cfg.hidden);
  s.k = c.matrix(p + ".self_attn.k_proj", 0, cfg.kv_width(), cfg.hidden);
  s.v = c.matrix(p + ".self_attn.v_proj", 0, cfg.kv_width(), cfg.hidden);
  s.o = c.matrix(p + ".self_attn.o_proj", 0, cfg.hidden, cfg.q_width());
  s.router = c.matrix(p + ".block_sparse_moe.gate", 0, cfg.experts, cfg.hidden);
  s.route_bias = &c.f32_vector(p + ".block_sparse_moe.e_score_correction_bias", cfg.experts);
  const std::string e = p + ".block_sparse_moe.switch_mlp";
  s.gate = c.matrix(e + ".gate_proj", cfg.experts, cfg.intermediate, cfg.hidden);
  s.up = c.matrix(e + ".up_proj", cfg.experts, cfg.intermediate, cfg.hidden);
  s.down = c.matrix(e + ".down_proj", cfg.experts, cfg.hidden, cfg.intermediate);
  return s;
}

/** Reads one byte per page so the mapping is resident; reports progress every few MiB. */
void touch_all(const std::vector<const io::HostTensor*>& tensors, size_t total, const ProgressFn& progress) {
  constexpr size_t kPage = 4096;
  constexpr size_t kReportEvery = 64ull << 20;
  size_t done = 0, last = 0;
  volatile uint8_t sink = 0;
  for (const io::HostTensor* t : tensors) {
    uint8_t acc = 0;
    for (size_t off = 0; off < t->bytes; off += kPage) acc ^= t->data[off];
    sink = sink ^ acc;
    done += t->bytes;
    if (progress && done - last >= kReportEvery) {
      progress(static_cast<double>(done), static_cast<double>(total));
      last = done;
    }
  }
  if (progress) progress(static_cast<double>(done), static_cast<double>(total));
}

}  // namespace

ShardWeights load_weights(io::Checkpoint& checkpoint, const ModelConfig& cfg, const ShardRange& range,
                          Backend& backend, const ProgressFn& progress) {
  Collector c(checkpoint, cfg);
  std::optional<io::MatrixSource> embed, lm_head;
  const io::HostTensor* final_norm = nullptr;
  if (range.embed) embed = c.matrix("model.embed_tokens", 0, cfg.vocab, cfg.hidden);
  std::vector<LayerSources> layers;
  std::vector<size_t> dense_bytes;
  for (int l = range.start; l < range.end; ++l) {
    const size_t before = c.total();
    layers.push_back(collect_layer(c, cfg, l));
    const LayerSources& s = layers.back();
    const size_t experts_total = s.gate.total_bytes() + s.up.total_bytes() + s.down.total_bytes();
    dense_bytes.push_back(c.total() - before - experts_total);
  }
  if (range.head) {
    final_norm = &c.vector("model.norm.weight", cfg.hidden);
    lm_head = c.matrix("lm_head", 0, cfg.vocab, cfg.hidden);
  }
  // A backend that computes on the mapping has it faulted in now; one that reads the weights into its own
  // memory (mlx) must not, or the shard would be resident twice. It reports progress layer by layer instead.
  const bool in_mapping = backend.weights_in_mapping();
  if (in_mapping) touch_all(c.tensors(), c.total(), progress);
  size_t loaded = 0;
  auto report = [&](size_t bytes) {
    loaded += bytes;
    if (!in_mapping && progress) progress(static_cast<double>(loaded), static_cast<double>(c.total()));
  };

  ShardWeights w;
  w.total_bytes = c.total();
  if (embed) {
    w.embed = backend.matrix(*embed);
    w.embed_row_bytes = embed->total_bytes() / cfg.vocab;
    report(embed->total_bytes());
  }
  if (lm_head) {
    w.lm_head = backend.matrix(*lm_head);
    w.final_norm = backend.vector(*final_norm);
    w.head_bytes = lm_head->total_bytes() + final_norm->bytes;
    report(w.head_bytes);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSources& s = layers[i];
    LayerWeights lw;
    lw.input_norm = backend.vector(*s.input_norm);
    lw.post_norm = backend.vector(*s.post_norm);
    lw.q_norm = backend.vector(*s.q_norm);
    lw.k_norm = backend.vector(*s.k_norm);
    lw.route_bias = backend.vector(*s.route_bias);
    lw.q = backend.matrix(s.q);
    lw.k = backend.matrix(s.k);
    lw.v = backend.matrix(s.v);
    lw.o = backend.matrix(s.o);
    lw.router = backend.matrix(s.router);
    lw.gate = backend.matrix(s.gate);
    lw.up = backend.matrix(s.up);
    lw.down = backend.matrix(s.down);
    lw.dense_bytes = dense_bytes[i];
    lw.expert_bytes = (s.gate.total_bytes() + s.up.total_bytes() + s.down.total_bytes()) / cfg.experts;
    const size_t layer_bytes = lw.dense_bytes + lw.expert_bytes * cfg.experts;
    w.layers.push_back(std::move(lw));
    report(layer_bytes);
  }
  backend.weights_loaded();
  return w;
}

}  // namespace studio::model
