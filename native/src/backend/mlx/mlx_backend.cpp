#include "backend/mlx/mlx_backend.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <mlx/mlx.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "backend/mlx/mlx_handles.h"
#include "backend/mlx/mlx_kv_cache.h"
#include "backend/mlx/mlx_sampler.h"

namespace studio {

namespace mlxb {

namespace {

// Below this many (token, expert) pairs the experts gather straight from the routing; above it, the pairs are
// sorted by expert first so each expert's rows sit together (the GPU kernels then read each expert once).
constexpr int64_t kSortedExpertsFrom = 64;

mx::Dtype dtype_of(const io::HostTensor& t) {
  switch (t.dtype) {
    case io::DType::F32:
      return mx::float32;
    case io::DType::F16:
      return mx::float16;
    case io::DType::BF16:
      return mx::bfloat16;
    case io::DType::U32:
      return mx::uint32;
    default:
      throw std::invalid_argument("mlx backend: tensor " + t.name + " in " + t.file + " has dtype " + t.dtype_text +
                                  ", which the engine cannot use");
  }
}

/** A file descriptor closed on every exit path. */
class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// One pread call reads at most this much (macOS refuses a count over INT_MAX).
constexpr size_t kMaxReadCall = 1ull << 30;
// Tensors from twice this size are read in parts on several threads, as MLX's own safetensors loader does: one
// reader does not reach a Mac SSD's bandwidth.
constexpr size_t kReadPart = 64ull << 20;
constexpr size_t kReaders = 4;

/** n bytes of the file at offset into dst; throws naming `what` on a read error or a short file. */
void read_exact(int fd, uint8_t* dst, size_t n, uint64_t offset, const std::string& what) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, std::min(n, kMaxReadCall), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw std::runtime_error(what + ": cannot read (" + std::strerror(errno) + ")");
    if (got == 0) throw std::runtime_error(what + ": the file ends before the tensor does (truncated?)");
    dst += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

/** Like read_exact, large spans split over kReaders threads. */
void read_parallel(int fd, uint8_t* dst, size_t n, uint64_t offset, const std::string& what) {
  if (n < 2 * kReadPart) return read_exact(fd, dst, n, offset, what);
  const size_t parts = std::min(kReaders, n / kReadPart);
  const size_t per = (n + parts - 1) / parts;
  std::vector<std::future<void>> readers;
  for (size_t begin = 0; begin < n; begin += per) {
    const size_t len = std::min(per, n - begin);
    readers.push_back(std::async(std::launch::async, read_exact, fd, dst + begin, len, offset + begin, what));
  }
  // get() rethrows a reader's error; every reader is waited for first, since they all write into dst.
  for (auto& r : readers) r.wait();
  for (auto& r : readers) r.get();
}

/**
 * Reads the shard's tensors from their files straight into MLX buffers: each byte is read once, into memory
 * MLX owns, and the shard's mapping is never touched, so the shard is resident once (docs/architecture.md,
 * Engine). Through the mapping it was resident twice: MLX copies any pointer it cannot wrap (always on its cpu
 * device, and on Metal whenever the tensor is not page-aligned, which safetensors tensors are not), and the
 * mapped pages stayed resident beside the copy.
 */
class WeightReader {
 public:
  mx::array read(const io::HostTensor& t) {
    mx::Shape shape;
    for (int64_t d : t.shape) {
      if (d > INT32_MAX) throw std::invalid_argument("mlx backend: tensor " + t.name + " has a dimension over 2^31");
      shape.push_back(static_cast<int32_t>(d));
    }
    const mx::Dtype dtype = dtype_of(t);
    // Checked before a byte is read: a short tensor must be an error, never a read past its end.
    const size_t needed = static_cast<size_t>(t.numel()) * mx::size_of(dtype);
    if (needed != t.bytes)
      throw std::invalid_argument("mlx backend: tensor " + t.name + " in " + t.file + " holds " +
                                  std::to_string(t.bytes) + " bytes, not the " + std::to_string(needed) +
                                  " its dtype and shape " + t.shape_text() + " need");
    if (needed == 0) return mx::zeros(shape, dtype);
    mx::array out(mx::allocator::malloc(needed), std::move(shape), dtype);
    read_parallel(fd_of(t.file), out.data<uint8_t>(), needed, t.file_offset, t.file + ": tensor " + t.name);
    bytes_ += needed;
    return out;
  }

  /** Closes the files once loading is over. */
  void close() { files_.clear(); }
  size_t bytes() const { return bytes_; }

