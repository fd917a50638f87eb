#include "io/checkpoint.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "io/json.h"

namespace studio::io {

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot read");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }

}  // namespace

Checkpoint::Checkpoint(std::string dir) : dir_(std::move(dir)) {
  index_file_ = dir_ + "/model.safetensors.index.json";
  if (!file_exists(index_file_)) {
    // A checkpoint small enough for one file has no index: every tensor lives in model.safetensors.
    index_file_.clear();
    if (!file_exists(dir_ + "/model.safetensors"))
      throw std::runtime_error(dir_ + ": neither model.safetensors.index.json nor model.safetensors found");
    const SafetensorsFile& only = shard("model.safetensors");
    (void)only;
    return;
  }
  JsonValue index;
  try {
    index = parse_json(read_text(index_file_));
  } catch (const std::exception& e) {
    throw std::runtime_error(index_file_ + ": " + e.what());
  }
  const JsonValue* map = index.find("weight_map");
  if (!map || !map->is_object()) throw std::runtime_error(index_file_ + ": no weight_map object");
  for (const auto& [name, file] : map->object) {
    if (!file.is_string() || file.string.empty() || file.string.find('/') != std::string::npos ||
        file.string.find("..") != std::string::npos)
      throw std::runtime_error(index_file_ + ": tensor " + name + ": bad shard file name");
    weight_map_[name] = file.string;
  }
}

const SafetensorsFile& Checkpoint::shard(const std::string& file) {
  auto it = shards_.find(file);
  if (it != shards_.end()) return *it->second;
  auto opened = std::make_unique<SafetensorsFile>(dir_ + "/" + file);
  return *shards_.emplace(file, std::move(opened)).first->second;
}

bool Checkpoint::has(const std::string& name) const {
  if (!index_file_.empty()) return weight_map_.count(name) != 0;
  auto it = shards_.find("model.safetensors");
  return it != shards_.end() && it->second->find(name) != nullptr;
}

const HostTensor& Checkpoint::tensor(const std::string& name) {
  std::string file = "model.safetensors";
  if (!index_file_.empty()) {
    auto it = weight_map_.find(name);
    if (it == weight_map_.end())
      throw std::runtime_error(index_file_ + ": tensor " + name + ": missing from weight_map");
    file = it->second;
  }
  const SafetensorsFile& s = shard(file);
  const HostTensor* t = s.find(name);
  if (!t) throw std::runtime_error(s.path() + ": tensor " + name + ": missing (the index names this file)");
  return *t;
}

void Checkpoint::fail(const HostTensor& t, const std::string& why) const {
  throw std::runtime_error(t.file + ": tensor " + t.name + ": " + why);
}

const HostTensor& Checkpoint::vector(const std::string& name, int64_t n) {
  const HostTensor& t = tensor(name);
  if (!is_float_dtype(t.dtype)) fail(t, "dtype " + t.dtype_text + " is not F32, F16 or BF16");
  if (t.shape != std::vector<int64_t>{n}) fail(t, "shape " + t.shape_text() + ", expected [" + std::to_string(n) + "]");
  return t;
}

const HostTensor& Checkpoint::f32_vector(const std::string& name, int64_t n) {
  const HostTensor& t = vector(name, n);
  if (t.dtype != DType::F32) fail(t, "dtype " + t.dtype_text + ", expected F32");
  return t;
}

MatrixSource Checkpoint::matrix(const std::string& path, int64_t experts, int64_t out, int64_t in, QuantSpec quant) {
  MatrixSource m;
  m.experts = experts;
  m.out = out;
  m.in = in;
  m.weight = tensor(path + ".weight");
  std::vector<int64_t> lead;
  if (experts > 0) lead.push_back(experts);
  lead.push_back(out);
  const bool quantized = has(path + ".scales");
  if (!quantized) {
    std::vector<int64_t> want = lead;
    want.push_back(in);
    if (!is_float_dtype(m.weight.dtype))
      fail(m.weight, "dtype " + m.weight.dtype_text + " is not F32, F16 or BF16 (and no " + path + ".scales: not quantized)");
    if (m.weight.shape != want) fail(m.weight, "shape " + m.weight.shape_text() + ", expected " + shape_text(want));
    return m;
  }
  if (quant.bits == 0) fail(tensor(path + ".scales"), "quantized tensor but config.json has no quantization block");
  m.bits = quant.bits;
  m.group = quant.group;
  if (in % quant.group != 0 || (in * quant.bits) % 32 != 0)
    fail(m.weight, "input width " + std::to_string(in) + " does not fit group size " + std::to_string(quant.group) +
                       " and " + std::to_string(quant.bits) + " bits");
  std::vector<int64_t> want_w = lead;
  want_w.push_back(in * quant.bits / 32);
  std::vector<int64_t> want_s = lead;
  want_s.push_back(in / quant.group);
  if (m.weight.dtype != DType::U32) fail(m.weight, "dtype " + m.weight.dtype_text + ", expected U32 (packed " + std::to_string(quant.bits) + "-bit)");
  if (m.weight.shape != want_w)
    fail(m.weight, "shape " + m.weight.shape_text() + ", expected " + shape_text(want_w) + " for " + std::to_string(quant.bits) +
                       "-bit weights of " + shape_text(lead) + " x " + std::to_string(in));
  m.scales = tensor(path + ".scales");
  m.biases = tensor(path + ".biases");
  for (const HostTensor* t : {&*m.scales, &*m.biases}) {
    if (!is_float_dtype(t->dtype)) fail(*t, "dtype " + t->dtype_text + " is not F32, F16 or BF16");
    if (t->shape != want_s)
      fail(*t, "shape " + t->shape_text() + ", expected " + shape_text(want_s) + " for group size " + std::to_string(quant.group));
  }
  return m;
}

std::vector<std::string> Checkpoint::mapped_files() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : shards_) out.push_back(file->path());
  return out;
}

}  // namespace studio::io
