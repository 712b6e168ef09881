// CPU batched traversal of the forest IR: OpenMP over blocks of rows, trees in a fixed order.
#include "tree_cpu.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace pyzero::trees {
namespace {

// Note [Categorical splits] (forest.py): whether categorical node nd sends non-NaN v left.
template <typename T>
inline bool categorical_left(const ForestView& f, const Node& nd, T v) {
  if (!(v >= static_cast<T>(f.cat_lo) && v < static_cast<T>(f.cat_hi))) {
    return f.cat_invalid == kInvalidDefault ? (nd.meta & kDefaultLeft) != 0 : f.cat_invalid == kInvalidLeft;
  }
  int32_t set;
  std::memcpy(&set, &nd.threshold, sizeof(set));
  const int64_t c = static_cast<int64_t>(v);  // truncation toward zero; v is in the domain
  const bool in_set = (c >> 5) < f.cat_words && ((f.cat_bits[set * f.cat_words + (c >> 5)] >> (c & 31)) & 1u);
  return in_set != ((nd.meta & kCmpLt) != 0);
}

// Whether node nd sends v left: missing values (per the node's missing kind) follow the default
// direction, categorical nodes test their set, numeric nodes compare with the threshold of T's width.
template <typename T>
inline bool go_left(const ForestView& f, const Node& nd, int32_t n, T v) {
  const int kind = (nd.meta >> kMissingShift) & 3;
  bool nan = std::isnan(v);
  if (nan && kind == 1) {
    v = 0;
    nan = false;
  }
  const bool missing = kind == 2 ? (nan || std::fabs(v) <= static_cast<T>(kZeroThreshold)) : nan;
  if (missing) return (nd.meta & kDefaultLeft) != 0;
  if (nd.meta & kCategorical) return categorical_left(f, nd, v);
  const T t = sizeof(T) == 8 ? static_cast<T>(f.threshold64[n]) : static_cast<T>(nd.threshold);
  return (nd.meta & kCmpLt) ? v < t : v <= t;
}

// One step from node n: a leaf (which points to itself) stays where it is, so every row can take the
// same number of steps (the tree's depth).
template <typename T>
inline int32_t step(const ForestView& f, int32_t n, const T* row) {
  const Node nd = f.nodes[n];
  return go_left(f, nd, n, row[nd.meta & kFeatureMask]) ? nd.left : nd.right;
}

template <typename T>
inline int32_t leaf_of(const ForestView& f, int32_t n, const T* row) {
  for (;;) {
    const Node nd = f.nodes[n];
    if (nd.left == n && nd.right == n) return n;
    n = go_left(f, nd, n, row[nd.meta & kFeatureMask]) ? nd.left : nd.right;
  }
}

}  // namespace

template <typename T>
void predict_raw(const ForestView& f, const T* x, int64_t rows, int64_t n_features, const double* base,
                 bool float32_accum, double* raw, int num_threads) {
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t outs = f.n_outputs;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRowBlock;
    const int64_t r1 = r0 + kRowBlock < rows ? r0 + kRowBlock : rows;
    std::vector<double> acc(static_cast<size_t>((r1 - r0) * outs));
    std::vector<float> acc32(float32_accum ? acc.size() : 0);
    for (size_t i = 0; i < acc.size(); ++i) {
      acc[i] = base[i % static_cast<size_t>(outs)];
      if (float32_accum) acc32[i] = static_cast<float>(acc[i]);
    }
    int32_t leaves[kRowBlock];
    for (int64_t t = 0; t < f.n_trees; ++t) {
      // Shallow trees: all rows of the block walk in lockstep, depth steps each, so independent loads
      // overlap. Deep trees (often unbalanced): each row stops at its leaf.
      const int32_t root = f.roots[t];
      const int32_t depth = f.depths[t];
      const int64_t nr = r1 - r0;
      if (depth <= kLockstepMaxDepth) {
        for (int64_t j = 0; j < nr; ++j) leaves[j] = root;
        for (int32_t d = 0; d < depth; ++d) {
          for (int64_t j = 0; j < nr; ++j) leaves[j] = step(f, leaves[j], x + (r0 + j) * n_features);
        }
      } else {
        for (int64_t j = 0; j < nr; ++j) leaves[j] = leaf_of(f, root, x + (r0 + j) * n_features);
      }
      for (int64_t r = r0; r < r1; ++r) {
        const double* v = f.values + static_cast<int64_t>(leaves[r - r0]) * outs;
        const size_t at = static_cast<size_t>((r - r0) * outs);
        if (float32_accum) {
          for (int64_t o = 0; o < outs; ++o) acc32[at + o] += static_cast<float>(v[o]);
        } else {
          for (int64_t o = 0; o < outs; ++o) acc[at + o] += v[o];
        }
      }
    }
    for (int64_t i = 0; i < (r1 - r0) * outs; ++i) {
      raw[r0 * outs + i] =
          float32_accum ? static_cast<double>(acc32[static_cast<size_t>(i)]) : acc[static_cast<size_t>(i)];
    }
  }
}

template <typename T>
void predict_leaves(const ForestView& f, const T* x, int64_t rows, int64_t n_features, int32_t* leaves,
                    int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < f.n_trees; ++t) {
      leaves[r * f.n_trees + t] = leaf_of(f, f.roots[t], x + r * n_features);
    }
  }
}

template void predict_raw<float>(const ForestView&, const float*, int64_t, int64_t, const double*, bool,
                                 double*, int);
template void predict_raw<double>(const ForestView&, const double*, int64_t, int64_t, const double*, bool,
                                  double*, int);
template void predict_leaves<float>(const ForestView&, const float*, int64_t, int64_t, int32_t*, int);
template void predict_leaves<double>(const ForestView&, const double*, int64_t, int64_t, int32_t*, int);

}  // namespace pyzero::trees
