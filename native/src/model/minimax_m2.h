// One pipeline stage of MiniMax-M2: layers [start, end) plus embedding / final norm + lm_head as assigned.
// The forward pass follows docs/model.md step by step and is written only against the Backend interface.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "model/block_pool.h"
#include "model/config.h"
#include "model/kv_store.h"
#include "model/sampler.h"
#include "model/weights.h"

namespace studio::model {

struct ForwardItem {
  uint32_t seq = 0;
  int64_t position = 0;
  std::vector<int32_t> tokens;  // first stage
  std::vector<float> hidden;    // other stages: [n, hidden]
  bool has_hidden = false;
  SamplingParams sampling;
  bool return_logits = false;
};

struct ForwardResult {
  uint32_t seq = 0;
  std::vector<float> hidden;  // non-last stage
  std::optional<Sample> sample;
  std::vector<float> logits;  // when asked for
};

/** Positions [start, start + length) of a sequence, to keep as cache block `id`. */
struct BlockSlice {
  std::string id;
  int64_t start = 0;
  int64_t length = 0;
};

/** The first `take` positions of cache block `id`. */
struct BlockTake {
  std::string id;
  int64_t take = 0;
};

class MinimaxM2Shard {
 public:
  MinimaxM2Shard(const std::string& model_dir, ModelConfig config, ShardRange range, std::unique_ptr<Backend> backend,
                 const ProgressFn& progress);

  /** Runs a batch; throws std::invalid_argument naming the item at fault before touching any state. */
  std::vector<ForwardResult> forward(std::vector<ForwardItem>& batch);
  void release(uint32_t seq);
  void fork(uint32_t seq, uint32_t new_seq, int64_t prefix);

  // Prefix-cache blocks (block_pool.h); shard_blocks.cpp. Each checks every argument before changing anything.
  /** Keeps positions of seq as cache blocks (an id already held is left as it is). */
  void stash_blocks(uint32_t seq, const std::vector<BlockSlice>& slices);
  /** new_seq holds, in order, the first `take` positions of each block. */
  void assemble(uint32_t new_seq, const std::vector<BlockTake>& takes);
  void drop_block(const std::string& id) { blocks_.erase(id); }
  /** A block's positions, one byte array per layer of the shard in KvCache's exchange layout. */
  std::vector<std::vector<uint8_t>> export_block(const std::string& id) const;
  /** Makes block `id` of `length` positions from export_block's arrays (an id already held is left as it is). */
  void import_block(const std::string& id, int64_t length, const std::vector<std::vector<uint8_t>>& layers);
  size_t block_bytes() const { return blocks_.bytes(); }
  size_t blocks() const { return blocks_.size(); }
  /** Bytes one position of one layer takes in the exchange layout. */
  size_t kv_bytes_per_position_per_layer() const { return 2 * config_.kv_width() * backend_->kv_element_bytes(); }

  const Backend& backend() const { return *backend_; }
  const ModelConfig& config() const { return config_; }
  const ShardRange& range() const { return range_; }
  size_t weight_bytes() const { return weights_.total_bytes; }
  size_t kv_bytes() const { return sequences_.bytes(); }
  size_t kv_bytes_per_token() const;
  size_t sequences() const { return sequences_.size(); }
  /** Weight bytes the forward passes so far had to read (active experts only), summed. */
  double weight_bytes_read() const { return weight_bytes_read_; }
  /** Decode steps built ahead (docs/architecture.md, "Sampling on the device") that a forward used / dropped. */
  uint64_t steps_ahead_used() const { return steps_ahead_used_; }
  uint64_t steps_ahead_dropped() const { return steps_ahead_dropped_; }
  /** Seconds the load-time warm-up step took (0 when the backend wants none). */
  double warmup_seconds() const { return warmup_seconds_; }

 private:
  void validate(const std::vector<ForwardItem>& batch);
  void warm_up();
  void run_layer(int local, const LayerWeights& w, Activations& h, std::span<const int32_t> positions,
                 std::span<const AttentionSegment> segments);
  void attention(int local, const LayerWeights& w, const Activations& x, std::span<const int32_t> positions,
                 std::span<const AttentionSegment> segments, Activations& out);
  Routing moe(const LayerWeights& w, const Activations& x, Activations& out);
  double bytes_read(const LayerWeights& w, const Routing& routing, int64_t n) const;
  /** A decode step built ahead on the device before its input token was read back (docs/architecture.md). */
  struct Speculation {
    uint32_t seq = 0;
    int64_t position = 0;  // the step's one position
    int32_t token = 0;     // its input: the token the step before picked
    SamplingParams sampling;
    KvCache* cache = nullptr;
    std::unique_ptr<PendingPicks> picks;
    double bytes_read = 0;
  };

  static bool device_samplable(const ForwardItem& item);
  static DeviceDraw device_draw(const SamplingParams& p, int64_t position);
  std::unique_ptr<Activations> head_logits(const Activations& h, std::span<const int64_t> last);
  bool can_speculate(const ForwardItem& item, int64_t next_position) const;
  std::unique_ptr<Speculation> speculate(uint32_t seq, KvCache* cache, int64_t position, const SamplingParams& sampling,
                                         const PendingPicks& input);
  std::unique_ptr<Speculation> try_speculate(uint32_t seq, KvCache* cache, int64_t position,
                                             const SamplingParams& sampling, const PendingPicks& input);
  bool speculation_matches(const std::vector<ForwardItem>& batch);
  std::vector<ForwardResult> finish_speculation(const std::vector<ForwardItem>& batch);
  void drop_speculation(uint32_t seq);
  const Activations& rows_of_logits(const Activations& logits, const std::vector<size_t>& which,
                                    std::unique_ptr<Activations>& owner);
  void sample_on_device(const Activations& logits, const std::vector<size_t>& which,
                        const std::vector<ForwardItem>& batch, const std::vector<AttentionSegment>& segments,
                        std::vector<ForwardResult>& results);
  void sample_on_host(const Activations& logits, const std::vector<size_t>& which, std::vector<ForwardItem>& batch,
                      const std::vector<AttentionSegment>& segments, std::vector<ForwardResult>& results);

  ModelConfig config_;
  ShardRange range_;
  std::unique_ptr<Backend> backend_;
  io::Checkpoint checkpoint_;
  ShardWeights weights_;
  KvStore sequences_;
  BlockPool blocks_;
  double weight_bytes_read_ = 0;
  double warmup_seconds_ = 0;
  // Build the next decode step ahead where the backend samples on its device (STUDIO_DECODE_AHEAD=off: never).
  bool decode_ahead_ = true;
  uint64_t steps_ahead_used_ = 0;
  uint64_t steps_ahead_dropped_ = 0;
  // Last, so it goes before the backend and the caches its graph refers to.
  std::unique_ptr<Speculation> speculation_;
};

}  // namespace studio::model
