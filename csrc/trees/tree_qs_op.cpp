// torch ops of the bitvector CPU kernel (Note [Bitvector trees], tree_qs.h): pyzero::tree_qs_raw and
// pyzero::tree_qs_leaves. Light includes only.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "tree_op_checks.h"
#include "tree_qs.h"

namespace pyzero {
namespace {

void check_vector(const at::Tensor& t, at::ScalarType dtype, const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.is_contiguous(), "pyzero.trees: ", what);
}

// Feature c's nodes [start[c], start[c + 1]) of `count`: starts from 0, never decreasing, ending at count.
void check_starts(const at::Tensor& start, int64_t n_features, int64_t count, const char* name) {
  check_vector(start, at::kLong, "bitvector starts must be contiguous int64 vectors");
  TORCH_CHECK(start.size(0) == n_features + 1, "pyzero.trees: ", name,
              " needs n_features + 1 = ", n_features + 1, " entries, got ", start.size(0));
  const int64_t* s = start.data_ptr<int64_t>();
  bool ok = s[0] == 0 && s[n_features] == count;
  for (int64_t c = 0; c < n_features && ok; ++c) ok = s[c] <= s[c + 1];
  TORCH_CHECK(ok, "pyzero.trees: ", name, " must rise from 0 to its list's length ", count);
}

void check_words(const at::Tensor& word, int64_t n_words, const char* name) {
  check_vector(word, at::kInt, "bitvector word lists must be contiguous int32 vectors");
  const int32_t* w = word.data_ptr<int32_t>();
  bool ok = true;
  for (int64_t i = 0; i < word.size(0); ++i) ok &= w[i] >= 0 && w[i] < n_words;
  TORCH_CHECK(ok, "pyzero.trees: ", name, " must hold word numbers in [0, ", n_words, ")");
}

// The view of the op's node arrays for rows of n_features (x, checked by check_rows).
trees::QsView qs_view(const at::Tensor& threshold, const at::Tensor& word, const at::Tensor& mask,
                      const at::Tensor& start, const at::Tensor& nan_word, const at::Tensor& nan_mask,
                      const at::Tensor& nan_start, const at::Tensor& word_start, const at::Tensor& leaf_nodes,
                      int64_t n_features) {
  TORCH_CHECK(leaf_nodes.scalar_type() == at::kInt && leaf_nodes.dim() == 2 &&
                  leaf_nodes.size(1) == trees::kQsWordBits && leaf_nodes.is_contiguous(),
              "pyzero.trees: leaf_nodes must be a contiguous int32 tensor of shape (words, ",
              trees::kQsWordBits, ")");
  const int64_t n_words = leaf_nodes.size(0);
  check_vector(word_start, at::kLong, "word_start must be a contiguous int64 vector");
  TORCH_CHECK(word_start.size(0) >= 1, "pyzero.trees: word_start needs n_trees + 1 entries");
  const int64_t n_trees = word_start.size(0) - 1;
  const int64_t* ws = word_start.data_ptr<int64_t>();
  bool ok = ws[0] == 0 && ws[n_trees] == n_words;
  for (int64_t t = 0; t < n_trees && ok; ++t)
    ok = ws[t + 1] - ws[t] >= 1 && ws[t + 1] - ws[t] <= trees::kQsMaxWords;
  TORCH_CHECK(ok, "pyzero.trees: word_start must rise from 0 to the ", n_words,
              " words of leaf_nodes, by 1 to ", trees::kQsMaxWords, " a tree");
  check_vector(threshold, at::kFloat, "threshold must be a contiguous float32 vector");
  check_vector(mask, at::kLong, "mask must be a contiguous int64 vector");
  check_vector(nan_mask, at::kLong, "nan_mask must be a contiguous int64 vector");
  TORCH_CHECK(word.size(0) == threshold.size(0) && mask.size(0) == threshold.size(0),
              "pyzero.trees: threshold, word and mask need one entry per node entry");
  TORCH_CHECK(nan_mask.size(0) == nan_word.size(0),
              "pyzero.trees: nan_word and nan_mask need one entry per node entry");
  check_starts(start, n_features, threshold.size(0), "start");
  check_starts(nan_start, n_features, nan_word.size(0), "nan_start");
  check_words(word, n_words, "word");
  check_words(nan_word, n_words, "nan_word");
  trees::QsView f{};
  f.threshold = threshold.data_ptr<float>();
  f.word = word.data_ptr<int32_t>();
  f.mask = reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>());
  f.start = start.data_ptr<int64_t>();
  f.nan_word = nan_word.data_ptr<int32_t>();
  f.nan_mask = reinterpret_cast<const uint64_t*>(nan_mask.data_ptr<int64_t>());
  f.nan_start = nan_start.data_ptr<int64_t>();
  f.word_start = ws;
  f.leaf_nodes = leaf_nodes.data_ptr<int32_t>();
  f.n_trees = n_trees;
  f.n_words = n_words;
  f.n_features = n_features;
  f.n_outputs = 1;
  return f;
}

