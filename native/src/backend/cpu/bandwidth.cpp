#include "backend/cpu/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "backend/cpu/thread_pool.h"

namespace studio::cpu {

double measure_copy_bandwidth(int threads, size_t bytes) {
  const size_t n = std::max<size_t>(bytes, 1 << 20);
  auto src = std::make_unique<uint8_t[]>(n);
  auto dst = std::make_unique<uint8_t[]>(n);
  // Touch both buffers first so page faults do not count as copy time.
  std::memset(src.get(), 1, n);
  std::memset(dst.get(), 0, n);
  ThreadPool pool(std::max(1, threads));
  const int64_t parts = pool.size();
  const size_t part = (n + parts - 1) / parts;
  double best = 0;
  for (int run = 0; run < 5; ++run) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const size_t off = i * part;
        if (off < n) std::memcpy(dst.get() + off, src.get() + off, std::min(part, n - off));
      }
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n) / s);
  }
  return best;
}

}  // namespace studio::cpu
