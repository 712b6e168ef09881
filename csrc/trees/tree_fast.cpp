// Driver of the perfect-tree CPU kernel (Note [Perfect trees] in tree_fast.h): ISA choice, row blocks on
// OpenMP threads, column transforms, and the scalar kernels.
#include "tree_fast.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../cpu/adam_cpu.h"

namespace pyzero::trees {
namespace {

// Leaf slot reached in the tree whose nodes start at meta / thr by the row whose feature c is
// row[c << shift].
inline int64_t leaf_slot(const int32_t* meta, const float* thr, int32_t depth, const float* row, int shift,
                         uint32_t max_feature) {
  int64_t i = 0;
  for (int32_t d = 0; d < depth; ++d) {
    const int32_t m = meta[i];
    const float v =
        row[static_cast<int64_t>(std::min(static_cast<uint32_t>(m) & kMetaFeatureMask, max_feature))
            << shift];
    const bool left = std::isnan(v) ? m < 0 : v <= thr[i];
    i = 2 * i + (left ? 1 : 2);
  }
  return i - ((int64_t{1} << depth) - 1);
}

template <typename Acc>
void raw_rows_scalar_t(const PerfectView& f, const Acc* values, const float* xt, int shift,
                       int64_t n_features, int64_t rows, Acc* acc, int64_t acc_ld) {
  const int64_t leaves = int64_t{1} << f.depth;
  const int64_t outs = f.n_outputs;
  const uint32_t max_feature = static_cast<uint32_t>(n_features - 1);
  for (int64_t t = 0; t < f.n_trees; ++t) {
    const int32_t* meta = f.meta + t * f.node_stride;
    const float* thr = f.threshold + t * f.node_stride;
    const Acc* vt = values + t * leaves * outs;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t j = leaf_slot(meta, thr, f.depth, xt + r, shift, max_feature);
      for (int64_t o = 0; o < outs; ++o) acc[o * acc_ld + r] += vt[j * outs + o];
    }
  }
}

void raw_rows_scalar(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                     bool float32_accum, void* acc, int64_t acc_ld) {
  with_accumulator(f, float32_accum, acc, [&](const auto* values, auto* a) {
    raw_rows_scalar_t(f, values, xt, shift, n_features, rows, a, acc_ld);
  });
}

void leaves_rows_scalar(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                        int32_t* out) {
  const int64_t leaves = int64_t{1} << f.depth;
  const uint32_t max_feature = static_cast<uint32_t>(n_features - 1);
  for (int64_t t = 0; t < f.n_trees; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t j = leaf_slot(f.meta + t * f.node_stride, f.threshold + t * f.node_stride, f.depth,
                                  xt + r, shift, max_feature);
      out[r * f.n_trees + t] = f.leaf_nodes[t * leaves + j];
    }
  }
}

void row_trees_scalar(const PerfectView& f, const float* row, int shift, int64_t n_features,
                      bool float32_accum, void* per_tree, int32_t* leaf_out) {
  const int64_t leaves = int64_t{1} << f.depth;
  const int64_t outs = f.n_outputs;
  const uint32_t max_feature = static_cast<uint32_t>(n_features - 1);
  for (int64_t t = 0; t < f.n_trees; ++t) {
    const int64_t j = leaf_slot(f.meta + t * f.node_stride, f.threshold + t * f.node_stride, f.depth, row,
                                shift, max_feature);
    const int64_t slot = t * leaves + j;
    if (leaf_out != nullptr) {
      leaf_out[t] = f.leaf_nodes[slot];
    } else if (float32_accum) {
      for (int64_t o = 0; o < outs; ++o)
        static_cast<float*>(per_tree)[t * outs + o] = f.values32[slot * outs + o];
    } else {
      for (int64_t o = 0; o < outs; ++o)
        static_cast<double*>(per_tree)[t * outs + o] = f.values[slot * outs + o];
    }
  }
}

PerfectKernels kernels_for(cpu::Isa isa) {
  switch (isa) {
    case cpu::Isa::kAvx512: return perfect_kernels_avx512();
    case cpu::Isa::kAvx2: return perfect_kernels_avx2();
    default: return perfect_kernels_scalar();
  }
}

