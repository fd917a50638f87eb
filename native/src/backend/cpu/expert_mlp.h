// The routed-expert MLP on the cpu backend: rows are grouped by expert so every expert runs once on exactly the
// rows routed to it, gate and up of all active experts share one thread-pool dispatch and down another, and each
// row's expert outputs are summed in its own rank order (so the result never depends on the batch).
// One ExpertMlp lives in the backend and is reused by every call: its scratch (prepared inputs, expert outputs)
// comes from an Arena, so a call neither allocates nor zero-fills once the sizes have been seen.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"
#include "backend/cpu/workspace.h"

namespace studio::cpu {

class ExpertMlp {
 public:
  /** inputs: how the experts' matmuls take their inputs (the backend's precision mode). */
  explicit ExpertMlp(Inputs inputs) : inputs_(inputs) {}

  /**
   * gate/up/down: stacked expert matrices; x: `rows` rows of `hidden` floats.
   * out row r = sum over j of weight[r][j] * down_e(silu(gate_e x_r) * up_e x_r).
   */
  void run(ThreadPool& pool, const io::MatrixSource& gate, const io::MatrixSource& up, const io::MatrixSource& down,
           const float* x, int64_t rows, const Routing& routing, float* out);

 private:
  struct Active {
    int32_t expert = 0;
    std::span<const int64_t> slots;  // row * top_k + rank, for each row routed here
    PreparedX x_gate, x_up;          // x_up only when up is stored in another format than gate
    bool separate_up = false;
    PreparedX x_down;                // silu(gate) * up, laid out for down
    float* gate_out = nullptr;
    float* up_out = nullptr;
    float* down_out = nullptr;
  };

  void group_by_expert();
  void prepare_inputs(ThreadPool& pool);
  void gate_and_up(ThreadPool& pool);
  void activate(ThreadPool& pool);
  void down_proj(ThreadPool& pool);
  void combine(ThreadPool& pool, float* out);

  // This call's arguments.
  const io::MatrixSource* gate_ = nullptr;
  const io::MatrixSource* up_ = nullptr;
  const io::MatrixSource* down_ = nullptr;
  const float* x_ = nullptr;
  int64_t rows_ = 0;
  const Routing* routing_ = nullptr;

  const Inputs inputs_;
  Arena arena_;
  std::vector<Active> active_;      // cleared per call, capacity kept
  std::vector<int64_t> slot_order_;  // every slot, grouped by expert in ascending order
  std::vector<int64_t> first_slot_;  // per expert: where its slots start in slot_order_
};

}  // namespace studio::cpu
