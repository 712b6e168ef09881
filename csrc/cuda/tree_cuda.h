// CUDA batched traversal of the GPU forest layouts (Note [GPU layouts], csrc/trees/tree_walk.h),
// host-side entry point. Torch-free: raw device pointers and a stream.
//
// Note [GPU tree kernel]
// A block of `threads` threads takes R = threads / lanes rows; thread i walks row i % R with tree lane
// i / R. Rows are staged in shared memory (prepared for the perfect layout) when they fit. A lane walks
// `ilp` trees at once in lockstep (independent loads in flight):
//   lanes == 1: a thread walks every tree of its row in order and adds each leaf value as it goes;
//   lanes > 1: the trees go in chunks of lanes * ilp; each (row, tree) pair of a chunk leaves its leaf
//     value (one output) or value row (several) in shared memory, then one thread per (row, output)
//     adds the chunk's values in tree order to its accumulator (shared memory, double, or float32
//     rounding after every add when float32_accum).
// Either way every output is base + tree 0 + tree 1 + ... in tree order, as the CPU kernels add: the
// result is the same bit for bit whatever the batch size, rows per block, lanes or ilp, so the
// autotuner (pyzero/trees/gpu.py) may pick any configuration without changing a single output.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../trees/tree_walk.h"

namespace pyzero::cuda {

// Largest block, and the shared memory a launch may use without opting in to more.
constexpr int kTreeMaxThreads = 512;
constexpr int64_t kTreeMaxSharedBytes = 48 * 1024;

struct WalkLaunch {
  int threads;  // a multiple of 32, <= kTreeMaxThreads
  int lanes;    // divides threads
  int ilp;      // 1, 2 or 4
  bool stage;   // stage rows in shared memory (ignored when they do not fit)
};

// Shared memory bytes a launch needs, or -1 when it cannot fit kTreeMaxSharedBytes (even unstaged).
int64_t tree_walk_shared_bytes(const trees::WalkForest& f, int64_t x_item_bytes, bool leaves, WalkLaunch cfg,
                               bool* staged);

// raw [rows, n_outputs] (when raw != nullptr) or leaves [rows, n_trees] (when leaves != nullptr).
template <typename T>
cudaError_t tree_walk(const trees::WalkForest& f, const T* x, int64_t rows, const double* base,
                      bool float32_accum, double* raw, int32_t* leaves, WalkLaunch cfg, cudaStream_t stream);

}  // namespace pyzero::cuda
