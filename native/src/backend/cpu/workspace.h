// Scratch memory the cpu backend keeps between calls. A prefill layer call needs tens of MB of short-lived
// buffers (prepared matmul inputs, expert outputs, activations); fresh std::vectors for them cost a fifth of
// prefill time in zero-filling and page faults (native/README.md, "Scratch memory"). These hand the same memory
// out again, uninitialised: every user writes each element before reading it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <type_traits>
#include <vector>

namespace studio::cpu {

/**
 * A bump allocator for one call's scratch: take() hands out 64-byte-aligned uninitialised spans, reset() makes
 * all of it available again. Memory is never given back; a round that needed more than the first block gets
 * one block of the whole size at the next reset(), so a steady workload settles on one block and no faults.
 */
class Arena {
 public:
  /** Invalidates every span taken so far. */
  void reset();

  template <typename T>
  std::span<T> take(size_t n) {
    static_assert(std::is_trivially_default_constructible_v<T> && std::is_trivially_destructible_v<T>);
    return {reinterpret_cast<T*>(take_bytes(n * sizeof(T))), n};
  }

 private:
  static constexpr size_t kAlign = 64;

  struct Block {
    std::unique_ptr<std::byte[]> storage;
    std::byte* base = nullptr;  // storage rounded up to kAlign
    size_t size = 0;
  };

  std::byte* take_bytes(size_t bytes);
  static Block make_block(size_t size);

  std::vector<Block> blocks_;
  size_t current_ = 0;  // the block take() carves from
  size_t used_ = 0;     // bytes of it handed out
  size_t round_ = 0;    // bytes handed out since reset()
};

/**
 * Float buffers for activations, handed back when an Activations dies and handed out again (best fit) without
 * being cleared. Shared with the activations it gave out, so it outlives them whatever the destruction order.
 */
class BufferPool {
 public:
  struct Buffer {
    std::unique_ptr<float[]> data;
    size_t capacity = 0;
  };

  /** A buffer of at least n floats, uninitialised. */
  Buffer acquire(size_t n);
  void release(Buffer buffer);

 private:
  // Free buffers beyond this (a layer holds ~10 activations at once) are freed, smallest first.
  static constexpr size_t kMaxFree = 24;

  std::mutex mutex_;  // activations may die on another thread than the one that runs the backend
  std::vector<Buffer> free_;
};

}  // namespace studio::cpu
