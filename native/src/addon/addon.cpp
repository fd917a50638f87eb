// Module entry: the Engine class, the backends this build has (and the cpu kernels' SIMD path), and the
// memory-bandwidth probe for benches.
#include <napi.h>

#include <memory>

#include "addon/engine_object.h"
#include "backend/cpu/bandwidth.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/simd.h"
#ifdef STUDIO_WITH_MLX
#include "backend/mlx/mlx_backend.h"
#endif

namespace studio::addon {

namespace {

class BandwidthWorker final : public Napi::AsyncWorker {
 public:
  BandwidthWorker(Napi::Env env, int threads, double bytes, bool read_only)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        threads_(threads),
        bytes_(bytes),
        read_only_(read_only) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    const size_t n = static_cast<size_t>(bytes_);
    result_ = read_only_ ? cpu::measure_read_bandwidth(threads_, n) : cpu::measure_copy_bandwidth(threads_, n);
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), result_)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int threads_;
  double bytes_;
  bool read_only_;
  double result_ = 0;
};

Napi::Value available_backends(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env());
  a.Set(0u, "cpu");
#ifdef STUDIO_WITH_MLX
  a.Set(1u, "mlx");
#endif
  return a;
}

/**
 * The MLX this addon was built with: {version (loaded), builtWith, device, maxRecommendedWorkingSetBytes (GPU
 * only), versionError (only on a mismatch), libraryPath}, or null when it was built without MLX.
 */
Napi::Value mlx_info(const Napi::CallbackInfo& info) {
#ifdef STUDIO_WITH_MLX
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", mlx_version_text());
  o.Set("builtWith", mlx_built_version_text());
  o.Set("device", mlx_device_kind());
  if (auto bytes = mlx_max_recommended_working_set())
    o.Set("maxRecommendedWorkingSetBytes", Napi::Number::New(env, static_cast<double>(*bytes)));
  if (std::string error = mlx_version_error(); !error.empty()) o.Set("versionError", error);
  if (std::string path = mlx_library_path(); !path.empty()) o.Set("libraryPath", path);
  return o;
#else
  return info.Env().Null();
#endif
}

/**
 * The cpu backend's kernels in this build: {simd: its SIMD path, int16: whether 4/8-bit matmuls take int16 inputs,
 * int8: whether the int8 precision mode has its kernels here}.
 */
Napi::Value cpu_info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("simd", cpu::simd::kName);
  o.Set("int16", cpu::has_int16_dot());
  o.Set("int8", cpu::has_int8_dot());
  return o;
}

Napi::Value measure_memory_bandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double threads = info[0].ToNumber().DoubleValue();
  const double bytes = info[1].ToNumber().DoubleValue();
  if (!(threads >= 1 && threads <= 1024) || !(bytes >= 1 && bytes <= 64.0 * (1ull << 30)))
    throw Napi::RangeError::New(env, "measureMemoryBandwidth: threads in [1, 1024] and bytes in [1, 64 GiB] required");
  const bool read_only = info[2].IsString() && info[2].As<Napi::String>().Utf8Value() == "read";
  // An AsyncWorker deletes itself after OnOK/OnError, so ownership is handed over on Queue().
  BandwidthWorker* worker =
      std::make_unique<BandwidthWorker>(env, static_cast<int>(threads), bytes, read_only).release();
  Napi::Promise p = worker->promise();
  worker->Queue();
  return p;
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", EngineObject::define(env));
  exports.Set("availableBackends", Napi::Function::New(env, available_backends));
  exports.Set("mlxInfo", Napi::Function::New(env, mlx_info));
  exports.Set("cpuInfo", Napi::Function::New(env, cpu_info));
  exports.Set("measureMemoryBandwidth", Napi::Function::New(env, measure_memory_bandwidth));
  return exports;
}

}  // namespace studio::addon

Napi::Object InitStudioEngine(Napi::Env env, Napi::Object exports) { return studio::addon::init(env, exports); }

NODE_API_MODULE(studio_engine, InitStudioEngine)
