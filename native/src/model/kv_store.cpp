#include "model/kv_store.h"

#include <stdexcept>
#include <string>

namespace studio::model {

KvCache* KvStore::find(uint32_t seq) {
  auto it = caches_.find(seq);
  return it == caches_.end() ? nullptr : it->second.get();
}

void KvStore::insert(uint32_t seq, std::unique_ptr<KvCache> cache) { caches_[seq] = std::move(cache); }

void KvStore::fork(uint32_t seq, uint32_t new_seq, int64_t prefix) {
  KvCache* src = find(seq);
  if (!src) throw std::invalid_argument("fork: unknown sequence " + std::to_string(seq));
  if (find(new_seq)) throw std::invalid_argument("fork: sequence " + std::to_string(new_seq) + " already exists");
  if (prefix < 0 || prefix > src->length())
    throw std::invalid_argument("fork: prefixLength " + std::to_string(prefix) + " exceeds sequence " +
                                std::to_string(seq) + "'s length " + std::to_string(src->length()));
  caches_[new_seq] = src->clone_prefix(prefix);
}

size_t KvStore::bytes() const {
  size_t total = 0;
  for (const auto& [seq, cache] : caches_) total += cache->bytes();
  return total;
}

}  // namespace studio::model
