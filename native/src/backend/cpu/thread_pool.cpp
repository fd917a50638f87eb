#include "backend/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace studio::cpu {

namespace {

/**
 * How long a thread polls before it sleeps. Longer than the gap between two tokens of a steady decode (the
 * token's trip to JS and back, a few hundred microseconds), not only the gap between two jobs of one forward
 * pass: a worker that slept at every token boundary paid a wake-up each time (a futex, and on a VM the wake of
 * an idle vCPU), and 2-thread decode ran ~5% slower with longer tails than with this (bench/RESULTS.md, "The
 * thread pool's polling time"). Idle, a thread polls this long once, then sleeps.
 */
constexpr std::chrono::microseconds kPollTime{1000};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/** Polls `ready` for up to kPollTime (by the clock: a pause lasts 1 to 140 cycles, depending on the CPU). */
template <class Ready>
bool poll(Ready ready) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > kPollTime) return ready();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
  for (;;) {
    int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + chunk_));
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // The job's fields are written before generation_ moves (release), so seeing it move (acquire) is enough.
    const bool started = poll([&] { return generation_.load(std::memory_order_acquire) != seen; });
    if (!started) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_.load(std::memory_order_acquire) != seen; });
      if (stopping_) return;
    }
    seen = generation_.load(std::memory_order_acquire);
    run_chunks();
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  // Small jobs are not worth waking anyone for.
  if (workers_.empty() || n <= chunk) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    next_.store(0, std::memory_order_relaxed);
    busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  run_chunks();
  if (!poll([&] { return busy_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return busy_.load(std::memory_order_acquire) == 0; });
  }
  fn_ = nullptr;
}

}  // namespace studio::cpu
