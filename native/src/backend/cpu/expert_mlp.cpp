#include "backend/cpu/expert_mlp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace studio::cpu {

namespace {

// Output rows per work item. Long runs of consecutive rows keep each thread on one sequential stream (the
// prefetchers' best case: 16 rows measured 28 tokens/s on the bench model, 128 rows 45); 512 balanced worse.
constexpr int64_t kRowChunk = 128;

// Below this many routed rows (row x rank slots) the preparation steps run on the calling thread: a decode
// step's few rows cost less than waking the pool.
constexpr int64_t kParallelSlots = 64;

float silu(float g) { return g / (1.0f + std::exp(-g)); }

bool same_format(const MatView& a, const MatView& b) { return a.bits == b.bits && a.group == b.group; }

/** fn(begin, end) over [0, n): on the pool in chunks, or in one call on this thread when `parallel` is false. */
template <typename Fn>
void for_range(ThreadPool& pool, bool parallel, int64_t n, int64_t chunk, Fn&& fn) {
  if (parallel)
    pool.parallel_for(n, chunk, fn);
  else if (n > 0)
    fn(0, n);
}

}  // namespace

void ExpertMlp::run(ThreadPool& pool, const io::MatrixSource& gate, const io::MatrixSource& up,
                    const io::MatrixSource& down, const float* x, int64_t rows, const Routing& routing, float* out) {
  gate_ = &gate;
  up_ = &up;
  down_ = &down;
  x_ = x;
  rows_ = rows;
  routing_ = &routing;
  arena_.reset();
  group_by_expert();
  prepare_inputs(pool);
  gate_and_up(pool);
  activate(pool);
  down_proj(pool);
  combine(pool, out);
}

void ExpertMlp::group_by_expert() {
  // A counting sort: experts in ascending order, each one's slots in ascending order, so the work layout is a
  // function of the routing alone.
  const int64_t experts = std::max<int64_t>(gate_->experts, 1);
  const std::vector<int32_t>& chosen = routing_->experts;
  first_slot_.assign(experts + 1, 0);
  for (int32_t e : chosen) {
    if (e < 0 || e >= experts)
      throw std::out_of_range("experts: routed to expert " + std::to_string(e) + " of " + std::to_string(experts));
    ++first_slot_[e + 1];
  }
  for (int64_t e = 0; e < experts; ++e) first_slot_[e + 1] += first_slot_[e];
  slot_order_.resize(chosen.size());
  std::vector<int64_t>& next = first_slot_;  // advanced while filling, then shifted back below
  for (size_t i = 0; i < chosen.size(); ++i) slot_order_[next[chosen[i]]++] = static_cast<int64_t>(i);
  // next[e] now holds the end of expert e's slots, i.e. the start of e + 1's.
  active_.clear();
  int64_t begin = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t end = next[e];
    if (end > begin) {
      Active a;
      a.expert = static_cast<int32_t>(e);
      a.slots = std::span<const int64_t>(slot_order_.data() + begin, end - begin);
      active_.push_back(a);
    }
    begin = end;
  }
}

void ExpertMlp::prepare_inputs(ThreadPool& pool) {
  const int64_t hidden = gate_->in;
  const int64_t inter = gate_->out;
  const bool parallel = static_cast<int64_t>(slot_order_.size()) >= kParallelSlots;
  // Every row is prepared once per format, then each expert copies the rows routed to it: a row goes to top_k
  // experts, and copying its prepared form costs far less than preparing it again.
  const MatView g = view_of(*gate_, 0), u = view_of(*up_, 0);
  const bool separate_up = !same_format(g, u);
  std::span<const float*> rows = arena_.take<const float*>(rows_);
  for (int64_t r = 0; r < rows_; ++r) rows[r] = x_ + r * hidden;
  PreparedX all_gate, all_up;
  reserve_x(g, rows_, all_gate, arena_, inputs_);
  if (separate_up) reserve_x(u, rows_, all_up, arena_, inputs_);
  for (Active& a : active_) {
    const int64_t n = static_cast<int64_t>(a.slots.size());
    a.separate_up = separate_up;
    reserve_x(g, n, a.x_gate, arena_, inputs_);
    if (separate_up) reserve_x(u, n, a.x_up, arena_, inputs_);
    a.gate_out = arena_.take<float>(n * inter).data();
    a.up_out = arena_.take<float>(n * up_->out).data();
  }
  for_range(pool, parallel, rows_, 16, [&](int64_t begin, int64_t end) {
    fill_x(g, rows, all_gate, begin, end);
    if (separate_up) fill_x(u, rows, all_up, begin, end);
  });
  const int top_k = routing_->top_k;
  for_range(pool, parallel, static_cast<int64_t>(active_.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> source_rows;
    for (int64_t i = begin; i < end; ++i) {
      Active& a = active_[i];
      source_rows.clear();
      for (int64_t slot : a.slots) source_rows.push_back(slot / top_k);
      gather_x(all_gate, source_rows, a.x_gate);
      if (a.separate_up) gather_x(all_up, source_rows, a.x_up);
    }
  });
}

