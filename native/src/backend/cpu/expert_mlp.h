// The routed-expert MLP on the cpu backend: rows are grouped by expert so every expert runs once on exactly the
// rows routed to it, gate and up of all active experts share one thread-pool dispatch and down another, and each
// row's expert outputs are summed in its own rank order (so the result never depends on the batch).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"

namespace studio::cpu {

class ExpertMlp {
 public:
  /** gate/up/down: stacked expert matrices; x: the layer's inputs, `rows` rows of `hidden` floats. */
  ExpertMlp(const io::MatrixSource& gate, const io::MatrixSource& up, const io::MatrixSource& down, const float* x,
            int64_t rows, const Routing& routing);

  /** out row r = sum over j of weight[r][j] * down_e(silu(gate_e x_r) * up_e x_r). */
  void run(ThreadPool& pool, float* out);

 private:
  struct Active {
    int32_t expert = 0;
    std::vector<int64_t> slots;  // row * top_k + rank, for each row routed here
    PreparedX x_gate, x_up;      // x_up only when up is stored in another format than gate
    bool separate_up = false;
    PreparedX x_down;            // silu(gate) * up, laid out for down
    std::vector<float> gate_out, up_out, down_out;
  };

  void prepare_inputs();
  void gate_and_up(ThreadPool& pool);
  void activate();
  void down_proj(ThreadPool& pool);
  void combine(float* out) const;

  const io::MatrixSource& gate_;
  const io::MatrixSource& up_;
  const io::MatrixSource& down_;
  const float* x_;
  int64_t rows_;
  const Routing& routing_;
  std::vector<Active> active_;
};

}  // namespace studio::cpu
