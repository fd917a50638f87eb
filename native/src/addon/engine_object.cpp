#include "addon/engine_object.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
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

double number_field(const Napi::Object& o, const char* key, const std::string& where) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
    throw Napi::TypeError::New(o.Env(), where + ": " + key + " must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}

int64_t int_field(const Napi::Object& o, const char* key, const std::string& where, int64_t min, int64_t max) {
  const double d = number_field(o, key, where);
  if (d != std::floor(d) || d < static_cast<double>(min) || d > static_cast<double>(max))
    throw Napi::RangeError::New(o.Env(), where + ": " + key + " must be an integer in [" + std::to_string(min) + ", " +
                                             std::to_string(max) + "] (got " + std::to_string(d) + ")");
  return static_cast<int64_t>(d);
}

double optional_number(const Napi::Object& o, const char* key, double fallback, const std::string& where) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  return number_field(o, key, where);
}

io::QuantSpec parse_quant(Napi::Env env, Napi::Value v, const std::string& where) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, where + " must be an object");
  Napi::Object o = v.As<Napi::Object>();
  io::QuantSpec q;
  q.bits = static_cast<int>(int_field(o, "bits", where, 2, 8));
  q.group = static_cast<int>(int_field(o, "groupSize", where, 32, 128));
  if (q.bits == 7) throw Napi::RangeError::New(env, where + ": bits must be 2, 3, 4, 5, 6 or 8");
  if (q.group != 32 && q.group != 64 && q.group != 128)
    throw Napi::RangeError::New(env, where + ": groupSize must be 32, 64 or 128");
  return q;
}

model::ModelConfig parse_config(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) throw Napi::TypeError::New(env, "config must be an object");
  Napi::Object o = v.As<Napi::Object>();
  const std::string w = "config";
  constexpr int64_t kBig = int64_t{1} << 31;
  model::ModelConfig c;
  c.hidden = int_field(o, "hiddenSize", w, 1, kBig);
  c.layers = static_cast<int>(int_field(o, "numLayers", w, 1, 100000));
  c.heads = static_cast<int>(int_field(o, "numHeads", w, 1, 100000));
  c.kv_heads = static_cast<int>(int_field(o, "numKvHeads", w, 1, 100000));
  c.head_dim = static_cast<int>(int_field(o, "headDim", w, 1, 100000));
  c.rotary_dim = static_cast<int>(int_field(o, "rotaryDim", w, 0, c.head_dim));
  c.rope_theta = static_cast<float>(number_field(o, "ropeTheta", w));
  c.rms_eps = static_cast<float>(number_field(o, "rmsNormEps", w));
  c.intermediate = int_field(o, "intermediateSize", w, 1, kBig);
  c.experts = static_cast<int>(int_field(o, "numExperts", w, 1, 100000));
  c.top_k = static_cast<int>(int_field(o, "expertsPerToken", w, 1, c.experts));
  c.vocab = int_field(o, "vocabSize", w, 1, kBig);
  c.max_positions = int_field(o, "maxPositionEmbeddings", w, 1, kBig);
  if (c.heads % c.kv_heads != 0) throw Napi::RangeError::New(env, "config: numHeads must be a multiple of numKvHeads");
  if (c.rotary_dim % 2 != 0) throw Napi::RangeError::New(env, "config: rotaryDim must be even");
  Napi::Value q = o.Get("quantization");
  if (!q.IsUndefined() && !q.IsNull()) c.quant = parse_quant(env, q, "config.quantization");
  Napi::Value ov = o.Get("quantOverrides");
  if (ov.IsObject()) {
    Napi::Object m = ov.As<Napi::Object>();
    Napi::Array keys = m.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      const std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      c.quant_overrides[key] = parse_quant(env, m.Get(key), "config.quantOverrides." + key);
    }
  }
  return c;
}

