// The bitvector kernel of Note [Bitvector trees] (tree_qs.h): row blocks on OpenMP threads.
#include "tree_qs.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "../cpu/adam_cpu.h"
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

// The slot (word * kQsWordBits + bit) of tree t's lowest leaf still standing in one row's words
// (words[w * kQsRowGroup]): the tree's words keep at least its exit leaf; whatever the masks hold, the
// answer stays within the tree's last word. kOneWord: every tree has one word (word t), the common case,
// without the word_start reads (the demo's forest, one thread: 2.34 M rows/s with them, 2.53 without).
template <bool kOneWord>
inline int64_t leaf_of(const QsView& f, const uint64_t* words, int64_t t) {
  int64_t w = t;
  if constexpr (!kOneWord) {
    w = f.word_start[t];
    const int64_t last = f.word_start[t + 1] - 1;
    while (w < last && words[w * kQsRowGroup] == 0) ++w;
  }
  return w * kQsWordBits + __builtin_ctzll(words[w * kQsRowGroup] | (uint64_t{1} << (kQsWordBits - 1)));
}

// One row of a group's words (words[w * kQsRowGroup]): its sums in tree order.
template <bool kOneWord, typename Acc>
void raw_row(const QsView& f, const uint64_t* words, const double* base, const Acc* values, double* out) {
  const int64_t outs = f.n_outputs;
  for (int64_t o = 0; o < outs; ++o) {
    Acc acc = static_cast<Acc>(base[o]);
    for (int64_t t = 0; t < f.n_trees; ++t) acc += values[leaf_of<kOneWord>(f, words, t) * outs + o];
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
  const cpu::Isa isa = cpu::active_isa();
  const QsWords vector_words = isa == cpu::Isa::kAvx512 ? qs_words_avx512
                               : isa == cpu::Isa::kAvx2 ? qs_words_avx2
                                                        : qs_words_scalar;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> buf;
    std::vector<uint64_t> words(static_cast<size_t>(f.n_words * kQsRowGroup));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t r0 = b * kQsRowBlock;
      const int64_t nr = std::min(kQsRowBlock, rows - r0);
      const float* xb = load_rows(x, r0, nr, f.n_features, shift, column_kind, buf);
      for (int64_t g0 = 0; g0 < nr; g0 += kQsRowGroup) {
        const int64_t n = std::min(kQsRowGroup, nr - g0);
        (n >= kQsVectorMinRows ? vector_words : qs_words_scalar)(f, xb + g0, shift, n, words.data());
        if (f.has_cat) qs_categorical(f, xb + g0, shift, n, words.data());
        for (int64_t g = 0; g < n; ++g) per_row(r0 + g0 + g, words.data() + g);
      }
    }
  }
}

}  // namespace

void qs_words_scalar(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words) {
  for (int64_t w = 0; w < f.n_words; ++w) std::fill_n(words + w * kQsRowGroup, rows, ~uint64_t{0});
  for (int64_t c = 0; c < f.n_features; ++c) {
    const int64_t s = f.start[c], n = f.start[c + 1] - s;
    for (int64_t g = 0; g < rows; ++g) {
      const float v = xt[(c << shift) + g];
      uint64_t* w = words + g;
      if (std::isnan(v)) {
        for (int64_t i = f.nan_start[c]; i < f.nan_start[c + 1]; ++i)
          w[f.nan_word[i] * kQsRowGroup] &= f.nan_mask[i];
        continue;
      }
      const int64_t failed = failed_prefix(f.threshold + s, n, v);
      for (int64_t i = s; i < s + failed; ++i) w[f.word[i] * kQsRowGroup] &= f.mask[i];
    }
  }
}

void qs_categorical(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words) {
  for (int64_t c = 0; c < f.n_features; ++c) {
    const int64_t first = f.cat_feature[2 * c], k = f.cat_feature[2 * c + 1];
    if (first < 0) continue;
    for (int64_t g = 0; g < rows; ++g) {
      const float v = xt[(c << shift) + g];
      int64_t row = k + 2;  // NaN
      if (!std::isnan(v)) {
        // outside the domain, else the category (truncated toward zero: the domain starts above -1)
        const auto cat = static_cast<int64_t>(v >= f.cat_lo && v < f.cat_hi ? v : 0.0f);
        row = !(v >= f.cat_lo && v < f.cat_hi) ? k + 1 : std::min(cat, k);
      }
      uint64_t* w = words + g;
      const int64_t* rs = f.cat_row_start + first + row;
      for (int64_t i = rs[0]; i < rs[1]; ++i) w[f.cat_word[i] * kQsRowGroup] &= f.cat_mask[i];
    }
  }
}

void qs_raw(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, const double* base,
            bool float32_accum, double* raw, int num_threads) {
  const bool one_word = f.n_words == f.n_trees;
  blocks(f, x, rows, column_kind, num_threads, [&](int64_t r, const uint64_t* words) {
    double* out = raw + r * f.n_outputs;
    if (one_word) {
      float32_accum ? raw_row<true>(f, words, base, f.values32, out)
                    : raw_row<true>(f, words, base, f.values, out);
    } else {
      float32_accum ? raw_row<false>(f, words, base, f.values32, out)
                    : raw_row<false>(f, words, base, f.values, out);
    }
  });
}

void qs_leaves(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, int32_t* leaves,
               int num_threads) {
  const bool one_word = f.n_words == f.n_trees;
  blocks(f, x, rows, column_kind, num_threads, [&](int64_t r, const uint64_t* words) {
    for (int64_t t = 0; t < f.n_trees; ++t)
      leaves[r * f.n_trees + t] =
          f.leaf_nodes[one_word ? leaf_of<true>(f, words, t) : leaf_of<false>(f, words, t)];
  });
}

}  // namespace pyzero::trees
