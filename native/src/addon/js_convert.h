// Conversions between JavaScript values and the engine's C++ types, on the JS thread: the model config, a
// forward batch (with its sampling settings and hidden payloads) in, a forward result out. Every error names
// the field at fault, so a bad call from JS fails with a message instead of reaching the engine.
#pragma once

#include <napi.h>

#include <string>
#include <vector>

#include "addon/hidden_wire.h"
#include "model/minimax_m2.h"

namespace studio::addon {

/** options[key] as an integer in [min, max]; throws a JS RangeError/TypeError naming where and key. */
int64_t int_field(const Napi::Object& o, const char* key, const std::string& where, int64_t min, int64_t max);

/** options[key] as a finite number, or fallback when absent. */
double optional_number(const Napi::Object& o, const char* key, double fallback, const std::string& where);

/** common/model-config.ts's ModelConfig as the engine's. */
model::ModelConfig parse_config(Napi::Env env, Napi::Value v);

/** forward()'s batch: one item per sequence, tokens (Int32Array) or hidden bytes in the wire dtype. */
std::vector<model::ForwardItem> parse_batch(Napi::Env env, Napi::Value v, WireDtype wire);

/** One forward result as the ForwardOutput object of common/engine-api.ts (hidden bytes without a copy). */
Napi::Value result_to_js(Napi::Env env, model::ForwardResult& r, WireDtype wire);

}  // namespace studio::addon
