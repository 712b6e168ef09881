// torch ops of the bitvector CPU kernel (Note [Bitvector trees], tree_qs.h), pyzero::tree_qs_raw and
// pyzero::tree_qs_leaves, and their prepared calls (QsPlan: Note [Prepared CPU calls], tree_cpu_plan.h).
// Light includes only.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "tree_op_checks.h"
#include "tree_qs.h"
#include "tree_cpu_plan.h"

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

// The view of the op's node arrays for rows of n_features.
trees::QsView qs_view(const at::Tensor& threshold, const at::Tensor& word, const at::Tensor& mask,
                      const at::Tensor& start, const at::Tensor& nan_word, const at::Tensor& nan_mask,
                      const at::Tensor& nan_start, const at::Tensor& word_start,
                      const at::Tensor& cat_feature, const at::Tensor& cat_row_start,
                      const at::Tensor& cat_word, const at::Tensor& cat_mask, const at::Tensor& cat_domain,
                      const at::Tensor& leaf_nodes, int64_t n_features) {
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
  // categorical tables (Note [Bitvector trees])
  check_vector(cat_mask, at::kLong, "cat_mask must be a contiguous int64 vector");
  TORCH_CHECK(cat_mask.size(0) == cat_word.size(0),
              "pyzero.trees: cat_word and cat_mask need one entry each");
  check_words(cat_word, n_words, "cat_word");
  check_vector(cat_row_start, at::kLong, "cat_row_start must be a contiguous int64 vector");
  TORCH_CHECK(cat_row_start.size(0) >= 1, "pyzero.trees: cat_row_start needs table rows + 1 entries");
  const int64_t table_rows = cat_row_start.size(0) - 1;
  check_starts(cat_row_start, table_rows, cat_word.size(0), "cat_row_start");
  TORCH_CHECK(cat_feature.scalar_type() == at::kLong && cat_feature.dim() == 2 &&
                  cat_feature.size(0) == n_features && cat_feature.size(1) == 2 &&
                  cat_feature.is_contiguous(),
              "pyzero.trees: cat_feature must be a contiguous int64 tensor of shape (n_features, 2)");
  const int64_t* cf = cat_feature.data_ptr<int64_t>();
  bool any_cat = false;
  for (int64_t c = 0; c < n_features; ++c) {
    const int64_t first = cf[2 * c], k = cf[2 * c + 1];
    TORCH_CHECK(first == -1 || (first >= 0 && k >= 0 && k <= table_rows && first <= table_rows - k - 3),
                "pyzero.trees: cat_feature rows must be -1 (numeric) or (first row, K) with K + 3 table rows "
                "from the first in cat_row_start");
    any_cat |= first >= 0;
  }
  TORCH_CHECK(
      cat_domain.scalar_type() == at::kDouble && cat_domain.numel() == 3 && cat_domain.is_contiguous(),
      "pyzero.trees: cat_domain must hold (lo, hi, invalid) as float64");
  const double* dom = cat_domain.data_ptr<double>();
  // categories are trunc(v) for float32 v in [lo, hi): at least 0, below 2**31
  TORCH_CHECK(!any_cat || (static_cast<float>(dom[0]) > -1.0f && static_cast<float>(dom[1]) <= 2147483648.0f),
              "pyzero.trees: cat_domain must lie within (-1, 2**31] in float32");
  trees::QsView f{};
  f.threshold = threshold.data_ptr<float>();
  f.word = word.data_ptr<int32_t>();
  f.mask = reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>());
  f.start = start.data_ptr<int64_t>();
  f.nan_word = nan_word.data_ptr<int32_t>();
  f.nan_mask = reinterpret_cast<const uint64_t*>(nan_mask.data_ptr<int64_t>());
  f.nan_start = nan_start.data_ptr<int64_t>();
  f.word_start = ws;
  f.cat_feature = cf;
  f.cat_row_start = cat_row_start.data_ptr<int64_t>();
  f.cat_word = cat_word.data_ptr<int32_t>();
  f.cat_mask = reinterpret_cast<const uint64_t*>(cat_mask.data_ptr<int64_t>());
  f.cat_lo = static_cast<float>(dom[0]);
  f.cat_hi = static_cast<float>(dom[1]);
  f.has_cat = any_cat;
  f.leaf_nodes = leaf_nodes.data_ptr<int32_t>();
  f.n_trees = n_trees;
  f.n_words = n_words;
  f.n_features = n_features;
  f.n_outputs = 1;
  return f;
}

}  // namespace

