#include "addon/block_convert.h"

#include <memory>

#include "addon/js_convert.h"

namespace studio::addon {

namespace {

Napi::Array array_arg(Napi::Env env, Napi::Value v, const std::string& where) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, where + " must be an array");
  return v.As<Napi::Array>();
}

Napi::Object entry(Napi::Env env, Napi::Array a, uint32_t i, const std::string& where) {
  Napi::Value e = a.Get(i);
  if (!e.IsObject()) throw Napi::TypeError::New(env, where + "[" + std::to_string(i) + "] must be an object");
  return e.As<Napi::Object>();
}

constexpr int64_t kMaxPositions = int64_t{1} << 40;

}  // namespace

std::string parse_block_id(Napi::Env env, Napi::Value v, const std::string& where) {
  if (!v.IsString()) throw Napi::TypeError::New(env, where + " must be a string");
  std::string id = v.As<Napi::String>().Utf8Value();
  if (id.empty() || id.size() > 256) throw Napi::RangeError::New(env, where + " must hold 1 to 256 characters");
  return id;
}

std::vector<model::BlockSlice> parse_block_slices(Napi::Env env, Napi::Value v) {
  const std::string where = "stashBlocks: blocks";
  Napi::Array a = array_arg(env, v, where);
  std::vector<model::BlockSlice> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    Napi::Object o = entry(env, a, i, where);
    out[i].id = parse_block_id(env, o.Get("id"), at + ".id");
    out[i].start = int_field(o, "start", at, 0, kMaxPositions);
    out[i].length = int_field(o, "length", at, 1, kMaxPositions);
  }
  return out;
}

std::vector<model::BlockTake> parse_block_takes(Napi::Env env, Napi::Value v) {
  const std::string where = "assemble: blocks";
  Napi::Array a = array_arg(env, v, where);
  std::vector<model::BlockTake> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    Napi::Object o = entry(env, a, i, where);
    out[i].id = parse_block_id(env, o.Get("id"), at + ".id");
    out[i].take = int_field(o, "take", at, 1, kMaxPositions);
  }
  return out;
}

std::vector<std::string> parse_block_ids(Napi::Env env, Napi::Value v) {
  const std::string where = "dropBlocks: ids";
  Napi::Array a = array_arg(env, v, where);
  std::vector<std::string> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i)
    out[i] = parse_block_id(env, a.Get(i), where + "[" + std::to_string(i) + "]");
  return out;
}

std::vector<std::vector<uint8_t>> parse_layer_bytes(Napi::Env env, Napi::Value v) {
  const std::string where = "importBlock: layers";
  Napi::Array a = array_arg(env, v, where);
  std::vector<std::vector<uint8_t>> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsTypedArray() || e.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, where + "[" + std::to_string(i) + "] must be a Uint8Array");
    Napi::Uint8Array bytes = e.As<Napi::Uint8Array>();
    out[i].assign(bytes.Data(), bytes.Data() + bytes.ByteLength());
  }
  return out;
}

Napi::Value layer_bytes_to_js(Napi::Env env, std::vector<std::vector<uint8_t>>&& layers) {
  Napi::Array out = Napi::Array::New(env, layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    auto owned = std::make_unique<std::vector<uint8_t>>(std::move(layers[i]));
    const size_t bytes = owned->size();
    // The finalizer rebuilds the unique_ptr: the vector lives exactly as long as the ArrayBuffer.
    auto buffer = Napi::ArrayBuffer::New(
        env, owned->data(), bytes,
        [](Napi::Env, void*, std::vector<uint8_t>* hint) { std::unique_ptr<std::vector<uint8_t>> drop(hint); },
        owned.get());
    owned.release();
    out.Set(static_cast<uint32_t>(i), Napi::Uint8Array::New(env, bytes, buffer, 0));
  }
  return out;
}

}  // namespace studio::addon
