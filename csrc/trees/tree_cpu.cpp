// CPU batched traversal of the forest IR: OpenMP over blocks of rows, trees in a fixed order.
#include "tree_cpu.h"

#include <cmath>
#include <vector>

namespace pyzero::trees {
namespace {

// One step from node n for the value row[feature]: branch-free, and a leaf (which points to itself)
// stays where it is, so every row can take the same number of steps (the tree's depth).
inline int32_t step(const Node* nodes, int32_t n, const float* row) {
  const Node nd = nodes[n];
  float v = row[nd.meta & kFeatureMask];
  const int kind = (nd.meta >> kMissingShift) & 3;
  const bool nan = std::isnan(v);
  v = (nan && kind == 1) ? 0.0f : v;
  const bool missing = kind == 2 ? (nan || std::fabs(v) <= kZeroThreshold) : (nan && kind == 0);
  const bool cmp = (nd.meta & kCmpLt) ? (v < nd.threshold) : (v <= nd.threshold);
  const bool go_left = missing ? (nd.meta & kDefaultLeft) != 0 : cmp;
  return go_left ? nd.left : nd.right;
}

inline int32_t leaf_of(const Node* nodes, int32_t n, const float* row) {
  for (;;) {
    const Node nd = nodes[n];
    if (nd.left == n && nd.right == n) return n;
    float v = row[nd.meta & kFeatureMask];
    const int kind = (nd.meta >> kMissingShift) & 3;
    bool nan = std::isnan(v);
    if (nan && kind == 1) {
      v = 0.0f;
      nan = false;
    }
    const bool missing = kind == 2 ? (nan || std::fabs(v) <= kZeroThreshold) : nan;
    const bool lt = v < nd.threshold;
    const bool le = v <= nd.threshold;
    const bool go_left = missing ? (nd.meta & kDefaultLeft) != 0 : ((nd.meta & kCmpLt) ? lt : le);
    n = go_left ? nd.left : nd.right;
  }
}

}  // namespace

void predict_raw(const ForestView& f, const float* x, int64_t rows, int64_t n_features, const double* base,
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
          for (int64_t j = 0; j < nr; ++j) leaves[j] = step(f.nodes, leaves[j], x + (r0 + j) * n_features);
        }
      } else {
        for (int64_t j = 0; j < nr; ++j) leaves[j] = leaf_of(f.nodes, root, x + (r0 + j) * n_features);
      }
      for (int64_t r = r0; r < r1; ++r) {
        const int32_t leaf = leaves[r - r0];
        const double* v = f.values + static_cast<int64_t>(leaf) * outs;
        const size_t base = static_cast<size_t>((r - r0) * outs);
        if (float32_accum) {
          for (int64_t o = 0; o < outs; ++o) acc32[base + o] += static_cast<float>(v[o]);
        } else {
          for (int64_t o = 0; o < outs; ++o) acc[base + o] += v[o];
        }
      }
    }
    for (int64_t i = 0; i < (r1 - r0) * outs; ++i) {
      raw[r0 * outs + i] =
          float32_accum ? static_cast<double>(acc32[static_cast<size_t>(i)]) : acc[static_cast<size_t>(i)];
    }
  }
}

void predict_leaves(const ForestView& f, const float* x, int64_t rows, int64_t n_features, int32_t* leaves,
                    int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < f.n_trees; ++t) {
      leaves[r * f.n_trees + t] = leaf_of(f.nodes, f.roots[t], x + r * n_features);
    }
  }
}

}  // namespace pyzero::trees