 private:
  int fd_of(const std::string& path) {
    auto it = files_.find(path);
    if (it == files_.end()) {
      UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (fd.get() < 0) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
      it = files_.emplace(path, std::move(fd)).first;
    }
    return it->second.get();
  }

  std::map<std::string, UniqueFd> files_;
  size_t bytes_ = 0;
};

/**
 * The device's recommended maximum working set (Metal reports it; MLX's cpu device and CUDA do not), or nothing.
 */
std::optional<size_t> max_recommended_working_set() {
  if (!mx::gpu::is_available()) return std::nullopt;
  const auto& info = mx::device_info(mx::Device::gpu);
  auto it = info.find("max_recommended_working_set_size");
  if (it == info.end() || !std::holds_alternative<size_t>(it->second)) return std::nullopt;
  const size_t bytes = std::get<size_t>(it->second);
  return bytes > 0 ? std::optional<size_t>(bytes) : std::nullopt;
}

// MLX's wired limit is process-wide and a process may hold several mlx engines (a split run in one process):
// the first one sets it, the last one to go restores what was there before.
std::mutex wired_mutex;
int wired_holders = 0;
size_t wired_before = 0;

/**
 * Keeps the weights wired (resident, never paged out between tokens) up to `limit` bytes, as mlx-lm does while it
 * generates: MLX's wired limit set to the device's recommended maximum working set.
 */
void hold_wired_limit(size_t limit) {
  std::lock_guard lock(wired_mutex);
  const size_t previous = mx::set_wired_limit(limit);
  if (wired_holders++ == 0) wired_before = previous;
}

void release_wired_limit() {
  std::lock_guard lock(wired_mutex);
  if (--wired_holders == 0) mx::set_wired_limit(wired_before);
}

/** The expert choice on the device: index [rows, k] and weights [rows, k, 1] (f32). */
struct DeviceRouting {
  mx::array index;
  mx::array weights;
};

const MlxMatrix& cast(const Matrix& m) { return static_cast<const MlxMatrix&>(m); }
const MlxVector& cast(const Vector& v) { return static_cast<const MlxVector&>(v); }
const MlxActivations& cast(const Activations& a) { return static_cast<const MlxActivations&>(a); }
MlxActivations& cast(Activations& a) { return static_cast<MlxActivations&>(a); }

class MlxBackend final : public Backend {
 public:
  MlxBackend(mx::Device device, mx::Dtype compute, bool device_sampling, bool batched_decode)
      : device_(device),
        stream_(mx::new_stream(device)),
        compute_(compute),
        device_sampling_(device_sampling),
        batched_decode_(batched_decode) {
    mx::set_default_device(device_);
    // Ops MLX adds by itself (casts inside fast kernels, compiled functions) run on the default stream: ours,
    // so nothing waits on a fence between two streams. Default streams are per thread, and each engine has
    // its own thread.
    mx::set_default_stream(stream_);
  }
  ~MlxBackend() override {
    // Work still queued on the stream must not outlive the arrays it writes.
    mx::synchronize(stream_);
    if (wired_limit_ > 0) release_wired_limit();
  }

  std::string name() const override { return "mlx"; }
  int threads() const override { return 1; }
  std::string activation_dtype() const override { return compute_ == mx::bfloat16 ? "bf16" : "f32"; }
  size_t kv_element_bytes() const override { return mx::size_of(compute_); }
  std::string kv_dtype() const override { return activation_dtype(); }

  std::unique_ptr<Matrix> matrix(const io::MatrixSource& source) override {
    std::optional<mx::array> scales, biases;
    if (source.quantized()) {
      if (!source.scales || !source.biases)
        throw std::invalid_argument("mlx backend: quantized tensor " + source.weight.name +
                                    " needs both scales and biases");
      scales = reader_.read(*source.scales);
      biases = reader_.read(*source.biases);
    }
    mx::array weight = reader_.read(source.weight);
    // MLX's cpu GatherMM takes only f32: plain stacked experts are widened once here rather than on every call.
    if (!source.quantized() && source.experts > 0 && device_ == mx::Device::cpu && weight.dtype() != mx::float32) {
      weight = mx::astype(weight, mx::float32, stream_);
      mx::eval(weight);
    }
    auto m = std::make_unique<MlxMatrix>(std::move(weight), std::move(scales), std::move(biases), source.bits,
                                         source.group);
    m->out = source.out;
    m->in = source.in;
    m->experts = source.experts;
    return m;
  }

  std::unique_ptr<Vector> vector(const io::HostTensor& source) override {
    auto v = std::make_unique<MlxVector>(reader_.read(source));
    v->size = source.numel();
    return v;
  }

