// A fixed pool of worker threads created once per backend. parallel_for hands out index chunks; the caller
// thread works too. Which thread computes a chunk never changes a result: every output element is computed
// entirely inside one chunk. A decode step dispatches ~100 jobs back to back, and steady decode starts the next
// step within a millisecond, so workers poll for the next job (and the caller for the last chunk) for up to a
// millisecond before sleeping on the condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace studio::cpu {

class ThreadPool {
 public:
  /** threads >= 1: total threads including the caller. */
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  /** Calls fn(begin, end) over [0, n) in chunks of `chunk`, on all threads; returns when all are done. */
  void parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable finished_;
  std::atomic<uint64_t> generation_{0};
  bool stopping_ = false;
  std::atomic<int> busy_{0};

  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

}  // namespace studio::cpu
