// CPU batched traversal of the forest IR (pyzero/trees/forest.py). Torch-free.
#pragma once

#include <cstdint>

namespace pyzero::trees {

// One node in 16 bytes. `meta` packs the feature index (low 24 bits) and the flags below; a leaf has
// left == right == its own index, so a traversal can stop when a node points to itself. A categorical
// node keeps its category set's row of cat_bits in `threshold`'s bits (Note [Categorical splits]).
struct Node {
  int32_t meta;
  float threshold;  // already rounded per Note [Exact thresholds] (forest.py)
  int32_t left;
  int32_t right;
};

constexpr int32_t kFeatureMask = (1 << 24) - 1;
constexpr int32_t kDefaultLeft = 1 << 24;  // missing values go left
constexpr int32_t kCmpLt = 1 << 25;  // numeric: x < t goes left (else x <= t); categorical: in set -> right
constexpr int kMissingShift = 26;    // 2 bits: 0 NaN missing, 1 NaN read as 0, 2 NaN and ~0 missing
constexpr int32_t kCategorical = 1 << 28;  // a categorical split
constexpr float kZeroThreshold = 1e-35f;   // LightGBM's kZeroThreshold

// Where a categorical value outside [cat_lo, cat_hi) goes (forest.CAT_INVALID_*).
enum CatInvalid : int32_t { kInvalidLeft = 0, kInvalidRight = 1, kInvalidDefault = 2 };

struct ForestView {
  const Node* nodes;
  const double* values;       // [nodes, n_outputs]
  const int32_t* roots;       // [n_trees]
  const int32_t* depths;      // [n_trees], longest root-leaf path of each tree
  const double* threshold64;  // [nodes], native thresholds, compared with float64 inputs
  const uint32_t* cat_bits;   // [sets, cat_words] category bitsets
  int64_t cat_words;
  double cat_lo, cat_hi;  // categorical domain, Note [Categorical splits]
  int32_t cat_invalid;
  int64_t n_trees;
  int64_t n_outputs;
};

// raw[r, o] = base[o] + sum over trees t (in order) of values[leaf(t, r), o], accumulated per row in
// double, or in float32 when float32_accum (XGBoost's order). x: [rows, n_features] row-major, float32
// (compared with the float32 thresholds) or float64 (with threshold64). The order never depends on rows
// or threads.
template <typename T>
void predict_raw(const ForestView& f, const T* x, int64_t rows, int64_t n_features, const double* base,
                 bool float32_accum, double* raw, int num_threads);

// leaves[r, t] = global id of the leaf row r reaches in tree t.
template <typename T>
void predict_leaves(const ForestView& f, const T* x, int64_t rows, int64_t n_features, int32_t* leaves,
                    int num_threads);

// Rows per unit of parallel work; trees are walked in order inside a block.
constexpr int64_t kRowBlock = 64;
// Trees up to this depth are walked in lockstep (fixed depth steps per row); deeper ones in groups.
// Measured on the 2-core CPU, 100 trees, breast_cancer x 20: depth 6 XGBoost 2.2 -> 3.5 M rows/s in
// lockstep, while leaf-wise LightGBM trees (depth ~12) were slower in lockstep than row by row.
constexpr int32_t kLockstepMaxDepth = 8;
// Deeper trees: rows walk in groups of this many until each stands on its leaf (Note [Deep trees on
// the CPU] in tree_cpu.cpp).
constexpr int kWalkGroup = 8;
// A group whose last round moved at most this many rows finishes them one by one.
constexpr int kWalkGroupTail = 2;

}  // namespace pyzero::trees
