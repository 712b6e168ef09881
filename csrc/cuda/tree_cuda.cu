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

// Threads of a libm_exp block.
constexpr int kLibmExpThreads = 256;

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

template <typename T>
cudaError_t libm_exp(const T* x, T* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((n + kLibmExpThreads - 1) / kLibmExpThreads, int64_t{1} << 16);
  libm_exp_kernel<T><<<static_cast<unsigned>(blocks), kLibmExpThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

template cudaError_t libm_exp<float>(const float*, float*, int64_t, cudaStream_t);
template cudaError_t libm_exp<double>(const double*, double*, int64_t, cudaStream_t);

}  // namespace pyzero::cuda
