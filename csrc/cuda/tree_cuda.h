// CUDA batched traversal of the GPU forest layouts (Note [GPU layouts], csrc/trees/tree_walk.h),
// host-side entry point (Note [GPU tree kernel] in tree_launch.h). Torch-free: raw device pointers and a
// stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "tree_launch.h"

namespace pyzero::cuda {

// raw [rows, n_outputs] (when raw != nullptr) or leaves [rows, n_trees] (when leaves != nullptr).
template <typename T>
cudaError_t tree_walk(const trees::WalkForest& f, const T* x, int64_t rows, const double* base,
                      bool float32_accum, double* raw, int32_t* leaves, WalkLaunch cfg, cudaStream_t stream);

// out = Note [Fused finish] of each of the rows' sums raw [rows, f.n_outputs] by f.finish (softmax: each
// row's softmax_sums, after the mean when f.finish.divisor > 0), as finish_sums writes it on the host.
cudaError_t finish_rows(const trees::WalkForest& f, bool softmax, bool acc32, const double* raw, int64_t rows,
                        const double* base, double* out, cudaStream_t stream);

// y[i] = glibc's exp of x[i] (expf for float), computed on the device (Note [Library exp]).
template <typename T>
cudaError_t libm_exp(const T* x, T* y, int64_t n, cudaStream_t stream);

}  // namespace pyzero::cuda
