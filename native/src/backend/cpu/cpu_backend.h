// The cpu backend: host-memory activations, weights used in place from the shard mappings, threaded SIMD
// kernels (kernels.h) on a pool created once.
#pragma once

#include <memory>

#include "backend/backend.h"
#include "backend/cpu/cpu_kv_cache.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"
#include "backend/cpu/workspace.h"

namespace studio::cpu {

class ExpertMlp;

/**
 * Operations are called one at a time (the model's forward runs on one thread; the pool does the
 * parallelism), which is what lets the scratch below be shared by every call.
 */
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuOptions& options);
  ~CpuBackend() override;

  std::string name() const override { return "cpu"; }
  int threads() const override { return pool_.size(); }
  size_t kv_element_bytes() const override { return bytes_of(kv_element_); }
  std::string kv_dtype() const override { return kv_element_ == KvElement::F16 ? "f16" : "f32"; }

  std::unique_ptr<Matrix> matrix(const io::MatrixSource& source) override;
  std::unique_ptr<Vector> vector(const io::HostTensor& source) override;
  std::unique_ptr<Activations> activations(int64_t rows, int64_t cols) override;
  void upload(const float* src, Activations& dst) override;
  void download(const Activations& src, float* dst) override;
  void gather_rows(const Activations& src, std::span<const int64_t> rows, Activations& dst) override;
  void embed(const Matrix& table, std::span<const int32_t> ids, Activations& out) override;
  void matmul(const Matrix& w, const Activations& x, Activations& y) override;
  void rms_norm(const Activations& x, const Vector& w, float eps, Activations& y) override;
  void rope(Activations& x, const RopeShape& shape, std::span<const int32_t> positions) override;
  void add(Activations& acc, const Activations& x) override;
  std::unique_ptr<KvCache> kv_cache(int layers, int kv_width) override;
  void attention(const Activations& q, const Activations& k, const Activations& v, int layer,
                 std::span<const AttentionSegment> segments, const AttentionShape& shape,
                 Activations& out) override;
  uint64_t attention_launches() const override { return attention_launches_; }
  Routing route(const Matrix& gate, const Vector& bias, const Activations& x, int top_k) override;
  void experts(const Matrix& gate, const Matrix& up, const Matrix& down, const Activations& x,
               const Routing& routing, Activations& out) override;

 private:
  /** y = x W^T with the inputs prepared as asked (the router keeps them f32). */
  void matmul_rows_of(const Matrix& w, const Activations& x, Activations& y, Inputs inputs);

  ThreadPool pool_;
  const Inputs inputs_;                    // how matmuls other than the router take their inputs
  const KvElement kv_element_;             // what each sequence's KV cache stores
  std::shared_ptr<BufferPool> buffers_;  // activations' memory, reused (workspace.h)
  Arena matmul_arena_;                    // a dense matmul's prepared inputs
  std::unique_ptr<ExpertMlp> expert_mlp_;  // the routed experts' scratch
  uint64_t attention_launches_ = 0;
};

}  // namespace studio::cpu
