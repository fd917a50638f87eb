#include "backend/cpu/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/cpu/simd.h"
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

double measure_read_bandwidth(int threads, size_t bytes) {
  const size_t n = std::max<size_t>(bytes, 1 << 20) / sizeof(float) / 64 * 64;
  auto src = std::make_unique<float[]>(n);
  std::fill(src.get(), src.get() + n, 1.0f);
  ThreadPool pool(std::max(1, threads));
  const int64_t parts = pool.size();
  const size_t part = (n / parts) / 64 * 64;
  std::vector<float> sums(parts);
  double best = 0;
  for (int run = 0; run < 5; ++run) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        // Four independent accumulators keep the loads, not the adds, the limit.
        const float* p = src.get() + i * part;
        simd::V a0 = simd::zero(), a1 = simd::zero(), a2 = simd::zero(), a3 = simd::zero();
        for (size_t k = 0; k < part; k += 4 * simd::kLanes) {
          a0 = simd::add(a0, simd::load(p + k));
          a1 = simd::add(a1, simd::load(p + k + simd::kLanes));
          a2 = simd::add(a2, simd::load(p + k + 2 * simd::kLanes));
          a3 = simd::add(a3, simd::load(p + k + 3 * simd::kLanes));
        }
        sums[i] = simd::hsum(simd::add(simd::add(a0, a1), simd::add(a2, a3)));
      }
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(part * parts * sizeof(float)) / s);
  }
  // The sums are the result of the reads; checking them keeps the compiler from dropping the loop.
  for (float v : sums)
    if (v != static_cast<float>(part)) return 0;
  return best;
}

}  // namespace studio::cpu