model::SamplingParams parse_sampling(Napi::Env env, Napi::Value v, const std::string& where) {
  model::SamplingParams s;
  if (v.IsUndefined() || v.IsNull()) return s;
  if (!v.IsObject()) throw Napi::TypeError::New(env, where + ": sampling must be an object");
  Napi::Object o = v.As<Napi::Object>();
  s.temperature = static_cast<float>(optional_number(o, "temperature", 0, where + ".sampling"));
  s.top_p = static_cast<float>(optional_number(o, "topP", 1, where + ".sampling"));
  s.top_k = static_cast<int>(optional_number(o, "topK", 0, where + ".sampling"));
  const double seed = optional_number(o, "seed", 0, where + ".sampling");
  s.top_logprobs = static_cast<int>(optional_number(o, "topLogprobs", 0, where + ".sampling"));
  if (s.temperature < 0 || s.top_p <= 0 || s.top_p > 1 || s.top_k < 0 || s.top_logprobs < 0 || s.top_logprobs > 1000 ||
      seed < 0 || seed != std::floor(seed))
    throw Napi::RangeError::New(env, where + ".sampling: temperature >= 0, 0 < topP <= 1, topK >= 0, "
                                             "0 <= topLogprobs <= 1000 and a non-negative integer seed are required");
  s.seed = static_cast<uint64_t>(seed);
  Napi::Value bias = o.Get("logitBias");
  if (bias.IsArray()) {
    Napi::Array a = bias.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value pair = a.Get(i);
      if (!pair.IsArray() || pair.As<Napi::Array>().Length() != 2)
        throw Napi::TypeError::New(env, where + ".sampling.logitBias entries must be [token, bias]");
      Napi::Array p = pair.As<Napi::Array>();
      s.logit_bias.emplace_back(p.Get(0u).ToNumber().Int32Value(), p.Get(1u).ToNumber().FloatValue());
    }
  }
  return s;
}

/**
 * The backend for options.backend. "auto" takes mlx when MLX computes on a GPU; on a cpu-only MLX (Linux) the
 * built-in cpu kernels are the faster path (bench/engine-mlx.ts) and keep f32 activations, so auto stays cpu.
 */
std::unique_ptr<Backend> make_backend(const std::string& choice, int threads) {
#ifdef STUDIO_WITH_MLX
  if (choice == "mlx" || (choice == "auto" && mlx_device_kind() == "gpu")) return make_mlx_backend();
#endif
  return make_cpu_backend(threads);
}

