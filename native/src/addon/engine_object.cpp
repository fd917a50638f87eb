#include "addon/engine_object.h"

#include "addon/block_convert.h"
#include "addon/js_convert.h"

#include <cmath>
#include <cstring>
#include <optional>
#include <stdexcept>

#include "backend/cpu/kernels.h"
#ifdef STUDIO_WITH_MLX
#include "backend/mlx/mlx_backend.h"
#endif

namespace studio::addon {

struct EngineObject::Job {
  /** A notification (progress) rather than a call: runs on the JS thread, settles nothing. */
  std::function<void(Napi::Env)> notify;
  std::function<void()> work;
  std::function<Napi::Value(Napi::Env)> settle;
  std::string error;
  std::optional<Napi::Promise::Deferred> deferred;  // absent for notifications
};

namespace {

/**
 * The backend for options.backend. "auto" takes mlx when MLX computes on a GPU; on a cpu-only MLX (Linux) the
 * built-in cpu kernels are the faster path (bench/engine-mlx.ts) and keep f32 activations, so auto stays cpu.
 */
std::unique_ptr<Backend> make_backend(const std::string& choice, const CpuOptions& cpu) {
#ifdef STUDIO_WITH_MLX
  if (choice == "mlx" || (choice == "auto" && mlx_device_kind() == "gpu")) return make_mlx_backend();
#endif
  return make_cpu_backend(cpu);
}

}  // namespace

Napi::Function EngineObject::define(Napi::Env env) {
  return DefineClass(env, "Engine",
                     {InstanceMethod<&EngineObject::load>("load"), InstanceMethod<&EngineObject::forward>("forward"),
                      InstanceMethod<&EngineObject::release>("release"), InstanceMethod<&EngineObject::fork>("fork"),
                      InstanceMethod<&EngineObject::stash_blocks>("stashBlocks"),
                      InstanceMethod<&EngineObject::assemble>("assemble"),
                      InstanceMethod<&EngineObject::drop_blocks>("dropBlocks"),
                      InstanceMethod<&EngineObject::export_block>("exportBlock"),
                      InstanceMethod<&EngineObject::import_block>("importBlock"),
                      InstanceMethod<&EngineObject::stats>("stats"), InstanceMethod<&EngineObject::close>("close")});
}

EngineObject::EngineObject(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineObject>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "modelDir must be a string");
  model_dir_ = info[0].As<Napi::String>().Utf8Value();
  config_ = parse_config(env, info[1]);
  if (!info[2].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
  Napi::Object opts = info[2].As<Napi::Object>();
  range_.start = static_cast<int>(int_field(opts, "layerStart", "options", 0, config_.layers));
  range_.end = static_cast<int>(int_field(opts, "layerEnd", "options", range_.start, config_.layers));
  range_.embed = opts.Get("embed").ToBoolean().Value();
  range_.head = opts.Get("head").ToBoolean().Value();
  threads_ = static_cast<int>(optional_number(opts, "threads", 0, "options"));
  if (threads_ < 0 || threads_ > 1024) throw Napi::RangeError::New(env, "options: threads must be in [0, 1024]");
  Napi::Value backend = opts.Get("backend");
  backend_choice_ = backend.IsString() ? backend.As<Napi::String>().Utf8Value() : "auto";
#ifndef STUDIO_WITH_MLX
  if (backend_choice_ == "mlx")
    throw Napi::Error::New(env, "backend \"mlx\" is not available: this studio_engine was built without MLX");
#endif
  if (backend_choice_ != "auto" && backend_choice_ != "cpu" && backend_choice_ != "mlx")
    throw Napi::TypeError::New(env, "options: backend must be \"auto\", \"cpu\" or \"mlx\" (got \"" + backend_choice_ + "\")");
  Napi::Value inputs = opts.Get("matmulInputs");
  const std::string inputs_choice = inputs.IsString() ? inputs.As<Napi::String>().Utf8Value() : "default";
  if (inputs_choice != "default" && inputs_choice != "int8")
    throw Napi::TypeError::New(env, "options: matmulInputs must be \"default\" or \"int8\" (got \"" + inputs_choice + "\")");
  int8_inputs_ = inputs_choice == "int8";
  Napi::Value kv = opts.Get("kvDtype");
  const std::string kv_choice = kv.IsString() ? kv.As<Napi::String>().Utf8Value() : "f32";
  if (kv_choice != "f32" && kv_choice != "f16")
    throw Napi::TypeError::New(env, "options: kvDtype must be \"f32\" or \"f16\" (got \"" + kv_choice + "\")");
  f16_kv_ = kv_choice == "f16";

  // At process exit Node finalizes the thread-safe function before collecting this object; the finalizer
  // marks it gone so the destructor does not release a function that no longer exists.
  auto gone = std::make_unique<std::shared_ptr<std::atomic<bool>>>(done_gone_);
  done_ = DoneFn::New(
      env, "studio-engine", 0, 1, this,
      [](Napi::Env, std::shared_ptr<std::atomic<bool>>* flag, EngineObject*) {
        std::unique_ptr<std::shared_ptr<std::atomic<bool>>> owned(flag);
        (*owned)->store(true);
      },
      gone.get());
  gone.release();  // owned by the finalizer from here on
  done_.Unref(env);
  if (info[3].IsFunction()) on_progress_ = Napi::Persistent(info[3].As<Napi::Function>());
  thread_ = std::make_unique<EngineThread>();
}

EngineObject::~EngineObject() {
  // Collected without close(): stop the thread (it finishes queued work) and free the shard on it.
  if (thread_) {
    thread_->post([this] { shard_.reset(); });
    thread_.reset();
  }
  if (!done_released_ && !done_gone_->load()) done_.Release();
}

void EngineObject::deliver(Napi::Env env, Napi::Function, EngineObject* self, Job* raw) {
  std::unique_ptr<Job> job(raw);
  if (env == nullptr) return;  // environment shutting down
  if (job->notify) {
    job->notify(env);
    return;
  }
  if (!job->error.empty()) {
    job->deferred->Reject(Napi::Error::New(env, job->error).Value());
  } else {
    try {
      job->deferred->Resolve(job->settle ? job->settle(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      job->deferred->Reject(e.Value());
    }
  }
  if (--self->pending_ == 0) {
    if (!self->done_released_) self->done_.Unref(env);
    self->Unref();
  }
}

Napi::Promise EngineObject::submit(Napi::Env env, std::function<void()> work,
                                   std::function<Napi::Value(Napi::Env)> settle) {
  auto job = std::make_unique<Job>(Job{nullptr, std::move(work), std::move(settle), {}, Napi::Promise::Deferred::New(env)});
  Napi::Promise promise = job->deferred->Promise();
  // Keep the event loop alive and this object reachable while work is in flight.
  if (pending_++ == 0) {
    done_.Ref(env);
    Ref();
  }
  Job* raw = job.release();
  thread_->post([this, raw] {
    try {
      raw->work();
    } catch (const std::exception& e) {
      raw->error = e.what();
    } catch (...) {
      raw->error = "unknown engine error";
    }
    publish_figures();
    done_.BlockingCall(raw);
  });
  return promise;
}

void EngineObject::publish_figures() {
  if (!shard_) return;
  kv_bytes_ = static_cast<double>(shard_->kv_bytes());
  sequences_ = static_cast<double>(shard_->sequences());
  weight_bytes_read_ = shard_->weight_bytes_read();
  steps_ahead_used_ = static_cast<double>(shard_->steps_ahead_used());
  steps_ahead_dropped_ = static_cast<double>(shard_->steps_ahead_dropped());
  attention_launches_ = static_cast<double>(shard_->backend().attention_launches());
  block_bytes_ = static_cast<double>(shard_->block_bytes());
  blocks_ = static_cast<double>(shard_->blocks());
}

void EngineObject::check_open(Napi::Env env) const {
  if (closed_) throw Napi::Error::New(env, "engine is closed");
  if (!loaded_) throw Napi::Error::New(env, "engine is not loaded");
}

Napi::Value EngineObject::load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (loaded_ || closed_ || pending_ > 0) throw Napi::Error::New(env, "engine: load() may be called once");
  return submit(
      env,
      [this] {
        model::ProgressFn progress;
        if (!on_progress_.IsEmpty())
          progress = [this](double done, double total) {
            auto job = std::make_unique<Job>();
            job->notify = [this, done, total](Napi::Env env) {
              try {
                on_progress_.Call({Napi::Number::New(env, done), Napi::Number::New(env, total)});
              } catch (const Napi::Error&) {
                // A throwing progress callback must not break loading.
              }
            };
            if (done_.BlockingCall(job.get()) == napi_ok) job.release();
          };
        auto backend = make_backend(backend_choice_, {threads_, int8_inputs_, f16_kv_});
        shard_ = std::make_unique<model::MinimaxM2Shard>(model_dir_, config_, range_, std::move(backend), progress);
        backend_name_ = shard_->backend().name();
        kv_dtype_ = shard_->backend().kv_dtype();
        wire_ = shard_->backend().activation_dtype() == "bf16" ? WireDtype::BF16 : WireDtype::F32;
        weight_bytes_ = static_cast<double>(shard_->weight_bytes());
        kv_bytes_per_token_ = static_cast<double>(shard_->kv_bytes_per_token());
        kv_bytes_per_position_per_layer_ = static_cast<double>(shard_->kv_bytes_per_position_per_layer());
        backend_threads_ = shard_->backend().threads();
        wired_limit_bytes_ = static_cast<double>(shard_->backend().wired_limit_bytes());
        warmup_seconds_ = shard_->warmup_seconds();
      },
      [this](Napi::Env env) -> Napi::Value {
        on_progress_.Reset();
        loaded_ = true;
        return env.Undefined();
      });
}

Napi::Value EngineObject::forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  auto batch = std::make_shared<std::vector<model::ForwardItem>>(parse_batch(env, info[0], wire_));
  auto results = std::make_shared<std::vector<model::ForwardResult>>();
  return submit(
      env, [this, batch, results] { *results = shard_->forward(*batch); },
      [results, wire = wire_](Napi::Env env) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env, results->size());
        for (size_t i = 0; i < results->size(); ++i)
          out.Set(static_cast<uint32_t>(i), result_to_js(env, (*results)[i], wire));
        return out;
      });
}