  bool weights_in_mapping() const override { return false; }

  void weights_loaded() override {
    reader_.close();
    if (auto limit = max_recommended_working_set()) {
      hold_wired_limit(*limit);
      wired_limit_ = *limit;
    }
  }

  size_t wired_limit_bytes() const override { return wired_limit_; }
  bool wants_warmup() const override { return true; }
  bool samples_on_device() const override { return device_sampling_; }

  std::unique_ptr<PendingPicks> sample_lazily(const Activations& logits, std::span<const DeviceDraw> draws) override {
    return std::make_unique<MlxPendingPicks>(cast(logits).get(), draws, stream_);
  }

  void embed_picks(const Matrix& table, const PendingPicks& picks, Activations& out) override {
    embed_index(cast(table), static_cast<const MlxPendingPicks&>(picks).tokens(), out);
  }

  std::unique_ptr<Activations> activations(int64_t rows, int64_t cols) override {
    auto a = std::make_unique<MlxActivations>();
    a->rows = rows;
    a->cols = cols;
    return a;
  }

  void upload(const float* src, Activations& dst) override {
    mx::array host(src, shape_of(dst), mx::float32);
    cast(dst).set(mx::astype(host, compute_, stream_));
  }

  void download(const Activations& src, float* dst) override {
    auto f = mx::contiguous(mx::astype(cast(src).get(), mx::float32, stream_), false, stream_);
    mx::eval(f);
    std::memcpy(dst, f.data<float>(), f.nbytes());
  }

  void gather_rows(const Activations& src, std::span<const int64_t> rows, Activations& dst) override {
    std::vector<int32_t> index(rows.begin(), rows.end());
    cast(dst).set(mx::take(cast(src).get(), ids_array(index), 0, stream_));
  }

  void embed(const Matrix& table, std::span<const int32_t> ids, Activations& out) override {
    embed_index(cast(table), ids_array(ids), out);
  }

  /** out row i = row index[i] of the table; index may still be computing on the device. */
  void embed_index(const MlxMatrix& t, const mx::array& index, Activations& out) {
    if (!t.quantized()) {
      cast(out).set(mx::astype(mx::take(t.weight, index, 0, stream_), compute_, stream_));
      return;
    }
    // Only the looked-up rows are dequantized, in f32 so the value is rounded once, to the compute dtype.
    auto scales = mx::astype(mx::take(*t.scales, index, 0, stream_), mx::float32, stream_);
    auto biases = mx::astype(mx::take(*t.biases, index, 0, stream_), mx::float32, stream_);
    auto rows = mx::dequantize(mx::take(t.weight, index, 0, stream_), scales, biases, t.group, t.bits, "affine",
                               std::nullopt, std::nullopt, stream_);
    cast(out).set(mx::astype(rows, compute_, stream_));
  }

  void matmul(const Matrix& w, const Activations& x, Activations& y) override {
    cast(y).set(mx::astype(linear(cast(w), cast(x).get()), compute_, stream_));
  }

  void rms_norm(const Activations& x, const Vector& w, float eps, Activations& y) override {
    // fast::rms_norm takes its statistics in f32 and scales the normalised value by w in w's precision.
    auto out = mx::fast::rms_norm(cast(x).get(), cast(w).data, eps, stream_);
    cast(y).set(mx::astype(out, compute_, stream_));
  }

  void rope(Activations& x, const RopeShape& shape, std::span<const int32_t> positions) override {
    auto& xa = cast(x);
    const int rows = static_cast<int>(x.rows);
    // One batch entry per row, each with its own offset: rows of different sequences (and positions) mix freely.
    auto per_row = mx::reshape(xa.get(), {rows, shape.heads, 1, shape.head_dim}, stream_);
    std::vector<int32_t> offsets(positions.begin(), positions.end());
    // traditional=false is MLX's half-split pairing (j with j + rotary_dim/2), as MiniMax-M2 rotates.
    auto rotated = mx::fast::rope(per_row, shape.rotary_dim, false, shape.theta, 1.0f, ids_array(offsets),
                                  std::nullopt, stream_);
    xa.set(mx::reshape(rotated, {rows, shape.heads * shape.head_dim}, stream_));
  }

  void add(Activations& acc, const Activations& x) override {
    auto& a = cast(acc);
    a.set(mx::add(a.get(), cast(x).get(), stream_));
  }

  std::unique_ptr<KvCache> kv_cache(int layers, int kv_width) override {
    return std::make_unique<MlxKvCache>(layers, kv_width, compute_, stream_);
  }

