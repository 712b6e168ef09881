// CUDA batched traversal of the forest IR (see tree_cuda.h): the CPU node kernel's rule per node.
#include "tree_cuda.h"

namespace pyzero::cuda {
namespace {

using trees::ForestView;
using trees::Node;

// Note [Categorical splits] (pyzero/trees/forest.py): whether categorical node nd sends non-NaN v left.
template <typename T>
__device__ __forceinline__ bool categorical_left(const ForestView& f, const Node& nd, T v) {
  if (!(v >= static_cast<T>(f.cat_lo) && v < static_cast<T>(f.cat_hi))) {
    return f.cat_invalid == trees::kInvalidDefault ? (nd.meta & trees::kDefaultLeft) != 0
                                                   : f.cat_invalid == trees::kInvalidLeft;
  }
  const int32_t set = __float_as_int(nd.threshold);
  const int64_t c = static_cast<int64_t>(v);  // truncation toward zero; v is in the domain
  const bool in_set = (c >> 5) < f.cat_words && ((f.cat_bits[set * f.cat_words + (c >> 5)] >> (c & 31)) & 1u);
  return in_set != ((nd.meta & trees::kCmpLt) != 0);
}

// Whether node n sends v left: missing values (per the node's missing kind) follow the default
// direction, categorical nodes test their set, numeric nodes compare with the threshold of T's width.
template <typename T>
__device__ __forceinline__ bool go_left(const ForestView& f, const Node& nd, int32_t n, T v) {
  const int kind = (nd.meta >> trees::kMissingShift) & 3;
  bool nan = isnan(v);
  if (nan && kind == 1) {
    v = 0;
    nan = false;
  }
  const bool missing = kind == 2 ? (nan || fabs(v) <= static_cast<T>(trees::kZeroThreshold)) : nan;
  if (missing) return (nd.meta & trees::kDefaultLeft) != 0;
  if (nd.meta & trees::kCategorical) return categorical_left(f, nd, v);
  const T t = sizeof(T) == 8 ? static_cast<T>(f.threshold64[n]) : static_cast<T>(nd.threshold);
  return (nd.meta & trees::kCmpLt) ? v < t : v <= t;
}

template <typename T>
__device__ __forceinline__ int32_t leaf_of(const ForestView& f, int32_t n, const T* row) {
  for (;;) {
    const Node nd = f.nodes[n];
    if (nd.left == n && nd.right == n) return n;
    n = go_left(f, nd, n, row[nd.meta & trees::kFeatureMask]) ? nd.left : nd.right;
  }
}

template <typename T>
__global__ void raw_kernel(ForestView f, const T* x, int64_t rows, int64_t n_features, const double* base,
                           bool float32_accum, double* raw) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const T* row = x + r * n_features;
  const int64_t outs = f.n_outputs;
  double acc[kTreeMaxOutputs];
  float acc32[kTreeMaxOutputs];
  for (int64_t o = 0; o < outs; ++o) {
    acc[o] = base[o];
    acc32[o] = static_cast<float>(base[o]);
  }
  for (int64_t t = 0; t < f.n_trees; ++t) {
    const double* v = f.values + static_cast<int64_t>(leaf_of(f, f.roots[t], row)) * outs;
    if (float32_accum) {
      for (int64_t o = 0; o < outs; ++o) acc32[o] += static_cast<float>(v[o]);
    } else {
      for (int64_t o = 0; o < outs; ++o) acc[o] += v[o];
    }
  }
  for (int64_t o = 0; o < outs; ++o)
    raw[r * outs + o] = float32_accum ? static_cast<double>(acc32[o]) : acc[o];
}

template <typename T>
__global__ void leaves_kernel(ForestView f, const T* x, int64_t rows, int64_t n_features, int32_t* leaves) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * f.n_trees) return;
  const int64_t r = i / f.n_trees;
  leaves[i] = leaf_of(f, f.roots[i % f.n_trees], x + r * n_features);
}

unsigned int blocks_for(int64_t work) {
  return static_cast<unsigned int>((work + kTreeThreads - 1) / kTreeThreads);
}

}  // namespace

template <typename T>
cudaError_t tree_predict_raw(const ForestView& f, const T* x, int64_t rows, int64_t n_features,
                             const double* base, bool float32_accum, double* raw, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (f.n_outputs > kTreeMaxOutputs) return cudaErrorInvalidValue;
  raw_kernel<T>
      <<<blocks_for(rows), kTreeThreads, 0, stream>>>(f, x, rows, n_features, base, float32_accum, raw);
  return cudaGetLastError();
}

template <typename T>
cudaError_t tree_predict_leaves(const ForestView& f, const T* x, int64_t rows, int64_t n_features,
                                int32_t* leaves, cudaStream_t stream) {
  if (rows == 0 || f.n_trees == 0) return cudaSuccess;
  leaves_kernel<T><<<blocks_for(rows * f.n_trees), kTreeThreads, 0, stream>>>(f, x, rows, n_features, leaves);
  return cudaGetLastError();
}

template cudaError_t tree_predict_raw<float>(const ForestView&, const float*, int64_t, int64_t, const double*,
                                             bool, double*, cudaStream_t);
template cudaError_t tree_predict_raw<double>(const ForestView&, const double*, int64_t, int64_t,
                                              const double*, bool, double*, cudaStream_t);
template cudaError_t tree_predict_leaves<float>(const ForestView&, const float*, int64_t, int64_t, int32_t*,
                                                cudaStream_t);
template cudaError_t tree_predict_leaves<double>(const ForestView&, const double*, int64_t, int64_t, int32_t*,
                                                 cudaStream_t);

}  // namespace pyzero::cuda