void ExpertMlp::gate_and_up(ThreadPool& pool) {
  // Items are (expert, gate|up, chunk of output rows); one dispatch covers every active expert.
  const int64_t inter = gate_->out;
  const int64_t chunks = (inter + kRowChunk - 1) / kRowChunk;
  pool.parallel_for(static_cast<int64_t>(active_.size()) * 2 * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      Active& a = active_[item / (2 * chunks)];
      const bool is_up = (item / chunks) % 2 == 1;
      const int64_t r0 = (item % chunks) * kRowChunk, r1 = std::min(inter, r0 + kRowChunk);
      const MatView m = view_of(is_up ? *up_ : *gate_, a.expert);
      const PreparedX& px = is_up && a.separate_up ? a.x_up : a.x_gate;
      matmul_rows(m, px, r0, r1, is_up ? a.up_out : a.gate_out, inter);
    }
  });
}

void ExpertMlp::activate(ThreadPool& pool) {
  const int64_t inter = gate_->out;
  const MatView d = view_of(*down_, 0);
  std::vector<std::span<const float*>> down_rows(active_.size());
  for (size_t i = 0; i < active_.size(); ++i) {
    Active& a = active_[i];
    const int64_t n = static_cast<int64_t>(a.slots.size());
    reserve_x(d, n, a.x_down, arena_, inputs_);
    a.down_out = arena_.take<float>(n * down_->out).data();
    down_rows[i] = arena_.take<const float*>(n);
    for (int64_t t = 0; t < n; ++t) down_rows[i][t] = a.gate_out + t * inter;
  }
  const bool parallel = static_cast<int64_t>(slot_order_.size()) >= kParallelSlots;
  for_range(pool, parallel, static_cast<int64_t>(active_.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Active& a = active_[i];
      const int64_t n = static_cast<int64_t>(a.slots.size());
      for (int64_t k = 0; k < n * inter; ++k) a.gate_out[k] = silu(a.gate_out[k]) * a.up_out[k];
      fill_x(view_of(*down_, a.expert), down_rows[i], a.x_down, 0, n);
    }
  });
}

void ExpertMlp::down_proj(ThreadPool& pool) {
  const int64_t hidden = down_->out;
  const int64_t chunks = (hidden + kRowChunk - 1) / kRowChunk;
  pool.parallel_for(static_cast<int64_t>(active_.size()) * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      Active& a = active_[item / chunks];
      const int64_t r0 = (item % chunks) * kRowChunk, r1 = std::min(hidden, r0 + kRowChunk);
      matmul_rows(view_of(*down_, a.expert), a.x_down, r0, r1, a.down_out, hidden);
    }
  });
}

void ExpertMlp::combine(ThreadPool& pool, float* out) {
  const int64_t hidden = down_->out;
  const int top_k = routing_->top_k;
  // Each (row, rank) output, wherever its expert put it, then a weighted sum in rank order per row.
  std::span<const float*> slot_out = arena_.take<const float*>(routing_->experts.size());
  for (const Active& a : active_)
    for (size_t t = 0; t < a.slots.size(); ++t) slot_out[a.slots[t]] = a.down_out + t * hidden;
  const bool parallel = static_cast<int64_t>(slot_order_.size()) >= kParallelSlots;
  for_range(pool, parallel, rows_, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* dst = out + r * hidden;
      std::fill(dst, dst + hidden, 0.0f);
      for (int j = 0; j < top_k; ++j) {
        const float w = routing_->weights[r * top_k + j];
        const float* src = slot_out[r * top_k + j];
        for (int64_t c = 0; c < hidden; ++c) dst[c] += w * src[c];
      }
    }
  });
}

}  // namespace studio::cpu