  void attention(const Activations& q, const Activations& k, const Activations& v, int layer,
                 std::span<const AttentionSegment> segments, const AttentionShape& shape,
                 Activations& out) override {
    int64_t next_row = 0;
    for (const AttentionSegment& s : segments) {
      if (s.row != next_row)
        throw std::logic_error("mlx backend: attention segments must cover the batch rows in order");
      next_row += s.rows;
    }
    if (next_row != q.rows) throw std::logic_error("mlx backend: attention segments do not cover the batch");
    // Each segment's output rows; decode rows that can share one kernel are run together first.
    const std::vector<std::vector<size_t>> groups =
        batched_decode_ ? decode_groups(segments) : std::vector<std::vector<size_t>>{};
    if (groups.size() == 1 && groups[0].size() == segments.size())
      return cast(out).set(attend_together(q, k, v, layer, segments, groups[0], shape));  // rows in batch order
    std::vector<std::optional<mx::array>> parts(segments.size());
    const int width = shape.heads * shape.head_dim;
    for (const std::vector<size_t>& group : groups) {
      auto rows = attend_together(q, k, v, layer, segments, group, shape);
      for (size_t j = 0; j < group.size(); ++j)
        parts[group[j]] = mx::slice(rows, {static_cast<int>(j), 0}, {static_cast<int>(j) + 1, width}, stream_);
    }
    for (size_t i = 0; i < segments.size(); ++i)
      if (!parts[i]) parts[i] = attend_alone(q, k, v, layer, segments[i], shape);
    if (parts.size() == 1) return cast(out).set(*parts[0]);
    std::vector<mx::array> rows;
    rows.reserve(parts.size());
    for (auto& p : parts) rows.push_back(std::move(*p));
    cast(out).set(mx::concatenate(rows, 0, stream_));
  }

  uint64_t attention_launches() const override { return attention_launches_; }

  Routing route(const Matrix& gate, const Vector& bias, const Activations& x, int top_k) override {
    const int experts = static_cast<int>(gate.out);
    if (top_k < 1 || top_k > experts)
      throw std::invalid_argument("mlx backend: top_k " + std::to_string(top_k) + " outside [1, " +
                                  std::to_string(experts) + "]");
    auto logits = linear(cast(gate), mx::astype(cast(x).get(), mx::float32, stream_));
    auto s = mx::sigmoid(mx::astype(logits, mx::float32, stream_), stream_);
    auto key = mx::add(s, mx::astype(cast(bias).data, mx::float32, stream_), stream_);
    // The bias only selects: argpartition finds the top_k keys, and the weights come from s alone.
    auto picked = mx::slice(mx::argpartition(mx::negative(key, stream_), top_k - 1, -1, stream_), {0, 0},
                            {static_cast<int>(x.rows), top_k}, stream_);
    auto picked_s = mx::take_along_axis(s, picked, -1, stream_);
    auto sum = mx::sum(picked_s, -1, true, stream_);
    auto weights = mx::divide(picked_s, mx::add(sum, mx::array(1e-20f), stream_), stream_);
    // Nothing is read back: the choice stays on the device for experts(), so a layer never waits for the GPU.
    Routing routing;
    routing.top_k = top_k;
    routing.device = std::make_shared<const DeviceRouting>(DeviceRouting{picked, mx::expand_dims(weights, -1, stream_)});
    return routing;
  }

  void experts(const Matrix& gate, const Matrix& up, const Matrix& down, const Activations& x,
               const Routing& routing, Activations& out) override {
    const int rows = static_cast<int>(x.rows);
    const int k = routing.top_k;
    const DeviceRouting choice = device_routing(routing, rows);
    const auto& xa = cast(x).get();
    mx::array y = static_cast<int64_t>(rows) * k >= kSortedExpertsFrom
                      ? experts_sorted(cast(gate), cast(up), cast(down), xa, choice.index)
                      : experts_direct(cast(gate), cast(up), cast(down), xa, choice.index);
    // y: [rows, k, hidden]; the weighted sum over the k choices runs in f32.
    auto sum = mx::sum(mx::multiply(mx::astype(y, mx::float32, stream_), choice.weights, stream_), 1, false, stream_);
    cast(out).set(mx::astype(sum, compute_, stream_));
  }

 private:
  static mx::Shape shape_of(const Activations& a) {
    return {static_cast<int32_t>(a.rows), static_cast<int32_t>(a.cols)};
  }

