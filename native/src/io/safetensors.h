// One safetensors shard: header parsed and checked against the file before any tensor is handed out.
// Checked: header length inside the file, valid JSON, every entry's dtype/shape/data_offsets well formed,
// offsets inside the data area, size == numel * dtype size, and no two tensors overlapping.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "io/mapped_file.h"
#include "io/tensor.h"

namespace studio::io {

class SafetensorsFile {
 public:
  /** Maps and validates path; throws std::runtime_error naming the file (and the tensor at fault). */
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  /** The tensor named name, or nullptr. */
  const HostTensor* find(const std::string& name) const;
  size_t size() const { return file_->size(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, HostTensor> tensors_;
};

}  // namespace studio::io
