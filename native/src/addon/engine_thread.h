// The dedicated engine thread: every task touching engine state runs here, one at a time, in submission
// order. Backends may bind state to the thread that created it (MLX streams do), so the engine is created,
// used and destroyed on this thread only.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace studio::addon {

class EngineThread {
 public:
  EngineThread();
  /** Runs the tasks already queued, then joins. */
  ~EngineThread();
  EngineThread(const EngineThread&) = delete;
  EngineThread& operator=(const EngineThread&) = delete;

  void post(std::function<void()> task);

 private:
  void loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace studio::addon