  static mx::array ids_array(std::span<const int32_t> ids) {
    return mx::array(ids.data(), {static_cast<int32_t>(ids.size())}, mx::int32);
  }

  /**
   * The input of a quantized product. MLX's cpu kernels accumulate a bf16 product in bf16 where the CPU has no
   * bf16 SIMD (x86), which costs several per cent of accuracy; widening x to f32 there takes the f32 kernel,
   * which accumulates in f32 as Metal's bf16 kernels do. The result is rounded to the compute dtype as usual.
   */
  mx::array quantized_input(const mx::array& x) {
    return device_ == mx::Device::cpu ? mx::astype(x, mx::float32, stream_) : x;
  }

  mx::array sdpa(const mx::array& q, const mx::array& k, const mx::array& v, float scale, const std::string& mask,
                 std::optional<mx::array> mask_array = std::nullopt) {
#if MLX_VERSION_NUMERIC >= 32002
    // 0.32.2 added force_fused (false: MLX picks the kernel) before the stream argument.
    return mx::fast::scaled_dot_product_attention(q, k, v, scale, mask, std::move(mask_array), std::nullopt, false,
                                                  stream_);
#else
    return mx::fast::scaled_dot_product_attention(q, k, v, scale, mask, std::move(mask_array), std::nullopt, stream_);
#endif
  }

  /** y = x W^T for a single matrix. */
  mx::array linear(const MlxMatrix& w, const mx::array& x) {
    if (w.quantized())
      return mx::quantized_matmul(quantized_input(x), w.weight, *w.scales, w.biases, true, w.group, w.bits, "affine",
                                  stream_);
    return mx::matmul(x, mx::transpose(w.weight, stream_), stream_);
  }

  /** y = x W_e^T with e chosen per batch entry from the stacked experts. */
  mx::array gathered_linear(const MlxMatrix& w, const mx::array& x, const mx::array& index, bool sorted) {
    if (w.quantized())
      return mx::gather_qmm(quantized_input(x), w.weight, *w.scales, w.biases, std::nullopt, index, true, w.group,
                            w.bits, "affine", sorted, stream_);
    const auto b = mx::swapaxes(w.weight, -1, -2, stream_);
    return mx::gather_mm(mx::astype(x, b.dtype(), stream_), b, std::nullopt, index, sorted, stream_);
  }

  /**
   * SwiGLU over the gathered experts: down(silu(gate x) * up x) in the compute dtype, as mlx-lm takes it: one
   * compiled (fused) kernel on the products as they come (compute dtype), instead of two casts to f32 and three
   * element-wise kernels. Within bf16 tolerance of the f32 reference (test/engine/engine-mlx.test.ts).
   */
  mx::array swiglu(const MlxMatrix& gate, const MlxMatrix& up, const MlxMatrix& down, const mx::array& x,
                   const mx::array& index, bool sorted) {
    auto g = mx::astype(gathered_linear(gate, x, index, sorted), compute_, stream_);
    auto u = mx::astype(gathered_linear(up, x, index, sorted), compute_, stream_);
    return gathered_linear(down, silu_product()({g, u})[0], index, sorted);
  }

  /** Every row against its k experts: x [rows, 1, 1, hidden] x index [rows, k] -> [rows, k, hidden]. */
  mx::array experts_direct(const MlxMatrix& gate, const MlxMatrix& up, const MlxMatrix& down, const mx::array& x,
                           const mx::array& index) {
    auto xe = mx::expand_dims(x, {-2, -3}, stream_);
    return mx::squeeze(swiglu(gate, up, down, xe, index, false), 2, stream_);
  }

  /** The (row, expert) pairs sorted by expert, computed, then put back in row order. */
  mx::array experts_sorted(const MlxMatrix& gate, const MlxMatrix& up, const MlxMatrix& down, const mx::array& x,
                           const mx::array& index) {
    const int rows = index.shape(0);
    const int k = index.shape(1);
    auto flat = mx::flatten(index, stream_);
    auto order = mx::argsort(flat, stream_);
    auto inverse = mx::argsort(order, stream_);
    auto source_rows = mx::floor_divide(order, mx::array(static_cast<uint32_t>(k)), stream_);
    auto xs = mx::take(mx::expand_dims(x, 1, stream_), source_rows, 0, stream_);  // [rows*k, 1, hidden]
    auto y = swiglu(gate, up, down, xs, mx::take(flat, order, stream_), true);    // [rows*k, 1, hidden]
    y = mx::take(y, inverse, 0, stream_);
    return mx::reshape(y, {rows, k, y.shape(-1)}, stream_);
  }

