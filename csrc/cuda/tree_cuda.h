// CUDA batched traversal of the forest IR, host-side entry points. Torch-free: raw device pointers
// and a stream. Same nodes, same decision rule and same summation order as the CPU node kernel
// (csrc/trees/tree_cpu.h), so outputs are equal bit for bit and never depend on the batch size.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../trees/tree_cpu.h"

namespace pyzero::cuda {

// Outputs (classes) per row a thread accumulates in registers; more is refused by the host wrapper.
constexpr int64_t kTreeMaxOutputs = 32;
// Threads per block of the tree kernels.
constexpr int kTreeThreads = 128;

// raw[r, o] = base[o] + values of every tree in order (as trees::predict_raw), one thread per row.
// f's pointers are device pointers. Returns the launch's CUDA error.
template <typename T>
cudaError_t tree_predict_raw(const trees::ForestView& f, const T* x, int64_t rows, int64_t n_features,
                             const double* base, bool float32_accum, double* raw, cudaStream_t stream);

// leaves[r, t] = global id of the leaf row r reaches in tree t, one thread per (row, tree).
template <typename T>
cudaError_t tree_predict_leaves(const trees::ForestView& f, const T* x, int64_t rows, int64_t n_features,
                                int32_t* leaves, cudaStream_t stream);

}  // namespace pyzero::cuda
