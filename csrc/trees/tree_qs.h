// The bitvector CPU kernel (QuickScorer) for forests of small but deep trees. Torch-free.
//
// Note [Bitvector trees]
// ~~~~~~~~~~~~~~~~~~~~~~
// Lucchese et al.'s QuickScorer (SIGIR 2015) for trees of at most kQsMaxLeaves leaves, whatever their
// depth (LightGBM's leaf-wise trees: 31-255 leaves, depth 10-40, too deep for Note [Perfect trees]). A
// tree's leaves are numbered left to right, leaf j as bit j % 64 of its word j / 64 (a tree has
// ceil(leaves / 64) words, at most kQsMaxWords; the forest's words are numbered tree after tree, tree
// t's from word_start[t]). A split node whose test fails for a row (the row goes right) rules out the
// leaves of its left subtree, a run of consecutive bits: it becomes one entry per word the run touches,
// (word, mask of all ones but the run's bits there). A row starts every word at all ones and ANDs in
// the entries of every node it fails; the leaf it reaches is then the lowest bit still set in its
// tree's words (the leftmost leaf no failed node rules out), whatever the order of the ANDs. So the
// kernel goes feature by feature instead of node by node: the entries of feature c sorted by
// threshold, a number v fails exactly those with !(v <= t), a prefix found by binary search, and ANDs
// their masks into their words with no branch on the data; a NaN fails the entries of feature c that
// are not default-left (a second list per feature). Node tests
// are Note [Perfect trees]' `isnan(x) ? default_left : x <= t`: x < t splits use the float32 below t,
// NaN when t is -inf (x < -inf: every number fails it), so NaN thresholds sort first; the column
// transforms are its column_kind. Sums go tree by tree in tree order (base, then tree 0, 1, ...)
// as in every other kernel: the same bits.
//
// Categorical features (Note [Categorical splits] in forest.py; a feature's splits are all numeric or
// all categorical) have no sorted entries: a value picks one row of the feature's table, which holds
// the entries (one per word, the masks of its failing nodes ANDed) of every node of that feature the
// value fails. A feature of K table categories (above its sets' highest bit no category is in a set)
// has rows k < K (category k), K (categories >= K), K + 1 (outside the domain [cat_lo, cat_hi)) and
// K + 2 (NaN, after the column transform: missing). Rows differ per value, so this pass goes row by
// row in scalar code for every ISA (qs_categorical), after the numeric features' pass.
#pragma once

#include <cstdint>

namespace pyzero::trees {

// Leaves a word holds, and words a tree may have.
constexpr int64_t kQsWordBits = 64;
constexpr int64_t kQsMaxWords = 4;
constexpr int64_t kQsMaxLeaves = kQsWordBits * kQsMaxWords;
// Rows a thread takes at a time (transposed into one buffer, as the perfect kernel's blocks), and rows
// that go through a feature's nodes together (one AVX-512 vector of 16 floats, two AVX2 ones).
constexpr int64_t kQsRowBlock = 64;
constexpr int64_t kQsRowGroup = 16;
// Groups of fewer rows take the scalar code, which touches only their words. predict_proba on the
// 2-core EPYC, LightGBM 100 trees of 31 leaves, AVX-512 / scalar: 1 row 16.0 / 13.0 us, 3 rows 16.6 /
// 14.7, 5 rows 16.9 / 16.3, 8 rows 17.2 / 19.0.
constexpr int64_t kQsVectorMinRows = 6;

struct QsView {
  const float* threshold;        // [entries]: feature 0's node entries by threshold, then feature 1's, ...
  const int32_t* word;           // [entries] the word of each
  const uint64_t* mask;          // [entries] the leaves it leaves standing there when its node fails
  const int64_t* start;          // [n_features + 1]: feature c's entries are [start[c], start[c + 1])
  const int32_t* nan_word;       // [nan entries]: entries of nodes that a NaN fails (not default-left)
  const uint64_t* nan_mask;      // [nan entries]
  const int64_t* nan_start;      // [n_features + 1]
  const int64_t* word_start;     // [n_trees + 1]: tree t's words are [word_start[t], word_start[t + 1])
  const int64_t* cat_feature;    // [n_features, 2]: (first table row, K) of a categorical feature, else -1
  const int64_t* cat_row_start;  // [table rows + 1]: row i's entries are [cat_row_start[i], [i + 1])
  const int32_t* cat_word;       // [table entries]
  const uint64_t* cat_mask;      // [table entries]
  float cat_lo, cat_hi;          // the categorical domain, read as the node kernel reads it for float32
  bool has_cat;                  // some feature is categorical
  const double* values;          // [words, kQsWordBits, n_outputs]: bit j of word w's leaf values (else 0)
  const float* values32;         // the same in float32
  const int32_t* leaf_nodes;     // [words, kQsWordBits]: bit j of word w's IR node id
  int64_t n_trees, n_words, n_outputs, n_features;
};

// words[w * kQsRowGroup + g] <- the leaves of word w that row g < rows of a group leaves standing
// (feature c of row g at xt[(c << shift) + g]); rows <= kQsRowGroup. One per ISA (tree_qs.cpp,
// tree_qs_avx2.cpp, tree_qs_avx512.cpp).
using QsWords = void (*)(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words);
void qs_words_scalar(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words);
void qs_words_avx2(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words);
void qs_words_avx512(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words);
// The categorical features' pass over the same words (after one of the above).
void qs_categorical(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words);

// raw[r, o] = base[o] + the leaf values of tree 0, 1, ... in order (float32 sums when float32_accum,
// from float(base)); x: [rows, n_features] float32 row-major; column_kind: [n_features] or nullptr.
void qs_raw(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, const double* base,
            bool float32_accum, double* raw, int num_threads);

// leaves[r, t] = IR node id of the leaf row r reaches in tree t.
void qs_leaves(const QsView& f, const float* x, int64_t rows, const int8_t* column_kind, int32_t* leaves,
               int num_threads);

}  // namespace pyzero::trees
