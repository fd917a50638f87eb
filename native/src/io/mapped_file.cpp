#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace studio::io {

namespace {

// Closes the descriptor on every exit path; the mapping stays valid after close.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::MappedFile(std::string path) : path_(std::move(path)) {
  FdGuard guard{::open(path_.c_str(), O_RDONLY)};
  if (guard.fd < 0) throw std::runtime_error(path_ + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(guard.fd, &st) != 0) throw std::runtime_error(path_ + ": cannot stat (" + std::strerror(errno) + ")");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, guard.fd, 0);
  if (p == MAP_FAILED) throw std::runtime_error(path_ + ": cannot mmap (" + std::strerror(errno) + ")");
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace studio::io