struct Plan {
  PerfectKernels k;
  int64_t block;  // rows per block
  int shift;      // log2 of the transposed block's row stride (>= block)
  int64_t n_blocks;
  int threads;
};

Plan plan(int64_t rows, int num_threads) {
  Plan p{kernels_for(cpu::active_isa()), kFastRowBlock, 0, 0, 1};
  // Fewer rows than a block per thread: smaller blocks (whole vectors) so every thread has work.
  const int64_t w = p.k.width;
  const int64_t threads = std::max<int64_t>(num_threads, 1);
  if (rows < p.block * threads) p.block = std::max<int64_t>((rows + threads * w - 1) / (threads * w) * w, w);
  while ((int64_t{1} << p.shift) < p.block) ++p.shift;
  p.n_blocks = (rows + p.block - 1) / p.block;
  p.threads = static_cast<int>(std::min<int64_t>(threads, p.n_blocks));
  return p;
}

template <typename Acc>
void raw_block(const PerfectView& f, const Plan& p, const float* xb, int64_t nr, int64_t n_features,
               const double* base, bool float32_accum, std::vector<Acc>& acc, std::vector<Acc>& per_tree,
               double* raw) {
  const int64_t outs = f.n_outputs;
  const int64_t ld = int64_t{1} << p.shift;
  acc.resize(static_cast<size_t>(outs * ld));
  for (int64_t o = 0; o < outs; ++o) std::fill_n(acc.data() + o * ld, nr, static_cast<Acc>(base[o]));
  const int64_t full = nr / p.k.width * p.k.width;
  if (full > 0) p.k.raw_rows(f, xb, p.shift, n_features, full, float32_accum, acc.data(), ld);
  per_tree.resize(static_cast<size_t>(f.n_trees * outs));
  for (int64_t r = full; r < nr; ++r) {  // the last rows of the block: vectors across trees
    p.k.row_trees(f, xb + r, p.shift, n_features, float32_accum, per_tree.data(), nullptr);
    for (int64_t t = 0; t < f.n_trees; ++t) {
      for (int64_t o = 0; o < outs; ++o) acc[o * ld + r] += per_tree[t * outs + o];
    }
  }
  for (int64_t r = 0; r < nr; ++r) {
    for (int64_t o = 0; o < outs; ++o) raw[r * outs + o] = static_cast<double>(acc[o * ld + r]);
  }
}

// Trees [t0, t1) of f as a forest of their own.
PerfectView trees_of(const PerfectView& f, int64_t t0, int64_t t1) {
  const int64_t leaves = int64_t{1} << f.depth;
  PerfectView s = f;
  s.meta += t0 * f.node_stride;
  s.threshold += t0 * f.node_stride;
  s.values += t0 * leaves * f.n_outputs;
  s.values32 += t0 * leaves * f.n_outputs;
  s.leaf_nodes += t0 * leaves;
  s.n_trees = t1 - t0;
  return s;
}

// A few rows of a large forest: the threads split the trees (each fills its trees' leaf values), then
// one thread sums base, tree 0, tree 1, ... in order, the order of every other path.
template <typename Acc>
void raw_tree_parallel(const PerfectKernels& k, const PerfectView& f, const float* x, int64_t rows,
                       int64_t n_features, const int8_t* column_kind, const double* base, bool float32_accum,
                       double* raw, int threads) {
  const int64_t outs = f.n_outputs;
  const int64_t chunk = (f.n_trees + threads - 1) / threads;
  std::vector<float> buf;
  std::vector<Acc> per_tree(static_cast<size_t>(f.n_trees * outs));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = load_rows(x, r, 1, n_features, 0, column_kind, buf);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t c = 0; c < threads; ++c) {
      const int64_t t0 = c * chunk;
      const int64_t t1 = std::min(f.n_trees, t0 + chunk);
      if (t0 < t1) {
        k.row_trees(trees_of(f, t0, t1), row, 0, n_features, float32_accum, per_tree.data() + t0 * outs,
                    nullptr);
      }
    }
    for (int64_t o = 0; o < outs; ++o) {
      Acc acc = static_cast<Acc>(base[o]);
      for (int64_t t = 0; t < f.n_trees; ++t) acc += per_tree[t * outs + o];
      raw[r * outs + o] = static_cast<double>(acc);
    }
  }
}

}  // namespace

