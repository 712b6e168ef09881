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
// same number of steps (the tree's depth). Categorical nodes take go_left; numeric ones go_left's rules
// written out again as selects (Note [Deep trees on the CPU]): calling go_left here, or a helper both
// share, compiled to slower code (8-40% on deep LightGBM forests, measured).
template <typename T>
inline int32_t step(const ForestView& f, int32_t n, const T* row) {
  const Node nd = f.nodes[n];
  const T v = row[nd.meta & kFeatureMask];
  if (nd.meta & kCategorical) return go_left(f, nd, n, v) ? nd.left : nd.right;
  const int kind = (nd.meta >> kMissingShift) & 3;
  const bool nan = std::isnan(v);
  const T read = nan && kind == 1 ? T(0) : v;
  const bool missing = kind == 2 ? nan || std::fabs(v) <= static_cast<T>(kZeroThreshold) : nan && kind != 1;
  const T t = sizeof(T) == 8 ? static_cast<T>(f.threshold64[n]) : static_cast<T>(nd.threshold);
  const bool below = (nd.meta & kCmpLt) ? read < t : read <= t;
  const bool left = missing ? (nd.meta & kDefaultLeft) != 0 : below;
  return left ? nd.left : nd.right;
}

// Note [Deep trees on the CPU]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Leaf-wise LightGBM trees are deep and unbalanced (31-255 leaves, depth 18-37): too deep for the
// perfect kernel, and a fixed number of lockstep steps would walk most rows far past their leaves.
// Walked row by row, each step waits for the previous node's load and its direction is a branch the
// processor mispredicts about half the time. Here kWalkGroup rows walk together, a step each per round
// (a leaf points to itself, so finished rows just stay): the group's chains of loads overlap, and
// `step` picks the child with selects. Once a round moves at most kWalkGroupTail rows, they finish one
// by one, so the rare deep rows do not cost the whole group a round per level. On this 2-core CPU, 100
// trees, predict_proba against LightGBM's own: breast_cancer x 20, 31 leaves 0.79x -> 1.34x, 63 leaves
// 0.65x -> 1.16x, 255 leaves 0.59x -> 1.07x; 28 features, 255 leaves 1.04x -> 1.89x (groups of 4 and
// 16, tails of 1 and 4 and fully bitwise selects were slower). Sums still go tree by tree in order:
// the outputs are unchanged.

// Leaves of rows r0 .. r0 + nr - 1 in the tree at `root` (Note [Deep trees on the CPU]).
template <typename T>
inline void leaves_in_groups(const ForestView& f, int32_t root, const T* x, int64_t n_features, int64_t r0,
                             int64_t nr, int32_t* leaves) {
  for (int64_t g0 = 0; g0 < nr; g0 += kWalkGroup) {
    const int64_t gn = nr - g0 < kWalkGroup ? nr - g0 : kWalkGroup;
    int32_t n[kWalkGroup];
    const T* row[kWalkGroup];
    for (int j = 0; j < kWalkGroup; ++j) {
      n[j] = root;
      row[j] = x + (r0 + g0 + (j < gn ? j : gn - 1)) * n_features;  // a short group repeats its last row
    }
    for (;;) {
      int moved = 0;
      for (int j = 0; j < kWalkGroup; ++j) {
        const int32_t next = step(f, n[j], row[j]);
        moved += next != n[j];
        n[j] = next;
      }
      if (moved > kWalkGroupTail) continue;
      for (int j = 0; moved > 0 && j < kWalkGroup; ++j) {  // the last few rows one by one
        for (int32_t next = step(f, n[j], row[j]); next != n[j]; next = step(f, n[j], row[j])) n[j] = next;
      }
      break;
    }
    for (int64_t j = 0; j < gn; ++j) leaves[g0 + j] = n[j];
  }
}

// Leaves of rows r0 .. r0 + nr - 1 (nr <= kRowBlock) in tree t: shallow trees in lockstep, depth
// steps each, so independent loads overlap; deeper ones (often unbalanced) in groups of rows that stop
// when all of them stand on their leaves (Note [Deep trees on the CPU]).
template <typename T>
inline void block_leaves(const ForestView& f, int64_t t, const T* x, int64_t n_features, int64_t r0,
                         int64_t nr, int32_t* leaves) {
  const int32_t root = f.roots[t];
  const int32_t depth = f.depths[t];
  if (depth > kLockstepMaxDepth) {
    leaves_in_groups(f, root, x, n_features, r0, nr, leaves);
    return;
  }
  for (int64_t j = 0; j < nr; ++j) leaves[j] = root;
  for (int32_t d = 0; d < depth; ++d) {
    for (int64_t j = 0; j < nr; ++j) leaves[j] = step(f, leaves[j], x + (r0 + j) * n_features);
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
      block_leaves(f, t, x, n_features, r0, r1 - r0, leaves);
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
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRowBlock;
    const int64_t nr = r0 + kRowBlock < rows ? kRowBlock : rows - r0;
    int32_t block[kRowBlock];
    for (int64_t t = 0; t < f.n_trees; ++t) {
      block_leaves(f, t, x, n_features, r0, nr, block);
      for (int64_t j = 0; j < nr; ++j) leaves[(r0 + j) * f.n_trees + t] = block[j];
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