Napi::Value EngineObject::release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  const uint32_t seq = info[0].ToNumber().Uint32Value();
  return submit(env, [this, seq] { shard_->release(seq); }, nullptr);
}

Napi::Value EngineObject::fork(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  const uint32_t seq = info[0].ToNumber().Uint32Value();
  const uint32_t new_seq = info[1].ToNumber().Uint32Value();
  const int64_t prefix = info[2].ToNumber().Int64Value();
  return submit(env, [this, seq, new_seq, prefix] { shard_->fork(seq, new_seq, prefix); }, nullptr);
}

Napi::Value EngineObject::stash_blocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  const uint32_t seq = info[0].ToNumber().Uint32Value();
  auto slices = std::make_shared<std::vector<model::BlockSlice>>(parse_block_slices(env, info[1]));
  return submit(env, [this, seq, slices] { shard_->stash_blocks(seq, *slices); }, nullptr);
}

Napi::Value EngineObject::assemble(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  const uint32_t new_seq = info[0].ToNumber().Uint32Value();
  auto takes = std::make_shared<std::vector<model::BlockTake>>(parse_block_takes(env, info[1]));
  return submit(env, [this, new_seq, takes] { shard_->assemble(new_seq, *takes); }, nullptr);
}

Napi::Value EngineObject::drop_blocks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  auto ids = std::make_shared<std::vector<std::string>>(parse_block_ids(env, info[0]));
  return submit(env, [this, ids] {
    for (const std::string& id : *ids) shard_->drop_block(id);
  }, nullptr);
}

