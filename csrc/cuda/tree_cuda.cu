// CUDA batched traversal of the GPU forest layouts: Note [GPU tree kernel] (tree_cuda.h). The kernels
// themselves are in tree_kernel.cuh, instantiated by tree_cuda_{perfect,compact,wide}.cu.
#include "tree_kernel.cuh"

namespace pyzero::cuda {

// Compiled in tree_cuda_{perfect,compact,wide}.cu.
#define PYZERO_EXTERN_WALK(T, WALKER)                                                                     \
  extern template cudaError_t launch_walk<T, WALKER>(const WalkForest&, const T*, int64_t, const double*, \
                                                     bool, double*, int32_t*, WalkLaunch, bool, int64_t,  \
                                                     cudaStream_t);
PYZERO_EXTERN_WALK(float, trees::PerfectWalker)
PYZERO_EXTERN_WALK(float, trees::CompactWalker)
PYZERO_EXTERN_WALK(double, trees::CompactWalker)
PYZERO_EXTERN_WALK(float, trees::WideWalker)
PYZERO_EXTERN_WALK(double, trees::WideWalker)
#undef PYZERO_EXTERN_WALK

int64_t tree_walk_shared_bytes(const WalkForest& f, int64_t x_item_bytes, bool leaves, WalkLaunch cfg,
                               bool* staged) {
  const int r = cfg.threads / cfg.lanes;
  if (cfg.stage) {
    const detail::Carve c = detail::carve(f, x_item_bytes, leaves, r, cfg.lanes, cfg.ilp, true);
    if (c.total <= kTreeMaxSharedBytes) {
      *staged = true;
      return c.total;
    }
  }
  *staged = false;
  const detail::Carve c = detail::carve(f, x_item_bytes, leaves, r, cfg.lanes, cfg.ilp, false);
  return c.total <= kTreeMaxSharedBytes ? c.total : -1;
}

template <typename T>
cudaError_t tree_walk(const WalkForest& f, const T* x, int64_t rows, const double* base, bool float32_accum,
                      double* raw, int32_t* leaves, WalkLaunch cfg, cudaStream_t stream) {
  if (rows == 0 || (leaves != nullptr && f.n_trees == 0)) return cudaSuccess;
  if (cfg.threads < 32 || cfg.threads > kTreeMaxThreads || cfg.threads % 32 != 0 || cfg.lanes < 1 ||
      cfg.threads % cfg.lanes != 0 || (cfg.ilp != 1 && cfg.ilp != 2 && cfg.ilp != 4)) {
    return cudaErrorInvalidValue;
  }
  bool stage = false;
  const int64_t smem = tree_walk_shared_bytes(f, sizeof(T), leaves != nullptr, cfg, &stage);
  if (smem < 0) return cudaErrorInvalidValue;
  switch (f.format) {
    case trees::kPerfect:
      if constexpr (std::is_same_v<T, float>) {
        return launch_walk<T, trees::PerfectWalker>(f, x, rows, base, float32_accum, raw, leaves, cfg, stage,
                                                    smem, stream);
      }
      return cudaErrorInvalidValue;  // the perfect layout compares float32 inputs only
    case trees::kCompact:
      return launch_walk<T, trees::CompactWalker>(f, x, rows, base, float32_accum, raw, leaves, cfg, stage,
                                                  smem, stream);
    case trees::kWide:
      return launch_walk<T, trees::WideWalker>(f, x, rows, base, float32_accum, raw, leaves, cfg, stage, smem,
                                               stream);
    default: return cudaErrorInvalidValue;
  }
}

template cudaError_t tree_walk<float>(const WalkForest&, const float*, int64_t, const double*, bool, double*,
                                      int32_t*, WalkLaunch, cudaStream_t);
template cudaError_t tree_walk<double>(const WalkForest&, const double*, int64_t, const double*, bool,
                                       double*, int32_t*, WalkLaunch, cudaStream_t);

}  // namespace pyzero::cuda
