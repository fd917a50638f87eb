#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "io/json.h"

namespace studio::io {

namespace {

// Header larger than this is not a real checkpoint (the format itself caps it at 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;

struct DtypeInfo {
  DType dtype;
  size_t bytes;
};

bool dtype_from_text(const std::string& s, DtypeInfo& out) {
  static const std::map<std::string, DtypeInfo> table = {
      {"F32", {DType::F32, 4}},  {"F16", {DType::F16, 2}},   {"BF16", {DType::BF16, 2}},
      {"U32", {DType::U32, 4}},  {"F64", {DType::Other, 8}}, {"I64", {DType::Other, 8}},
      {"U64", {DType::Other, 8}}, {"I32", {DType::Other, 4}}, {"I16", {DType::Other, 2}},
      {"U16", {DType::Other, 2}}, {"I8", {DType::Other, 1}},  {"U8", {DType::Other, 1}},
      {"BOOL", {DType::Other, 1}}, {"F8_E4M3", {DType::Other, 1}}, {"F8_E5M2", {DType::Other, 1}},
  };
  auto it = table.find(s);
  if (it == table.end()) return false;
  out = it->second;
  return true;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const std::string& f = file_->path();
  if (file_->size() < 8) throw std::runtime_error(f + ": truncated (no safetensors header)");
  uint64_t header_len = read_u64_le(file_->data());
  if (header_len > kMaxHeader || header_len > file_->size() - 8)
    throw std::runtime_error(f + ": header length " + std::to_string(header_len) + " exceeds the file");
  std::string_view text(reinterpret_cast<const char*>(file_->data() + 8), header_len);
  JsonValue header;
  try {
    header = parse_json(text);
  } catch (const std::exception& e) {
    throw std::runtime_error(f + ": bad header: " + e.what());
  }
  if (!header.is_object()) throw std::runtime_error(f + ": header is not a JSON object");
  const uint8_t* data = file_->data() + 8 + header_len;
  const uint64_t data_size = file_->size() - 8 - header_len;

  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.object) {
    if (name == "__metadata__") continue;
    // A named reference, not the structured binding: clang before 16 (Xcode 14's Apple clang) cannot capture those.
    const std::string& tensor = name;
    auto bad = [&](const std::string& why) { return std::runtime_error(f + ": tensor " + tensor + ": " + why); };
    const JsonValue* dt = entry.find("dtype");
    const JsonValue* shape = entry.find("shape");
    const JsonValue* offsets = entry.find("data_offsets");
    if (!dt || !dt->is_string()) throw bad("missing dtype");
    if (!shape || !shape->is_array()) throw bad("missing shape");
    if (!offsets || !offsets->is_array() || offsets->array.size() != 2) throw bad("missing data_offsets");
    DtypeInfo info{};
    if (!dtype_from_text(dt->string, info)) throw bad("unknown dtype " + dt->string);
    HostTensor t;
    t.name = name;
    t.file = f;
    t.dtype = info.dtype;
    t.dtype_text = dt->string;
    uint64_t numel = 1;
    for (const JsonValue& d : shape->array) {
      if (!d.is_number() || d.number < 0 || d.number > 1e12 || d.number != static_cast<double>(static_cast<int64_t>(d.number)))
        throw bad("bad shape entry");
      t.shape.push_back(static_cast<int64_t>(d.number));
      numel *= static_cast<uint64_t>(d.number);
      if (numel > (1ull << 50)) throw bad("shape too large");
    }
    for (const JsonValue& o : offsets->array)
      if (!o.is_number() || o.number < 0 || o.number > 1.8e19) throw bad("bad data_offsets");
    uint64_t begin = static_cast<uint64_t>(offsets->array[0].number);
    uint64_t end = static_cast<uint64_t>(offsets->array[1].number);
    if (begin > end) throw bad("data_offsets begin after end");
    if (end > data_size)
      throw bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ") run past the end of the file (data area " +
                std::to_string(data_size) + " bytes; file truncated?)");
    if (end - begin != numel * info.bytes)
      throw bad("data_offsets span " + std::to_string(end - begin) + " bytes but " + dt->string + " " + t.shape_text() +
                " needs " + std::to_string(numel * info.bytes));
    t.data = data + begin;
    t.bytes = end - begin;
    t.file_offset = 8 + header_len + begin;
    auto [it, fresh] = tensors_.emplace(name, std::move(t));
    spans.push_back({begin, end, &it->first});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].begin < spans[i - 1].end && spans[i].end > spans[i].begin)
      throw std::runtime_error(f + ": tensor " + *spans[i].name + ": data overlaps tensor " + *spans[i - 1].name);
}

const HostTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace studio::io