  /** The routing as device arrays: made by route(), or uploaded from a host-side routing. */
  static DeviceRouting device_routing(const Routing& routing, int rows) {
    if (routing.device) return *static_cast<const DeviceRouting*>(routing.device.get());
    const int k = routing.top_k;
    if (routing.experts.size() != static_cast<size_t>(rows) * k || routing.weights.size() != routing.experts.size())
      throw std::invalid_argument("mlx backend: routing holds " + std::to_string(routing.experts.size()) +
                                  " choices for " + std::to_string(rows) + " rows of top " + std::to_string(k));
    const std::vector<uint32_t> chosen(routing.experts.begin(), routing.experts.end());
    return DeviceRouting{mx::array(chosen.data(), {rows, k}, mx::uint32),
                         mx::array(routing.weights.data(), {rows, k, 1}, mx::float32)};
  }

  /** One sequence's attention: its own cache, its own kernel. */
  mx::array attend_alone(const Activations& q, const Activations& k, const Activations& v, int layer,
                         const AttentionSegment& s, const AttentionShape& shape) {
    auto* cache = static_cast<MlxKvCache*>(s.cache);
    auto qh = heads_of(cast(q).get(), s, shape.heads, shape.head_dim);
    auto kh = heads_of(cast(k).get(), s, shape.kv_heads, shape.head_dim);
    auto vh = heads_of(cast(v).get(), s, shape.kv_heads, shape.head_dim);
    auto [keys, values] = cache->append(layer, kh, vh, s.position);
    // Causal with the queries aligned to the last keys; a single query sees every cached position anyway.
    const std::string mask = s.rows > 1 ? "causal" : "";
    auto o = sdpa(qh, keys, values, shape.scale, mask);
    ++attention_launches_;
    const int rows = static_cast<int>(s.rows);
    return mx::reshape(mx::transpose(o, {0, 2, 1, 3}, stream_), {rows, shape.heads * shape.head_dim}, stream_);
  }

  /**
   * The decode rows (one query each) that may share one attention kernel, in groups of two or more (indices into
   * segments). Rows share a group only where MLX would pick the same kernel for each of them alone, so that a
   * row's bits do not depend on its batch (backend.h): MLX chooses its single-query kernel, and the two-pass
   * kernel's block count, by the number of keys, at thresholds that are powers of two from 1,024 (MLX 0.31-0.32
   * on Metal), and it skips masked keys outright. So a group's keys all lie strictly between two powers of two
   * (a row at exactly one, >= 1,024, runs alone), and within a quarter of that span, which bounds the slab's
   * padding to a quarter of a row.
   */
  static std::vector<std::vector<size_t>> decode_groups(std::span<const AttentionSegment> segments) {
    std::map<int64_t, std::vector<size_t>> by_class;
    for (size_t i = 0; i < segments.size(); ++i) {
      if (segments[i].rows != 1) continue;
      const int64_t c = key_class(segments[i].position + 1);
      if (c >= 0) by_class[c].push_back(i);
    }
    std::vector<std::vector<size_t>> groups;
    for (auto& [c, rows] : by_class)
      if (rows.size() >= 2) groups.push_back(std::move(rows));
    return groups;
  }

  /** The class of a query over n keys (decode_groups); -1: it runs alone. */
  static int64_t key_class(int64_t n) {
    constexpr int64_t kSmall = 64;
    if (n <= kSmall) return 0;
    const auto span = static_cast<int64_t>(std::bit_floor(static_cast<uint64_t>(n - 1)));  // n in (span, 2 span]
    if (n == 2 * span && n >= 1024) return -1;
    const int64_t quarter = (n - 1 - span) * 4 / span;
    return 1 + std::countr_zero(static_cast<uint64_t>(span)) * 4 + quarter;
  }