const float* load_rows(const float* x, int64_t r0, int64_t n, int64_t n_features, int shift,
                       const int8_t* column_kind, std::vector<float>& buf) {
  const int64_t ld = int64_t{1} << shift;
  buf.resize(static_cast<size_t>(n_features * ld));
  const float* src = x + r0 * n_features;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < n_features; ++c) buf[(c << shift) + r] = src[r * n_features + c];
  }
  if (column_kind == nullptr) return buf.data();
  for (int64_t c = 0; c < n_features; ++c) {
    float* col = buf.data() + (c << shift);
    if (column_kind[c] & kColumnLightgbmReading) {
      constexpr float kMax = std::numeric_limits<float>::max();
      for (int64_t r = 0; r < n; ++r) {
        const float v = std::fabs(col[r]) <= kFastZeroThreshold ? 0.0f : col[r];
        col[r] = v > kMax ? kMax : (v < -kMax ? -kMax : v);  // NaN stays NaN
      }
    }
    const int8_t missing = column_kind[c] & kColumnMissingMask;
    if (missing == kColumnNanToZero) {
      for (int64_t r = 0; r < n; ++r) col[r] = std::isnan(col[r]) ? 0.0f : col[r];
    } else if (missing == kColumnZeroToNan) {
      for (int64_t r = 0; r < n; ++r)
        col[r] = std::isnan(col[r]) || std::fabs(col[r]) <= kFastZeroThreshold ? NAN : col[r];
    }
  }
  return buf.data();
}

PerfectKernels perfect_kernels_scalar() {
  return {1, raw_rows_scalar, leaves_rows_scalar, row_trees_scalar};
}

void perfect_raw(const PerfectView& f, const float* x, int64_t rows, int64_t n_features,
                 const int8_t* column_kind, const double* base, bool float32_accum, double* raw,
                 int num_threads) {
  if (rows <= 0) return;
  if (rows <= kTreeParallelMaxRows && f.n_trees >= kTreeParallelMinTrees && num_threads > 1) {
    const PerfectKernels k = kernels_for(cpu::active_isa());
    if (float32_accum) {
      raw_tree_parallel<float>(k, f, x, rows, n_features, column_kind, base, true, raw, num_threads);
    } else {
      raw_tree_parallel<double>(k, f, x, rows, n_features, column_kind, base, false, raw, num_threads);
    }
    return;
  }
  const Plan p = plan(rows, num_threads);
#pragma omp parallel num_threads(p.threads) if (p.threads > 1)
  {
    std::vector<float> buf, acc32, per32;
    std::vector<double> acc64, per64;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.n_blocks; ++b) {
      const int64_t r0 = b * p.block;
      const int64_t nr = std::min(p.block, rows - r0);
      const float* xb = load_rows(x, r0, nr, n_features, p.shift, column_kind, buf);
      if (float32_accum) {
        raw_block(f, p, xb, nr, n_features, base, true, acc32, per32, raw + r0 * f.n_outputs);
      } else {
        raw_block(f, p, xb, nr, n_features, base, false, acc64, per64, raw + r0 * f.n_outputs);
      }
    }
  }
}

void perfect_leaves(const PerfectView& f, const float* x, int64_t rows, int64_t n_features,
                    const int8_t* column_kind, int32_t* leaves, int num_threads) {
  if (rows <= 0) return;
  const Plan p = plan(rows, num_threads);
#pragma omp parallel num_threads(p.threads) if (p.threads > 1)
  {
    std::vector<float> buf;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.n_blocks; ++b) {
      const int64_t r0 = b * p.block;
      const int64_t nr = std::min(p.block, rows - r0);
      const float* xb = load_rows(x, r0, nr, n_features, p.shift, column_kind, buf);
      const int64_t full = nr / p.k.width * p.k.width;
      int32_t* out = leaves + r0 * f.n_trees;
      if (full > 0) p.k.leaves_rows(f, xb, p.shift, n_features, full, out);
      for (int64_t r = full; r < nr; ++r) {
        p.k.row_trees(f, xb + r, p.shift, n_features, false, nullptr, out + r * f.n_trees);
      }
    }
  }
}

}  // namespace pyzero::trees
