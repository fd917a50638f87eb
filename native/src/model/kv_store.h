// The live sequences of a shard: one KV cache each, keyed by the caller's sequence id.
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "backend/backend.h"

namespace studio::model {

class KvStore {
 public:
  KvCache* find(uint32_t seq);
  void insert(uint32_t seq, std::unique_ptr<KvCache> cache);
  void release(uint32_t seq) { caches_.erase(seq); }
  /** newSeq gets the first prefix positions of seq; throws naming the sequence at fault. */
  void fork(uint32_t seq, uint32_t new_seq, int64_t prefix);
  size_t bytes() const;
  size_t size() const { return caches_.size(); }

 private:
  std::map<uint32_t, std::unique_ptr<KvCache>> caches_;
};

}  // namespace studio::model