  /**
   * The rows of `group` (decode rows of one class) through one slab and one attention kernel: one scatter writes
   * each row's new key and value, a mask hides each slot's positions past its row's (and every position of a
   * slot no row of this batch owns). Returns the rows' outputs, [rows, heads * head_dim], in group order.
   */
  mx::array attend_together(const Activations& q, const Activations& k, const Activations& v, int layer,
                            std::span<const AttentionSegment> segments, const std::vector<size_t>& group,
                            const AttentionShape& shape) {
    const int n = static_cast<int>(group.size());
    std::vector<MlxKvCache*> caches;
    std::vector<int32_t> batch_rows, positions;
    int64_t length = 0;
    for (size_t i : group) {
      caches.push_back(static_cast<MlxKvCache*>(segments[i].cache));
      batch_rows.push_back(static_cast<int32_t>(segments[i].row));
      positions.push_back(static_cast<int32_t>(segments[i].position));
      length = std::max(length, segments[i].position + 1);
      caches.back()->reserve(segments[i].position + 1);
    }
    const std::shared_ptr<KvSlab> slab = slab_for(layer, key_class(length), shape);
    std::vector<int32_t> slots(n);
    for (int j = 0; j < n; ++j) slots[j] = caches[j]->slot_in(layer, *slab);
    slab->reserve_free(static_cast<int>(std::count(slots.begin(), slots.end(), -1)));
    for (int j = 0; j < n; ++j)
      if (slots[j] < 0) slots[j] = caches[j]->move_to_slab(layer, slab, shape.kv_heads, shape.head_dim);
    slab->grow(length);

    // Queries in slot order; a slot no row owns takes any row's query, and the mask hides all its keys.
    const int total = slab->slots();
    std::vector<int32_t> query_rows(total, batch_rows[0]);
    std::vector<int32_t> last_seen(total, -1);
    for (int j = 0; j < n; ++j) {
      query_rows[slots[j]] = batch_rows[j];
      last_seen[slots[j]] = positions[j];
    }
    const int hd = shape.head_dim;
    auto take = [&](const Activations& a, const std::vector<int32_t>& rows, int heads) {
      const int count = static_cast<int>(rows.size());
      return mx::reshape(mx::take(cast(a).get(), ids_array(rows), 0, stream_), {count, heads, 1, hd}, stream_);
    };
    const auto slot_ids = ids_array(slots);
    auto [keys, values] = slab->write(take(k, batch_rows, shape.kv_heads), take(v, batch_rows, shape.kv_heads),
                                      slot_ids, ids_array(positions), length);
    auto o = sdpa(take(q, query_rows, shape.heads), keys, values, shape.scale, "", length_mask(last_seen, length));
    ++attention_launches_;
    return mx::take(mx::reshape(o, {total, shape.heads * hd}, stream_), slot_ids, 0, stream_);
  }

  /**
   * This layer's slab for a key class. A slab with more than an eighth of its slots free (members left for other
   * classes, or ended) is replaced by a new one that the rows move into as they come (each one copy of a row),
   * so free slots never cost much memory.
   */
  std::shared_ptr<KvSlab> slab_for(int layer, int64_t cls, const AttentionShape& shape) {
    std::weak_ptr<KvSlab>& known = slabs_[{layer, cls}];
    auto slab = known.lock();
    if (slab && (slab->slots() - slab->members()) * 8 <= slab->slots()) return slab;
    slab = std::make_shared<KvSlab>(shape.kv_heads, shape.head_dim, compute_, stream_);
    known = slab;
    return slab;
  }

  /**
   * [slots, 1, 1, length] bool: slot i sees keys [0, last_seen[i]] (none where -1). Kept for the step's other
   * layers, which ask for the same masks.
   */
  mx::array length_mask(const std::vector<int32_t>& last_seen, int64_t length) {
    if (auto known = masks_.find(last_seen); known != masks_.end() && known->second.shape(3) == length)
      return known->second;
    if (masks_.size() >= 16) masks_.clear();
    const int n = static_cast<int>(last_seen.size());
    auto visible = std::make_unique<bool[]>(static_cast<size_t>(n) * length);
    for (int i = 0; i < n; ++i)
      for (int64_t j = 0; j < length; ++j) visible[i * length + j] = j <= last_seen[i];
    mx::array mask(visible.get(), {n, 1, 1, static_cast<int>(length)}, mx::bool_);
    masks_.insert_or_assign(last_seen, mask);
    return mask;
  }

  /** A segment's rows of a [rows, heads*head_dim] block as [1, heads, rows, head_dim]. */
  mx::array heads_of(const mx::array& a, const AttentionSegment& s, int heads, int head_dim) {
    const int r0 = static_cast<int>(s.row);
    const int r1 = static_cast<int>(s.row + s.rows);
    auto rows = mx::slice(a, {r0, 0}, {r1, heads * head_dim}, stream_);
    return mx::transpose(mx::reshape(rows, {1, r1 - r0, heads, head_dim}, stream_), {0, 2, 1, 3}, stream_);
  }

  /** silu(g) * u as one compiled function (shapeless: one compilation for every batch size). */
  static const std::function<std::vector<mx::array>(const std::vector<mx::array>&)>& silu_product() {
    static const auto compiled = mx::compile(
        [](const std::vector<mx::array>& in) -> std::vector<mx::array> {
          const mx::array& g = in[0];
          return {mx::multiply(mx::multiply(g, mx::sigmoid(g)), in[1])};
        },
        true);
    return compiled;
  }

