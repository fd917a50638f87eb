#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <thread>

#include "backend/cpu/attention.h"
#include "backend/cpu/cpu_kv_cache.h"
#include "backend/cpu/expert_mlp.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"

namespace studio::cpu {

namespace {

// Output rows per work item. Long runs of consecutive rows keep each thread on one sequential stream (the
// prefetchers' best case: 16 rows measured 28 tokens/s on the bench model, 128 rows 45); 512 balanced worse.
constexpr int64_t kRowChunk = 128;

// Input rows per work item when a matmul's inputs are prepared on the pool, and the fewest rows for which that
// pays for the dispatch.
constexpr int64_t kPrepareChunk = 16;
constexpr int64_t kParallelPrepareRows = 32;

class CpuMatrix final : public Matrix {
 public:
  explicit CpuMatrix(const io::MatrixSource& s) : source(s) {
    out = s.out;
    in = s.in;
    experts = s.experts;
  }
  MatView view(int64_t e = 0) const { return view_of(source, e); }
  io::MatrixSource source;
};

class CpuVector final : public Vector {
 public:
  std::vector<float> data;
};

// Rows x cols floats from the backend's pool, uninitialised: every operation writes all of its output.
class CpuActivations final : public Activations {
 public:
  CpuActivations(int64_t r, int64_t c, std::shared_ptr<BufferPool> pool)
      : pool_(std::move(pool)), buffer_(pool_->acquire(static_cast<size_t>(r * c))) {
    rows = r;
    cols = c;
  }
  ~CpuActivations() override { pool_->release(std::move(buffer_)); }
  CpuActivations(const CpuActivations&) = delete;
  CpuActivations& operator=(const CpuActivations&) = delete;

  float* data() { return buffer_.data.get(); }
  const float* data() const { return buffer_.data.get(); }
  size_t size() const { return static_cast<size_t>(rows * cols); }
  float* row(int64_t r) { return data() + r * cols; }
  const float* row(int64_t r) const { return data() + r * cols; }

