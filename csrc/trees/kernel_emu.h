// CPU emulation of the CUDA execution model for the tree kernel (csrc/cuda/tree_kernel.cuh).
//
// Note [Kernel emulation]
// tree_walk_emu.cpp compiles the CUDA tree kernel's own code for the CPU: a block's threads are
// std::threads, __syncthreads is a barrier that a thread leaves when it returns (as an exited CUDA thread
// does), dynamic shared memory is a buffer refilled with 0xFF bytes before every block (NaN doubles and
// floats, -1 ints: a read before a write shows up in the outputs), and blocks run one after another on
// the same threads. So CI runs the kernel's indexing, chunking, row staging, shared-memory carve-up and
// summation order for every configuration against the host twin, bit for bit, without a GPU (the
// pyzero::tree_walk_emulated op). What it cannot show: timing, races between threads that do not
// synchronise (the barrier orders everything), and nvcc's code generation; the cuda-marked tests cover
// those on a GPU.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace pyzero::emu {

// A reusable barrier for `n` threads; arrive_and_drop() leaves it for good (an exited thread).
class Barrier {
 public:
  explicit Barrier(int n) : expected_(n) {}
  void reset(int n) {
    const std::lock_guard<std::mutex> lock(m_);
    expected_ = n;
    arrived_ = 0;
  }
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(m_);
    const uint64_t phase = phase_;
    if (++arrived_ == expected_) {
      release();
      return;
    }
    cv_.wait(lock, [&] { return phase_ != phase; });
  }
  void arrive_and_drop() {
    const std::lock_guard<std::mutex> lock(m_);
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++phase_;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int expected_;
  int arrived_ = 0;
  uint64_t phase_ = 0;
};

// What the CUDA built-ins read on the current emulated thread.
struct ThreadContext {
  int thread = 0, threads = 0;
  int64_t block = 0;
  unsigned char* shared = nullptr;
  Barrier* barrier = nullptr;
};
inline thread_local ThreadContext ctx;

// Runs kernel(args...) on `blocks` blocks of `threads` threads with `shared_bytes` of dynamic shared memory.
struct Launcher {
  template <typename... P, typename... A>
  void launch(void (*kernel)(P...), int64_t blocks, int threads, int64_t shared_bytes, A... args) const {
    struct alignas(16) Line {
      unsigned char bytes[16];
    };
    std::vector<Line> shared(static_cast<size_t>(shared_bytes / 16 + 1));
    Barrier block_barrier(threads);
    Barrier gate(threads);
    auto body = [&](int t) {
      for (int64_t b = 0; b < blocks; ++b) {
        gate.arrive_and_wait();  // the previous block is done everywhere
        if (t == 0) {
          std::memset(shared.data(), 0xFF, shared.size() * sizeof(Line));
          block_barrier.reset(threads);
        }
        gate.arrive_and_wait();
        ctx = ThreadContext{t, threads, b, shared.front().bytes, &block_barrier};
        kernel(args...);
        block_barrier.arrive_and_drop();
      }
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) pool.emplace_back(body, t);
    for (std::thread& th : pool) th.join();
  }
};

}  // namespace pyzero::emu

#define PYZERO_KERNEL void
#define PYZERO_DYNAMIC_SHARED(name) unsigned char* name = ::pyzero::emu::ctx.shared
#define PYZERO_SYNC() ::pyzero::emu::ctx.barrier->arrive_and_wait()
// Every thread of the block reaches each __syncwarp of the kernels together: a block barrier orders the
// same writes and reads.
#define PYZERO_SYNC_WARP() ::pyzero::emu::ctx.barrier->arrive_and_wait()
#define PYZERO_THREAD_ID (::pyzero::emu::ctx.thread)
#define PYZERO_BLOCK_THREADS (::pyzero::emu::ctx.threads)
#define PYZERO_BLOCK_ID (::pyzero::emu::ctx.block)
