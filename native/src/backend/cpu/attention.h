// Causal attention of the cpu backend over each sequence's f32 KV cache (grouped-query: heads / kv_heads query
// heads share one kv head).
#pragma once

#include <span>

#include "backend/backend.h"
#include "backend/cpu/cpu_kv_cache.h"
#include "backend/cpu/thread_pool.h"

namespace studio::cpu {

/**
 * out[r] = softmax(q[r] K^T * scale) V per query head, over positions 0..pos(r) of row r's sequence; k and v of
 * the batch are already in the caches. q, out: rows x (heads * head_dim) floats, row-major.
 */
void grouped_attention(ThreadPool& pool, const float* q, int64_t rows, int layer,
                       std::span<const AttentionSegment> segments, const AttentionShape& shape, float* out);

}  // namespace studio::cpu