 private:
  std::shared_ptr<BufferPool> pool_;
  BufferPool::Buffer buffer_;
};

const CpuMatrix& cast(const Matrix& m) { return static_cast<const CpuMatrix&>(m); }
const CpuVector& cast(const Vector& v) { return static_cast<const CpuVector&>(v); }
CpuActivations& cast(Activations& a) { return static_cast<CpuActivations&>(a); }
const CpuActivations& cast(const Activations& a) { return static_cast<const CpuActivations&>(a); }

std::vector<const float*> row_pointers(const CpuActivations& a) {
  std::vector<const float*> rows(a.rows);
  for (int64_t r = 0; r < a.rows; ++r) rows[r] = a.row(r);
  return rows;
}

}  // namespace

CpuBackend::CpuBackend(const CpuOptions& options)
    : pool_(options.threads > 0 ? options.threads
                                : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
      inputs_(options.int8_inputs ? Inputs::Int8 : Inputs::Default),
      kv_element_(options.f16_kv ? KvElement::F16 : KvElement::F32),
      buffers_(std::make_shared<BufferPool>()),
      expert_mlp_(std::make_unique<ExpertMlp>(inputs_)) {}

CpuBackend::~CpuBackend() = default;

std::unique_ptr<Matrix> CpuBackend::matrix(const io::MatrixSource& source) {
  return std::make_unique<CpuMatrix>(source);
}

std::unique_ptr<Vector> CpuBackend::vector(const io::HostTensor& source) {
  auto v = std::make_unique<CpuVector>();
  v->size = source.numel();
  v->data.resize(v->size);
  for (int64_t i = 0; i < v->size; ++i) v->data[i] = io::load_float(source.data, source.dtype, i);
  return v;
}

std::unique_ptr<Activations> CpuBackend::activations(int64_t rows, int64_t cols) {
  return std::make_unique<CpuActivations>(rows, cols, buffers_);
}

void CpuBackend::upload(const float* src, Activations& dst) {
  auto& d = cast(dst);
  std::memcpy(d.data(), src, d.size() * sizeof(float));
}

void CpuBackend::download(const Activations& src, float* dst) {
  const auto& s = cast(src);
  std::memcpy(dst, s.data(), s.size() * sizeof(float));
}

void CpuBackend::gather_rows(const Activations& src, std::span<const int64_t> rows, Activations& dst) {
  const auto& s = cast(src);
  auto& d = cast(dst);
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(d.row(i), s.row(rows[i]), s.cols * sizeof(float));
}

void CpuBackend::embed(const Matrix& table, std::span<const int32_t> ids, Activations& out) {
  const MatView m = cast(table).view();
  auto& o = cast(out);
  for (size_t i = 0; i < ids.size(); ++i) dequant_row(m, ids[i], o.row(i));
}

void CpuBackend::matmul(const Matrix& w, const Activations& x, Activations& y) { matmul_rows_of(w, x, y, inputs_); }

void CpuBackend::matmul_rows_of(const Matrix& w, const Activations& x, Activations& y, Inputs inputs) {
  const MatView m = cast(w).view();
  auto& yo = cast(y);
  const std::vector<const float*> rows = row_pointers(cast(x));
  matmul_arena_.reset();
  PreparedX px;
  reserve_x(m, static_cast<int64_t>(rows.size()), px, matmul_arena_, inputs);
  // Preparing a prefill chunk's rows is worth sharing out; a decode step's row is not worth a dispatch.
  if (px.rows >= kParallelPrepareRows)
    pool_.parallel_for(px.rows, kPrepareChunk, [&](int64_t b, int64_t e) { fill_x(m, rows, px, b, e); });
  else
    fill_x(m, rows, px, 0, px.rows);
  pool_.parallel_for(m.out, kRowChunk, [&](int64_t b, int64_t e) { matmul_rows(m, px, b, e, yo.data(), m.out); });
}

void CpuBackend::rms_norm(const Activations& x, const Vector& w, float eps, Activations& y) {
  const auto& xi = cast(x);
  auto& yo = cast(y);
  const auto& wv = cast(w).data;
  for (int64_t r = 0; r < xi.rows; ++r) {
    const float* src = xi.row(r);
    float* dst = yo.row(r);
    float ss = 0;
    for (int64_t c = 0; c < xi.cols; ++c) ss += src[c] * src[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(xi.cols) + eps);
    for (int64_t c = 0; c < xi.cols; ++c) {
      const float n = src[c] * inv;
      dst[c] = wv[c] * n;
    }
  }
}

void CpuBackend::rope(Activations& x, const RopeShape& shape, std::span<const int32_t> positions) {
  auto& xa = cast(x);
  const int half = shape.rotary_dim / 2;
  std::vector<double> inv_freq(half);
  for (int j = 0; j < half; ++j) inv_freq[j] = std::pow(static_cast<double>(shape.theta), -static_cast<double>(j) / half);
  std::vector<float> cosv(half), sinv(half);
  for (int64_t r = 0; r < xa.rows; ++r) {
    for (int j = 0; j < half; ++j) {
      const double ang = static_cast<double>(positions[r]) * inv_freq[j];
      cosv[j] = static_cast<float>(std::cos(ang));
      sinv[j] = static_cast<float>(std::sin(ang));
    }
    float* row = xa.row(r);
    for (int h = 0; h < shape.heads; ++h) {
      float* v = row + static_cast<int64_t>(h) * shape.head_dim;
      for (int j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        const float ac = a * cosv[j], bs = b * sinv[j], bc = b * cosv[j], as = a * sinv[j];
        v[j] = ac - bs;
        v[j + half] = bc + as;
      }
    }
  }
}

void CpuBackend::add(Activations& acc, const Activations& x) {
  auto& a = cast(acc);
  const auto& b = cast(x);
  float* ad = a.data();
  const float* bd = b.data();
  for (size_t i = 0; i < a.size(); ++i) ad[i] += bd[i];
}

std::unique_ptr<KvCache> CpuBackend::kv_cache(int layers, int kv_width) {
  return std::make_unique<CpuKvCache>(layers, kv_width, kv_element_);
}

void CpuBackend::attention(const Activations& q, const Activations& k, const Activations& v, int layer,
                           std::span<const AttentionSegment> segments, const AttentionShape& shape,
                           Activations& out) {
  const auto& qa = cast(q);
  const auto& ka = cast(k);
  const auto& va = cast(v);
  auto& oa = cast(out);
  const int dim = shape.head_dim;
  for (const AttentionSegment& s : segments) {
    auto* cache = static_cast<CpuKvCache*>(s.cache);
    for (int64_t t = 0; t < s.rows; ++t)
      for (int h = 0; h < shape.kv_heads; ++h) {
        cache->store(layer, s.position + t, h, dim, ka.row(s.row + t) + h * dim, va.row(s.row + t) + h * dim);
      }
  }
  grouped_attention(pool_, qa.data(), qa.rows, layer, segments, shape, oa.data());
  ++attention_launches_;
}

Routing CpuBackend::route(const Matrix& gate, const Vector& bias, const Activations& x, int top_k) {
  const auto& xa = cast(x);
  const auto& b = cast(bias).data;
  const int64_t experts = gate.out;
  CpuActivations logits(xa.rows, experts, buffers_);
  // docs/model.md: the router runs in f32, so its inputs stay f32 (no integer path).
  matmul_rows_of(gate, x, logits, Inputs::F32);
  Routing routing;
  routing.top_k = top_k;
  routing.experts.resize(xa.rows * top_k);
  routing.weights.resize(xa.rows * top_k);
  std::vector<float> s(experts), key(experts);
  std::vector<int32_t> order(experts);
  for (int64_t r = 0; r < xa.rows; ++r) {
    const float* l = logits.row(r);
    for (int64_t e = 0; e < experts; ++e) {
      s[e] = 1.0f / (1.0f + std::exp(-l[e]));
      key[e] = s[e] + b[e];
    }
    std::iota(order.begin(), order.end(), 0);
    // Ties go to the lower expert index so the choice is a pure function of the scores.
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                      [&](int32_t a, int32_t c) { return key[a] > key[c] || (key[a] == key[c] && a < c); });
    float sum = 0;
    for (int j = 0; j < top_k; ++j) sum += s[order[j]];
    const float denom = sum + 1e-20f;
    for (int j = 0; j < top_k; ++j) {
      routing.experts[r * top_k + j] = order[j];
      routing.weights[r * top_k + j] = s[order[j]] / denom;
    }
  }
  return routing;
}

void CpuBackend::experts(const Matrix& gate, const Matrix& up, const Matrix& down, const Activations& x,
                         const Routing& routing, Activations& out) {
  const auto& xa = cast(x);
  expert_mlp_->run(pool_, cast(gate).source, cast(up).source, cast(down).source, xa.data(), xa.rows, routing,
                   cast(out).data());
}

std::unique_ptr<Backend> make_cpu_backend_impl(const CpuOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace studio::cpu

namespace studio {
std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options) {
  return cpu::make_cpu_backend_impl(options);
}
}  // namespace studio
