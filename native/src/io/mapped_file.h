// Read-only memory map of a whole file (RAII). The mapping lives as long as the object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace studio::io {

class MappedFile {
 public:
  /** Maps path read-only; throws std::runtime_error naming the file when it cannot. */
  explicit MappedFile(std::string path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace studio::io
