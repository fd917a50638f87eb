// Prefix-cache blocks: the KV of a run of positions kept apart from any sequence, named by the caller's id (the
// coordinator's chain hash of the tokens they cover, docs/architecture.md "Prefix cache"). A finished sequence
// leaves its positions here; a new sequence is assembled from blocks, so prompts sharing a prefix share its
// blocks instead of each holding a copy. A block is a KvCache of its own positions, 0 = the run's first.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace studio::model {

class BlockPool {
 public:
  const KvCache* find(const std::string& id) const;
  void insert(const std::string& id, std::unique_ptr<KvCache> block) { blocks_[id] = std::move(block); }
  void erase(const std::string& id) { blocks_.erase(id); }
  size_t bytes() const;
  size_t size() const { return blocks_.size(); }

 private:
  std::map<std::string, std::unique_ptr<KvCache>> blocks_;
};

}  // namespace studio::model
