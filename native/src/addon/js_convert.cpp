#include "addon/js_convert.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace studio::addon {

static double number_field(const Napi::Object& o, const char* key, const std::string& where) {
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

static io::QuantSpec parse_quant(Napi::Env env, Napi::Value v, const std::string& where) {
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

static model::SamplingParams parse_sampling(Napi::Env env, Napi::Value v, const std::string& where) {
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
  // A constraint's mask for this token (node-agent/stage.ts): Int32Arrays of ids.
  for (const auto& [key, out] : {std::pair<const char*, std::vector<int32_t>*>{"allowTokens", &s.allow},
                                 std::pair<const char*, std::vector<int32_t>*>{"banTokens", &s.ban}}) {
    Napi::Value ids = o.Get(key);
    if (ids.IsUndefined() || ids.IsNull()) continue;
    if (!ids.IsTypedArray() || ids.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, where + ".sampling." + key + " must be an Int32Array");
    Napi::Int32Array a = ids.As<Napi::Int32Array>();
    out->assign(a.Data(), a.Data() + a.ElementLength());
  }
  return s;
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
static Napi::ArrayBuffer adopt(Napi::Env env, std::vector<float>&& v) {
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


}  // namespace studio::addon
