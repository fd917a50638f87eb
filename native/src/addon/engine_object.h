// The JS-visible engine: an ObjectWrap that owns the engine thread and the model shard. Methods parse their
// arguments on the JS thread, run the work on the engine thread and settle a Promise back on the JS thread
// through a thread-safe function, so the event loop never waits for a forward pass.
#pragma once

#include <napi.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "addon/engine_thread.h"
#include "addon/hidden_wire.h"
#include "model/minimax_m2.h"

namespace studio::addon {

class EngineObject : public Napi::ObjectWrap<EngineObject> {
 public:
  static Napi::Function define(Napi::Env env);

  /** new Engine(modelDir, config, options, onProgress?) */
  explicit EngineObject(const Napi::CallbackInfo& info);
  ~EngineObject() override;

  struct Job;

 private:
  static void deliver(Napi::Env env, Napi::Function fn, EngineObject* self, Job* job);
  using DoneFn = Napi::TypedThreadSafeFunction<EngineObject, Job, deliver>;

  Napi::Value load(const Napi::CallbackInfo& info);
  Napi::Value forward(const Napi::CallbackInfo& info);
  Napi::Value release(const Napi::CallbackInfo& info);
  Napi::Value fork(const Napi::CallbackInfo& info);
  Napi::Value stash_blocks(const Napi::CallbackInfo& info);
  Napi::Value assemble(const Napi::CallbackInfo& info);
  Napi::Value drop_blocks(const Napi::CallbackInfo& info);
  Napi::Value export_block(const Napi::CallbackInfo& info);
  Napi::Value import_block(const Napi::CallbackInfo& info);
  Napi::Value stats(const Napi::CallbackInfo& info);
  Napi::Value close(const Napi::CallbackInfo& info);

  Napi::Promise submit(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> settle);
  void check_open(Napi::Env env) const;
  /** Called on the engine thread after each job: figures stats() reads without touching the shard. */
  void publish_figures();

  std::string model_dir_;
  model::ModelConfig config_;
  model::ShardRange range_;
  std::string backend_choice_;
  // Set on the engine thread by load(), read on the JS thread only once load() has settled.
  std::string backend_name_ = "cpu";
  WireDtype wire_ = WireDtype::F32;
  int threads_ = 0;
  bool int8_inputs_ = false;  // options.matmulInputs == "int8": the cpu backend's fast precision mode
  bool f16_kv_ = false;       // options.kvDtype == "f16": the cpu backend caches keys and values as f16
  std::string kv_dtype_ = "f32";  // what the backend's KV caches store (stats().kvDtype)

  std::unique_ptr<EngineThread> thread_;
  DoneFn done_;
  // onProgress; its calls travel through done_ too, so every report arrives before load() settles.
  Napi::FunctionReference on_progress_;
  bool done_released_ = false;
  // Set by done_'s finalizer (environment teardown); shared because the finalizer may outlive this object.
  std::shared_ptr<std::atomic<bool>> done_gone_ = std::make_shared<std::atomic<bool>>(false);
  int pending_ = 0;
  bool closed_ = false;
  bool loaded_ = false;

  std::unique_ptr<model::MinimaxM2Shard> shard_;  // engine thread only

  // Written on the engine thread, read by stats() on the JS thread.
  std::atomic<double> kv_bytes_{0};
  std::atomic<double> weight_bytes_read_{0};
  std::atomic<double> sequences_{0};
  std::atomic<double> weight_bytes_{0};
  std::atomic<double> kv_bytes_per_token_{0};
  std::atomic<double> block_bytes_{0};
  std::atomic<double> blocks_{0};
  std::atomic<double> kv_bytes_per_position_per_layer_{0};
  std::atomic<double> wired_limit_bytes_{0};
  std::atomic<double> warmup_seconds_{0};
  std::atomic<double> steps_ahead_used_{0};
  std::atomic<double> steps_ahead_dropped_{0};
  std::atomic<double> attention_launches_{0};
  std::atomic<int> backend_threads_{0};
};

}  // namespace studio::addon
