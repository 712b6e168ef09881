// Fast CPU prediction for forests padded to perfect binary trees. Torch-free.
//
// Note [Perfect trees]
// Every tree of an eligible forest (pyzero/trees/fast_cpu.py decides) is padded to a complete binary
// tree of the forest's maximum depth D, stored in heap order: internal node i (0 <= i < 2^D - 1) has
// children 2i+1 (left) and 2i+2 (right); after D steps a row sits at heap node 2^D - 1 + j, leaf slot j.
// An IR leaf above the bottom becomes a dummy split (feature 0, threshold 0) whose subtrees all carry
// that leaf, so the dummy's decision does not matter. Each internal node holds
//   meta: the feature index (bits 0..30) and the default-left bit (bit 31),
//   threshold: a float32 t,
// and EVERY node decides the same way: go left iff (isnan(x) ? default_left : x <= t). The IR maps
// onto this exactly (for float32 x):
//   CMP_LE, threshold32 t  -> t;
//   CMP_LT, threshold32 t  -> nextafter(t, -inf) (x < t iff x <= the next float32 below t); t = -inf
//                             becomes NaN, which no x is <= (NaN still takes default_left);
//   MISSING_NAN            -> as is;
//   MISSING_NONE           -> the feature's column is read with NaN replaced by 0.0;
//   MISSING_ZERO           -> the feature's column is read with NaN and |x| <= 1e-35f replaced by NaN.
// The last two are per-feature column transforms (column_kind), so a feature must use one missing kind
// in all its nodes. A column_kind may also carry kColumnLightgbmReading: the column is first read as
// LightGBM reads inputs (|x| <= 1e-35f -> 0.0, +-inf -> +-FLT_MAX, convert_lightgbm.py), so callers
// need not prepare it. Leaf slot j of tree t holds values[t, j, :] (float64, and a float32 copy for
// float32 accumulation) and leaf_nodes[t, j], the IR global node id of the leaf.
//
// Sums: raw[r, o] = base[o] + values[0, leaf, o] + values[1, leaf, o] + ..., one tree at a time in tree
// order, in double, or in float32 (starting from float(base[o]), adding float32 values) when
// float32_accum, which is XGBoost's own order. The order never depends on rows, blocks, ISA or threads.
#pragma once

#include <cstdint>
#include <vector>

namespace pyzero::trees {

struct PerfectView {
  const int32_t* meta;        // [n_trees, node_stride]
  const float* threshold;     // [n_trees, node_stride]
  const double* values;       // [n_trees, 2^depth, n_outputs]
  const float* values32;      // [n_trees, 2^depth, n_outputs]
  const int32_t* leaf_nodes;  // [n_trees, 2^depth]
  int64_t n_trees;
  int64_t n_outputs;
  int64_t node_stride;  // >= max(2^depth, kMinNodeStride)
  int32_t depth;
};

// Column transforms (Note [Perfect trees]).
constexpr int8_t kColumnAsIs = 0;
constexpr int8_t kColumnNanToZero = 1;        // MISSING_NONE
constexpr int8_t kColumnZeroToNan = 2;        // MISSING_ZERO
constexpr int8_t kColumnMissingMask = 3;      // the three kinds above
constexpr int8_t kColumnLightgbmReading = 4;  // flag: tiny -> 0, +-inf -> +-FLT_MAX first
constexpr float kFastZeroThreshold = 1e-35f;  // LightGBM's kZeroThreshold
constexpr uint32_t kMetaFeatureMask = 0x7fffffffu;

// Node arrays hold at least this many slots per tree so the AVX-512 kernel can load the first six
// levels (63 nodes) of a tree with plain 16-wide loads and pick nodes with permutes instead of gathers.
constexpr int64_t kMinNodeStride = 64;
// Rows per unit of parallel work: the transposed row block (256 x 28 features = 28 KiB) stays in L1
// while every tree walks it. Chosen by that size argument, not yet tuned by measurement.
constexpr int64_t kFastRowBlock = 256;
// Batches of at most kTreeParallelMaxRows rows over forests of at least kTreeParallelMinTrees trees split
// the trees across threads (same sum order). Batch-1 predict_proba on the 2-core EPYC, 2 threads, XGBoost
// on 28 features: 500 trees depth 8 / 12 went from 23.1 / 40.1 us to 14.8 / 22.2 us; at 100 trees it
// cost more than it saved (depth 8: 12.7 -> 13.4 us, depth 12: 13.9 -> 14.6 us with a threshold of 64).
constexpr int64_t kTreeParallelMaxRows = 4;
constexpr int64_t kTreeParallelMinTrees = 256;

// x: [rows, n_features] float32 row-major; column_kind: [n_features] or nullptr when all kAsIs.
// Feature indices are clamped to n_features - 1, so no meta content can read outside a row.
void perfect_raw(const PerfectView& f, const float* x, int64_t rows, int64_t n_features,
                 const int8_t* column_kind, const double* base, bool float32_accum, double* raw,
                 int num_threads);

// leaves[r, t] = leaf_nodes[t, slot reached by row r in tree t].
void perfect_leaves(const PerfectView& f, const float* x, int64_t rows, int64_t n_features,
                    const int8_t* column_kind, int32_t* leaves, int num_threads);

// Per-ISA kernels (tree_fast_{scalar,avx2,avx512}.cpp). The driver hands them a block of rows TRANSPOSED:
// feature c of row r is xt[(c << shift) + r] (so the rows at one node read one contiguous vector).
//   raw_rows: rows (a multiple of the kernel's width) rows; acc[o * acc_ld + r] += the leaf values of
//   every tree, tree by tree in order (float acc when float32_accum, else double).
//   leaves_rows: out[r * n_trees + t] = leaf node id.
//   row_trees: ONE row (feature c at row[c << shift]), vectorized across trees: the per-tree leaf values
//   (per_tree[t * n_outputs + o], float or double per float32_accum), or, when leaves != nullptr, the
//   leaf node ids leaves[t].
struct PerfectKernels {
  int64_t width;
  void (*raw_rows)(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                   bool float32_accum, void* acc, int64_t acc_ld);
  void (*leaves_rows)(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                      int32_t* out);
  void (*row_trees)(const PerfectView& f, const float* row, int shift, int64_t n_features, bool float32_accum,
                    void* per_tree, int32_t* leaves);
};

// Calls run(values, acc) with the float32 leaf values and a float accumulator when float32_accum, else
// with the float64 ones and a double accumulator: the raw_rows entry of every ISA.
template <typename Run>
inline void with_accumulator(const PerfectView& f, bool float32_accum, void* acc, Run run) {
  if (float32_accum) {
    run(f.values32, static_cast<float*>(acc));
  } else {
    run(f.values, static_cast<double*>(acc));
  }
}

// Rows [r0, r0 + n) of x [rows, n_features], transposed into buf (feature c of row r at buf[(c << shift)
// + r]) with the column transforms of Note [Perfect trees] applied (column_kind nullptr: none).
const float* load_rows(const float* x, int64_t r0, int64_t n, int64_t n_features, int shift,
                       const int8_t* column_kind, std::vector<float>& buf);

PerfectKernels perfect_kernels_scalar();
PerfectKernels perfect_kernels_avx2();
PerfectKernels perfect_kernels_avx512();

}  // namespace pyzero::trees