QsPlan::QsPlan(const std::vector<at::Tensor>& nodes, const std::optional<at::Tensor>& values,
               const std::optional<at::Tensor>& values32, const at::Tensor& leaf_nodes,
               const at::Tensor& column_kind, int64_t n_features)
    : CpuKernelPlan(n_features) {
  keep_ = nodes;
  TORCH_CHECK(nodes.size() == 13, "pyzero.trees: a bitvector plan takes the 13 node arrays, got ",
              nodes.size());
  f_ = qs_view(nodes[0], nodes[1], nodes[2], nodes[3], nodes[4], nodes[5], nodes[6], nodes[7], nodes[8],
               nodes[9], nodes[10], nodes[11], nodes[12], leaf_nodes, n_features);
  kinds_ = check_column_kind(column_kind, n_features);
  TORCH_CHECK(values.has_value() == values32.has_value(),
              "pyzero.trees: give both values and values32, or neither");
  if (values.has_value()) {
    f_.n_outputs = check_leaf_values(*values, *values32, f_.n_words, "words", trees::kQsWordBits, "64");
    f_.values = values->data_ptr<double>();
    f_.values32 = values32->data_ptr<float>();
    keep_.insert(keep_.end(), {*values, *values32});
  }
  keep_.insert(keep_.end(), {leaf_nodes, column_kind});
}

at::Tensor QsPlan::raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const {
  check_x(x);
  TORCH_CHECK(f_.values != nullptr, "pyzero.trees: this bitvector plan has no leaf values (leaves only)");
  check_base(base, f_.n_outputs);
  at::Tensor raw = at::empty({x.size(0), f_.n_outputs}, x.options().dtype(at::kDouble));
  trees::qs_raw(f_, x.data_ptr<float>(), x.size(0), kinds_, base.data_ptr<double>(), float32_accum,
                raw.data_ptr<double>(), at::get_num_threads());
  return raw;
}

at::Tensor QsPlan::leaves(const at::Tensor& x) const {
  check_x(x);
  at::Tensor out = at::empty({x.size(0), f_.n_trees}, x.options().dtype(at::kInt));
  trees::qs_leaves(f_, x.data_ptr<float>(), x.size(0), kinds_, out.data_ptr<int32_t>(),
                   at::get_num_threads());
  return out;
}

namespace {

at::Tensor tree_qs_raw_cpu(const at::Tensor& threshold, const at::Tensor& word, const at::Tensor& mask,
                           const at::Tensor& start, const at::Tensor& nan_word, const at::Tensor& nan_mask,
                           const at::Tensor& nan_start, const at::Tensor& word_start,
                           const at::Tensor& cat_feature, const at::Tensor& cat_row_start,
                           const at::Tensor& cat_word, const at::Tensor& cat_mask,
                           const at::Tensor& cat_domain, const at::Tensor& values, const at::Tensor& values32,
                           const at::Tensor& leaf_nodes, const at::Tensor& column_kind, const at::Tensor& x,
                           const at::Tensor& base, bool float32_accum) {
  check_x(x);
  const QsPlan plan({threshold, word, mask, start, nan_word, nan_mask, nan_start, word_start, cat_feature,
                     cat_row_start, cat_word, cat_mask, cat_domain},
                    values, values32, leaf_nodes, column_kind, x.size(1));
  return plan.raw(x, base, float32_accum);
}

at::Tensor tree_qs_leaves_cpu(const at::Tensor& threshold, const at::Tensor& word, const at::Tensor& mask,
                              const at::Tensor& start, const at::Tensor& nan_word, const at::Tensor& nan_mask,
                              const at::Tensor& nan_start, const at::Tensor& word_start,
                              const at::Tensor& cat_feature, const at::Tensor& cat_row_start,
                              const at::Tensor& cat_word, const at::Tensor& cat_mask,
                              const at::Tensor& cat_domain, const at::Tensor& leaf_nodes,
                              const at::Tensor& column_kind, const at::Tensor& x) {
  check_x(x);
  const QsPlan plan({threshold, word, mask, start, nan_word, nan_mask, nan_start, word_start, cat_feature,
                     cat_row_start, cat_word, cat_mask, cat_domain},
                    std::nullopt, std::nullopt, leaf_nodes, column_kind, x.size(1));
  return plan.leaves(x);
}

}  // namespace
}  // namespace pyzero

TORCH_LIBRARY_FRAGMENT(pyzero, m) {
  m.def(
      "tree_qs_raw(Tensor threshold, Tensor word, Tensor mask, Tensor start, Tensor nan_word, "
      "Tensor nan_mask, Tensor nan_start, Tensor word_start, Tensor cat_feature, Tensor cat_row_start, "
      "Tensor cat_word, Tensor cat_mask, Tensor cat_domain, Tensor values, Tensor values32, "
      "Tensor leaf_nodes, Tensor column_kind, Tensor x, Tensor base, bool float32_accum) -> Tensor");
  m.def(
      "tree_qs_leaves(Tensor threshold, Tensor word, Tensor mask, Tensor start, Tensor nan_word, "
      "Tensor nan_mask, Tensor nan_start, Tensor word_start, Tensor cat_feature, Tensor cat_row_start, "
      "Tensor cat_word, Tensor cat_mask, Tensor cat_domain, Tensor leaf_nodes, Tensor column_kind, "
      "Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(pyzero, CPU, m) {
  m.impl("tree_qs_raw", &pyzero::tree_qs_raw_cpu);
  m.impl("tree_qs_leaves", &pyzero::tree_qs_leaves_cpu);
}