  mx::Device device_;
  mx::Stream stream_;
  WeightReader reader_;
  size_t wired_limit_ = 0;
  // Activations and KV: bf16 (what MLX models run in), or f32 to check the ops against the cpu backend.
  // The router runs in f32 either way (docs/model.md).
  mx::Dtype compute_;
  // Tokens are picked on the device (default on a GPU; STUDIO_MLX_SAMPLING=device|host chooses).
  bool device_sampling_;
  // Decode rows of one key class share one attention kernel (STUDIO_MLX_BATCHED_DECODE=off: each its own).
  bool batched_decode_;
  // Batched decode: per (layer, key class) the slab of the rows last decoded together (attend_together). The
  // member caches own it; this only finds it again.
  std::map<std::pair<int, int64_t>, std::weak_ptr<KvSlab>> slabs_;
  std::map<std::vector<int32_t>, mx::array> masks_;
  uint64_t attention_launches_ = 0;
};

// Metal on a Mac (or CUDA where MLX was built with it); otherwise MLX computes on its cpu device.
bool has_gpu() { return mx::gpu::is_available(); }

}  // namespace

}  // namespace mlxb

std::unique_ptr<Backend> make_mlx_backend() {
  if (std::string error = mlx_version_error(); !error.empty()) throw std::runtime_error(error);
  const mlx::core::Device device = mlxb::has_gpu() ? mlx::core::Device::gpu : mlx::core::Device::cpu;
  const char* dtype = std::getenv("STUDIO_MLX_DTYPE");
  const std::string choice = dtype ? dtype : "bf16";
  if (choice != "bf16" && choice != "f32")
    throw std::invalid_argument("STUDIO_MLX_DTYPE must be bf16 or f32 (got \"" + choice + "\")");
  // On MLX's cpu device the host sampler is the faster (the same cores, no copy to save; the nucleus bisection
  // takes ~46 ms at 200,064 ids there, bench/RESULTS.md): tokens are picked on the device only on a GPU.
  const char* sampling = std::getenv("STUDIO_MLX_SAMPLING");
  const std::string where = sampling ? sampling : mlxb::has_gpu() ? "device" : "host";
  if (where != "device" && where != "host")
    throw std::invalid_argument("STUDIO_MLX_SAMPLING must be device or host (got \"" + where + "\")");
  const char* batched = std::getenv("STUDIO_MLX_BATCHED_DECODE");
  const std::string together = batched ? batched : "on";
  if (together != "on" && together != "off")
    throw std::invalid_argument("STUDIO_MLX_BATCHED_DECODE must be on or off (got \"" + together + "\")");
  return std::make_unique<mlxb::MlxBackend>(device, choice == "f32" ? mlx::core::float32 : mlx::core::bfloat16,
                                            where == "device", together == "on");
}

std::string mlx_device_kind() { return mlxb::has_gpu() ? "gpu" : "cpu"; }

std::string mlx_version_text() { return mlx::core::version(); }

std::string mlx_built_version_text() {
  return std::to_string(MLX_VERSION_MAJOR) + "." + std::to_string(MLX_VERSION_MINOR) + "." +
         std::to_string(MLX_VERSION_PATCH);
}

std::string mlx_version_error() {
  const std::string loaded = mlx_version_text();
  int major = -1, minor = -1, patch = -1;
  // A dev build's version carries a suffix after the release numbers; those numbers must agree.
  if (std::sscanf(loaded.c_str(), "%d.%d.%d", &major, &minor, &patch) == 3 && major == MLX_VERSION_MAJOR &&
      minor == MLX_VERSION_MINOR && patch == MLX_VERSION_PATCH)
    return "";
  const std::string path = mlx_library_path();
  return "MLX version mismatch: studio_engine was built against MLX " + mlx_built_version_text() +
         " but loaded MLX " + loaded + (path.empty() ? std::string() : " from " + path) +
         "; rebuild the engine against the installed MLX (npm rebuild), or install MLX " + mlx_built_version_text();
}

std::string mlx_library_path() {
  Dl_info where{};
  const bool found = ::dladdr(reinterpret_cast<void*>(&mlx::core::version), &where) != 0 && where.dli_fname;
  return found ? where.dli_fname : "";
}

std::optional<size_t> mlx_max_recommended_working_set() { return mlxb::max_recommended_working_set(); }

}  // namespace studio