Napi::Value EngineObject::export_block(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  const std::string id = parse_block_id(env, info[0], "exportBlock: id");
  auto layers = std::make_shared<std::vector<std::vector<uint8_t>>>();
  return submit(
      env, [this, id, layers] { *layers = shard_->export_block(id); },
      [layers](Napi::Env env) -> Napi::Value { return layer_bytes_to_js(env, std::move(*layers)); });
}

Napi::Value EngineObject::import_block(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  check_open(env);
  const std::string id = parse_block_id(env, info[0], "importBlock: id");
  const int64_t length = info[1].ToNumber().Int64Value();
  auto layers = std::make_shared<std::vector<std::vector<uint8_t>>>(parse_layer_bytes(env, info[2]));
  return submit(env, [this, id, length, layers] { shard_->import_block(id, length, *layers); }, nullptr);
}

Napi::Value EngineObject::stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", backend_name_);
  o.Set("activationDtype", wire_dtype_name(wire_));
  o.Set("threads", backend_threads_.load());
  // The precision mode in effect: int8 needs the cpu backend and a build with the int8 kernels.
  const bool int8 = int8_inputs_ && backend_name_ == "cpu" && cpu::has_int8_dot();
  o.Set("matmulInputs", int8 ? "int8" : "default");
  o.Set("kvDtype", kv_dtype_);
  o.Set("layerStart", range_.start);
  o.Set("layerEnd", range_.end);
  o.Set("embed", range_.embed);
  o.Set("head", range_.head);
  o.Set("hiddenSize", Napi::Number::New(env, static_cast<double>(config_.hidden)));
  o.Set("vocabSize", Napi::Number::New(env, static_cast<double>(config_.vocab)));
  o.Set("weightBytes", weight_bytes_.load());
  o.Set("kvBytes", kv_bytes_.load());
  o.Set("kvBytesPerToken", kv_bytes_per_token_.load());
  o.Set("sequences", sequences_.load());
  o.Set("weightBytesRead", weight_bytes_read_.load());
  o.Set("blockBytes", block_bytes_.load());
  o.Set("blocks", blocks_.load());
  o.Set("kvBytesPerPositionPerLayer", kv_bytes_per_position_per_layer_.load());
  o.Set("wiredLimitBytes", wired_limit_bytes_.load());
  o.Set("warmupSeconds", warmup_seconds_.load());
  o.Set("stepsAheadUsed", steps_ahead_used_.load());
  o.Set("stepsAheadDropped", steps_ahead_dropped_.load());
  o.Set("attentionLaunches", attention_launches_.load());
  return o;
}

Napi::Value EngineObject::close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  closed_ = true;
  return submit(
      env, [this] { shard_.reset(); },
      [this](Napi::Env env) -> Napi::Value {
        thread_.reset();  // the close task was the last: the thread is idle and joins at once
        done_.Release();
        done_released_ = true;
        on_progress_.Reset();
        return env.Undefined();
      });
}

}  // namespace studio::addon
