// Conversions of the prefix-cache block calls (common/engine-api.ts stashBlocks, assemble, dropBlocks,
// exportBlock, importBlock) between JavaScript values and the shard's types, on the JS thread. Errors name the
// argument at fault.
#pragma once

#include <napi.h>

#include <string>
#include <vector>

#include "model/minimax_m2.h"

namespace studio::addon {

/** stashBlocks' [{id, start, length}]. */
std::vector<model::BlockSlice> parse_block_slices(Napi::Env env, Napi::Value v);
/** assemble's [{id, take}]. */
std::vector<model::BlockTake> parse_block_takes(Napi::Env env, Napi::Value v);
/** A block id: a non-empty string. */
std::string parse_block_id(Napi::Env env, Napi::Value v, const std::string& where);
/** dropBlocks' ids. */
std::vector<std::string> parse_block_ids(Napi::Env env, Napi::Value v);
/** importBlock's Uint8Array per layer, copied (the engine thread reads them after this call returns). */
std::vector<std::vector<uint8_t>> parse_layer_bytes(Napi::Env env, Napi::Value v);
/** exportBlock's arrays as Uint8Arrays that own the memory (no copy). */
Napi::Value layer_bytes_to_js(Napi::Env env, std::vector<std::vector<uint8_t>>&& layers);

}  // namespace studio::addon
