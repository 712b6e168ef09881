// The bitvector kernel of Note [Bitvector trees] (tree_qs.h): row blocks on OpenMP threads.
#include "tree_qs.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "tree_fast.h"

namespace pyzero::trees {
namespace {

// How many of feature c's nodes t[0 .. n) the number v fails, !(v <= t): a prefix, as the thresholds
// ascend after the NaN ones (x < -inf, which every number fails).
inline int64_t failed_prefix(const float* t, int64_t n, float v) {
  int64_t lo = 0;
  while (n > 0) {
    const int64_t half = n >> 1;
    const bool past = !(v <= t[lo + half]);
    lo = past ? lo + half + 1 : lo;
    n = past ? n - half - 1 : half;
  }
  return lo;
}

// words[t] <- the leaves of tree t that the row (feature c at row[c << shift]) leaves standing.
void leaf_words(const QsView& f, const float* row, int shift, uint64_t* words) {
  std::fill_n(words, f.n_trees, ~uint64_t{0});
  for (int64_t c = 0; c < f.n_features; ++c) {
    const float v = row[c << shift];
    if (std::isnan(v)) {
      for (int64_t i = f.nan_start[c]; i < f.nan_start[c + 1]; ++i) words[f.nan_tree[i]] &= f.nan_mask[i];
      continue;
    }
    const int64_t s = f.start[c];
    const int64_t n = failed_prefix(f.threshold + s, f.start[c + 1] - s, v);
    for (int64_t i = s; i < s + n; ++i) words[f.tree[i]] &= f.mask[i];
  }
}

// The lowest leaf still standing (a tree's word keeps at least its exit leaf; the top bit bounds the
// answer by 63 whatever the masks hold).
inline int64_t leaf_of(uint64_t word) {
  return static_cast<int64_t>(__builtin_ctzll(word | (uint64_t{1} << 63)));
}

template <typename Acc>
void raw_row(const QsView& f, const uint64_t* words, const double* base, const Acc* values, double* out) {
  const int64_t outs = f.n_outputs;
  for (int64_t o = 0; o < outs; ++o) {
    Acc acc = static_cast<Acc>(base[o]);
    for (int64_t t = 0; t < f.n_trees; ++t) acc += values[(t * kQsMaxLeaves + leaf_of(words[t])) * outs + o];
    out[o] = static_cast<double>(acc);
  }
}

template <typename PerRow>
void blocks(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, int num_threads,
            PerRow per_row) {
  if (rows <= 0) return;
  const int64_t n_blocks = (rows + kQsRowBlock - 1) / kQsRowBlock;
  const int threads = static_cast<int>(std::min<int64_t>(std::max(num_threads, 1), n_blocks));
  int shift = 0;
  while ((int64_t{1} << shift) < kQsRowBlock) ++shift;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> buf;
    std::vector<uint64_t> words(static_cast<size_t>(f.n_trees));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t r0 = b * kQsRowBlock;
      const int64_t nr = std::min(kQsRowBlock, rows - r0);
      const float* xb = load_rows(x, r0, nr, f.n_features, shift, column_kind, buf);
      for (int64_t r = 0; r < nr; ++r) {
        leaf_words(f, xb + r, shift, words.data());
        per_row(r0 + r, words.data());
      }
    }
  }
}

}  // namespace

void qs_raw(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, const double* base,
            bool float32_accum, double* raw, int num_threads) {
  blocks(f, x, rows, column_kind, num_threads, [&](int64_t r, const uint64_t* words) {
    double* out = raw + r * f.n_outputs;
    if (float32_accum) {
      raw_row(f, words, base, f.values32, out);
    } else {
      raw_row(f, words, base, f.values, out);
    }
  });
}

void qs_leaves(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, int32_t* leaves,
               int num_threads) {
  blocks(f, x, rows, column_kind, num_threads, [&](int64_t r, const uint64_t* words) {
    for (int64_t t = 0; t < f.n_trees; ++t)
      leaves[r * f.n_trees + t] = f.leaf_nodes[t * kQsMaxLeaves + leaf_of(words[t])];
  });
}

}  // namespace pyzero::trees
