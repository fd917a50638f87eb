// MinimaxM2Shard's prefix-cache blocks (block_pool.h): a finished sequence's positions kept as blocks, new
// sequences assembled from them, and blocks exported to / imported from the node's disk. Every call checks all of
// its arguments, naming the one at fault, before it changes anything.
#include <stdexcept>
#include <string>

#include "model/minimax_m2.h"

namespace studio::model {

namespace {

std::string block_name(const std::string& id) { return "cache block " + (id.empty() ? std::string("\"\"") : id); }

}  // namespace

void MinimaxM2Shard::stash_blocks(uint32_t seq, const std::vector<BlockSlice>& slices) {
  const KvCache* cache = sequences_.find(seq);
  if (!cache) throw std::invalid_argument("stashBlocks: unknown sequence " + std::to_string(seq));
  for (const BlockSlice& s : slices) {
    if (s.id.empty()) throw std::invalid_argument("stashBlocks: a block id is empty");
    if (s.start < 0 || s.length < 1 || s.start + s.length > cache->length())
      throw std::invalid_argument("stashBlocks: " + block_name(s.id) + " covers positions [" +
                                  std::to_string(s.start) + ", " + std::to_string(s.start + s.length) +
                                  ") but sequence " + std::to_string(seq) + " holds " +
                                  std::to_string(cache->length()));
  }
  const int layers = range_.end - range_.start;
  for (const BlockSlice& s : slices) {
    if (blocks_.find(s.id)) continue;
    auto block = backend_->kv_cache(layers, static_cast<int>(config_.kv_width()));
    block->copy_from(*cache, s.start, 0, s.length, config_.kv_heads);
    block->commit(s.length);
    block->shrink_to_fit();
    blocks_.insert(s.id, std::move(block));
  }
}

void MinimaxM2Shard::assemble(uint32_t new_seq, const std::vector<BlockTake>& takes) {
  if (sequences_.find(new_seq))
    throw std::invalid_argument("assemble: sequence " + std::to_string(new_seq) + " already exists");
  if (takes.empty()) throw std::invalid_argument("assemble: no blocks");
  int64_t total = 0;
  for (const BlockTake& t : takes) {
    const KvCache* block = blocks_.find(t.id);
    if (!block) throw std::invalid_argument("assemble: " + block_name(t.id) + " is not held");
    if (t.take < 1 || t.take > block->length())
      throw std::invalid_argument("assemble: take " + std::to_string(t.take) + " of " + block_name(t.id) +
                                  ", which holds " + std::to_string(block->length()) + " positions");
    total += t.take;
  }
  if (total > config_.max_positions)
    throw std::invalid_argument("assemble: " + std::to_string(total) + " positions exceed max_position_embeddings " +
                                std::to_string(config_.max_positions));
  auto cache = backend_->kv_cache(range_.end - range_.start, static_cast<int>(config_.kv_width()));
  cache->reserve(total);
  int64_t position = 0;
  for (const BlockTake& t : takes) {
    cache->copy_from(*blocks_.find(t.id), 0, position, t.take, config_.kv_heads);
    position += t.take;
  }
  cache->commit(position);
  sequences_.insert(new_seq, std::move(cache));
}

std::vector<std::vector<uint8_t>> MinimaxM2Shard::export_block(const std::string& id) const {
  const KvCache* block = blocks_.find(id);
  if (!block) throw std::invalid_argument("exportBlock: " + block_name(id) + " is not held");
  const int layers = range_.end - range_.start;
  const size_t bytes = kv_bytes_per_position_per_layer() * static_cast<size_t>(block->length());
  std::vector<std::vector<uint8_t>> out(layers);
  for (int l = 0; l < layers; ++l) {
    out[l].resize(bytes);
    block->read_range(l, 0, block->length(), config_.kv_heads, out[l].data());
  }
  return out;
}

void MinimaxM2Shard::import_block(const std::string& id, int64_t length,
                                  const std::vector<std::vector<uint8_t>>& layer_bytes) {
  const int layers = range_.end - range_.start;
  if (id.empty()) throw std::invalid_argument("importBlock: the block id is empty");
  if (length < 1 || length > config_.max_positions)
    throw std::invalid_argument("importBlock: length " + std::to_string(length) + " is not within [1, " +
                                std::to_string(config_.max_positions) + "]");
  if (static_cast<int>(layer_bytes.size()) != layers)
    throw std::invalid_argument("importBlock: " + std::to_string(layer_bytes.size()) + " layer arrays for a shard of " +
                                std::to_string(layers) + " layers");
  const size_t expected = kv_bytes_per_position_per_layer() * static_cast<size_t>(length);
  for (int l = 0; l < layers; ++l)
    if (layer_bytes[l].size() != expected)
      throw std::invalid_argument("importBlock: layer " + std::to_string(range_.start + l) + " of " + block_name(id) +
                                  " holds " + std::to_string(layer_bytes[l].size()) + " bytes, expected " +
                                  std::to_string(expected));
  if (blocks_.find(id)) return;
  auto block = backend_->kv_cache(layers, static_cast<int>(config_.kv_width()));
  block->reserve(length);
  for (int l = 0; l < layers; ++l) block->write_range(l, 0, length, config_.kv_heads, layer_bytes[l].data());
  block->commit(length);
  block->shrink_to_fit();
  blocks_.insert(id, std::move(block));
}

}  // namespace studio::model
