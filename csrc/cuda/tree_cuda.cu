// CUDA batched traversal of the GPU forest layouts: Note [GPU tree kernel] (tree_launch.h). The kernels
// themselves are in tree_kernel.cuh, instantiated by tree_cuda_{perfect,compact,wide}.cu.
#include <algorithm>

#include "tree_cuda.h"
#include "tree_kernel.cuh"

namespace pyzero::cuda {

// Compiled in tree_cuda_{perfect,compact,wide}.cu.
PYZERO_WALK_TEMPLATE(extern, float, trees::PerfectWalker)
PYZERO_WALK_TEMPLATE(extern, float, trees::PerfectBlockedWalker)
PYZERO_WALK_TEMPLATE(extern, float, trees::TiledWalker)
PYZERO_TILED_TEMPLATE(extern)
PYZERO_WALK_TEMPLATE(extern, float, trees::CompactWalker)
PYZERO_WALK_TEMPLATE(extern, double, trees::CompactWalker)
PYZERO_WALK_TEMPLATE(extern, float, trees::WideWalker)
PYZERO_WALK_TEMPLATE(extern, double, trees::WideWalker)

template <typename T>
cudaError_t tree_walk(const WalkForest& f, const T* x, int64_t rows, const double* base, bool float32_accum,
                      double* raw, int32_t* leaves, WalkLaunch cfg, cudaStream_t stream) {
  if (!walk_layouts(CudaLauncher{stream}, f, x, rows, base, float32_accum, raw, leaves, cfg)) {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template cudaError_t tree_walk<float>(const WalkForest&, const float*, int64_t, const double*, bool, double*,
                                      int32_t*, WalkLaunch, cudaStream_t);
template cudaError_t tree_walk<double>(const WalkForest&, const double*, int64_t, const double*, bool,
                                       double*, int32_t*, WalkLaunch, cudaStream_t);

namespace {

// Threads of a libm_exp or finish_rows block.
constexpr int kElementwiseThreads = 256;
// Blocks of a grid-stride launch at most.
constexpr int64_t kMaxElementwiseBlocks = int64_t{1} << 16;

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(
      std::min((n + kElementwiseThreads - 1) / kElementwiseThreads, kMaxElementwiseBlocks));
}

__global__ void finish_rows_kernel(WalkForest f, bool softmax, bool acc32, const double* raw, int64_t rows,
                                   const double* base, double* out) {
  const int64_t outs = f.n_outputs;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (softmax) {
      trees::softmax_sums(raw + r * outs, base, f.finish.divisor, outs, acc32, out + r * outs);
    } else {
      for (int64_t o = 0; o < outs; ++o) trees::store_output(f, acc32, base, out, r, o, raw[r * outs + o]);
    }
  }
}

template <typename T>
__global__ void libm_exp_kernel(const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (sizeof(T) == 4) {
      y[i] = libm::libm_expf(x[i]);
    } else {
      y[i] = libm::libm_exp(x[i]);
    }
  }
}

}  // namespace

cudaError_t finish_rows(const WalkForest& f, bool softmax, bool acc32, const double* raw, int64_t rows,
                        const double* base, double* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  finish_rows_kernel<<<elementwise_blocks(rows), kElementwiseThreads, 0, stream>>>(f, softmax, acc32, raw,
                                                                                   rows, base, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t libm_exp(const T* x, T* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  libm_exp_kernel<T><<<elementwise_blocks(n), kElementwiseThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

template cudaError_t libm_exp<float>(const float*, float*, int64_t, cudaStream_t);
template cudaError_t libm_exp<double>(const double*, double*, int64_t, cudaStream_t);

}  // namespace pyzero::cuda
