#include "model/block_pool.h"

namespace studio::model {

const KvCache* BlockPool::find(const std::string& id) const {
  auto it = blocks_.find(id);
  return it == blocks_.end() ? nullptr : it->second.get();
}

size_t BlockPool::bytes() const {
  size_t total = 0;
  for (const auto& [id, block] : blocks_) total += block->bytes();
  return total;
}

}  // namespace studio::model