at::Tensor tree_qs_raw_cpu(const at::Tensor& threshold, const at::Tensor& word, const at::Tensor& mask,
                           const at::Tensor& start, const at::Tensor& nan_word, const at::Tensor& nan_mask,
                           const at::Tensor& nan_start, const at::Tensor& word_start,
                           const at::Tensor& values, const at::Tensor& values32, const at::Tensor& leaf_nodes,
                           const at::Tensor& column_kind, const at::Tensor& x, const at::Tensor& base,
                           bool float32_accum) {
  const int8_t* kinds = check_rows(x, column_kind);
  trees::QsView f =
      qs_view(threshold, word, mask, start, nan_word, nan_mask, nan_start, word_start, leaf_nodes, x.size(1));
  f.n_outputs = check_leaf_values(values, values32, f.n_words, "words", trees::kQsWordBits, "64");
  f.values = values.data_ptr<double>();
  f.values32 = values32.data_ptr<float>();
  check_base(base, f.n_outputs);
  at::Tensor raw = at::empty({x.size(0), f.n_outputs}, x.options().dtype(at::kDouble));
  trees::qs_raw(f, x.data_ptr<float>(), x.size(0), kinds, base.data_ptr<double>(), float32_accum,
                raw.data_ptr<double>(), at::get_num_threads());
  return raw;
}

at::Tensor tree_qs_leaves_cpu(const at::Tensor& threshold, const at::Tensor& word, const at::Tensor& mask,
                              const at::Tensor& start, const at::Tensor& nan_word, const at::Tensor& nan_mask,
                              const at::Tensor& nan_start, const at::Tensor& word_start,
                              const at::Tensor& leaf_nodes, const at::Tensor& column_kind,
                              const at::Tensor& x) {
  const int8_t* kinds = check_rows(x, column_kind);
  const trees::QsView f =
      qs_view(threshold, word, mask, start, nan_word, nan_mask, nan_start, word_start, leaf_nodes, x.size(1));
  at::Tensor out = at::empty({x.size(0), f.n_trees}, x.options().dtype(at::kInt));
  trees::qs_leaves(f, x.data_ptr<float>(), x.size(0), kinds, out.data_ptr<int32_t>(), at::get_num_threads());
  return out;
}

}  // namespace
}  // namespace pyzero

TORCH_LIBRARY_FRAGMENT(pyzero, m) {
  m.def(
      "tree_qs_raw(Tensor threshold, Tensor word, Tensor mask, Tensor start, Tensor nan_word, Tensor "
      "nan_mask, "
      "Tensor nan_start, Tensor word_start, Tensor values, Tensor values32, Tensor leaf_nodes, Tensor "
      "column_kind, Tensor x, Tensor base, bool float32_accum) -> Tensor");
  m.def(
      "tree_qs_leaves(Tensor threshold, Tensor word, Tensor mask, Tensor start, Tensor nan_word, Tensor "
      "nan_mask, Tensor nan_start, Tensor word_start, Tensor leaf_nodes, Tensor column_kind, Tensor x) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(pyzero, CPU, m) {
  m.impl("tree_qs_raw", &pyzero::tree_qs_raw_cpu);
  m.impl("tree_qs_leaves", &pyzero::tree_qs_leaves_cpu);
}