std::vector<model::ForwardItem> parse_batch(Napi::Env env, Napi::Value v, WireDtype wire) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, "forward: batch must be an array");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<model::ForwardItem> batch(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const std::string where = "forward: batch[" + std::to_string(i) + "]";
    Napi::Value e = a.Get(i);
    if (!e.IsObject()) throw Napi::TypeError::New(env, where + " must be an object");
    Napi::Object o = e.As<Napi::Object>();
    model::ForwardItem& item = batch[i];
    item.seq = static_cast<uint32_t>(int_field(o, "seq", where, 0, 0xFFFFFFFFll));
    item.position = int_field(o, "position", where, 0, int64_t{1} << 40);
    Napi::Value tokens = o.Get("tokens");
    Napi::Value hidden = o.Get("hidden");
    if (!tokens.IsUndefined()) {
      if (!tokens.IsTypedArray() || tokens.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        throw Napi::TypeError::New(env, where + ".tokens must be an Int32Array");
      Napi::Int32Array t = tokens.As<Napi::Int32Array>();
      item.tokens.assign(t.Data(), t.Data() + t.ElementLength());
    }
    if (!hidden.IsUndefined()) {
      if (!hidden.IsTypedArray() || hidden.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        throw Napi::TypeError::New(env, where + ".hidden must be a Uint8Array");
      Napi::Uint8Array h = hidden.As<Napi::Uint8Array>();
      try {
        item.hidden = decode_hidden(h.Data(), h.ByteLength(), wire, where);
      } catch (const std::invalid_argument& e) {
        throw Napi::RangeError::New(env, e.what());
      }
      item.has_hidden = true;
    }
    if (!tokens.IsUndefined() && item.has_hidden)
      throw Napi::TypeError::New(env, where + " has both tokens and hidden");
    item.sampling = parse_sampling(env, o.Get("sampling"), where);
    item.return_logits = o.Get("returnLogits").ToBoolean().Value();
  }
  return batch;
}

/** A typed array that owns vector v's memory (no copy); the vector is freed when JS collects the buffer. */
Napi::ArrayBuffer adopt(Napi::Env env, std::vector<float>&& v) {
  auto owned = std::make_unique<std::vector<float>>(std::move(v));
  float* data = owned->data();
  const size_t bytes = owned->size() * sizeof(float);
  // Ownership passes to the ArrayBuffer's finalizer, which rebuilds the unique_ptr.
  return Napi::ArrayBuffer::New(
      env, data, bytes, [](Napi::Env, void*, std::vector<float>* hint) { std::unique_ptr<std::vector<float>> drop(hint); },
      owned.release());
}

Napi::Value result_to_js(Napi::Env env, model::ForwardResult& r, WireDtype wire) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("seq", Napi::Number::New(env, r.seq));
  if (!r.sample && wire == WireDtype::BF16) {
    const std::vector<uint16_t> narrow = to_bf16(r.hidden);
    Napi::Uint8Array bytes = Napi::Uint8Array::New(env, narrow.size() * 2);
    std::memcpy(bytes.Data(), narrow.data(), narrow.size() * 2);
    o.Set("hidden", bytes);
    return o;
  }
  if (!r.sample) {
    const size_t bytes = r.hidden.size() * sizeof(float);
    o.Set("hidden", Napi::Uint8Array::New(env, bytes, adopt(env, std::move(r.hidden)), 0));
    return o;
  }
  o.Set("token", Napi::Number::New(env, r.sample->token));
  o.Set("logprob", Napi::Number::New(env, r.sample->logprob));
  if (!r.sample->top.empty()) {
    Napi::Array top = Napi::Array::New(env, r.sample->top.size());
    for (size_t i = 0; i < r.sample->top.size(); ++i) {
      Napi::Object t = Napi::Object::New(env);
      t.Set("token", Napi::Number::New(env, r.sample->top[i].first));
      t.Set("logprob", Napi::Number::New(env, r.sample->top[i].second));
      top.Set(static_cast<uint32_t>(i), t);
    }
    o.Set("topLogprobs", top);
  }
  if (!r.logits.empty()) {
    const size_t n = r.logits.size();
    o.Set("logits", Napi::Float32Array::New(env, n, adopt(env, std::move(r.logits)), 0));
  }
  return o;
}

}  // namespace

Napi::Function EngineObject::define(Napi::Env env) {
  return DefineClass(env, "Engine",
                     {InstanceMethod<&EngineObject::load>("load"), InstanceMethod<&EngineObject::forward>("forward"),
                      InstanceMethod<&EngineObject::release>("release"), InstanceMethod<&EngineObject::fork>("fork"),
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
        shard_ = std::make_unique<model::MinimaxM2Shard>(model_dir_, config_, range_, make_backend(backend_choice_, threads_), progress);
        backend_name_ = shard_->backend().name();
        wire_ = shard_->backend().activation_dtype() == "bf16" ? WireDtype::BF16 : WireDtype::F32;
        weight_bytes_ = static_cast<double>(shard_->weight_bytes());
        kv_bytes_per_token_ = static_cast<double>(shard_->kv_bytes_per_token());
        backend_threads_ = shard_->backend().threads();
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

Napi::Value EngineObject::stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("backend", backend_name_);
  o.Set("activationDtype", wire_dtype_name(wire_));
  o.Set("threads", backend_threads_.load());
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
