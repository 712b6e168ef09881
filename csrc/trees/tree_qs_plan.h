// Prepared calls of the bitvector CPU kernel (Note [Bitvector trees], tree_qs.h). Light includes only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "../local.h"
#include "tree_qs.h"

namespace pyzero {

// Note [Prepared bitvector calls]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Checking the forest's arrays costs time linear in their entries: every word number is checked to lie
// in [0, words), and a forest with categorical tables holds about 100k of them (XGBoost, 100 trees of
// depth 8, four categorical features: the op took 98 us for one row, 4.4 us without those checks). A
// QsPlan checks them once and keeps the tensors alive; a call then checks only x and base. The ops
// pyzero::tree_qs_raw / _leaves are a plan made and called once, so both paths run the same code.
class PYZERO_LOCAL QsPlan {
 public:
  // nodes: the ops' 13 node arrays in their order (threshold ... cat_domain); without values and values32
  // the plan gives leaves only.
  QsPlan(const std::vector<at::Tensor>& nodes, const std::optional<at::Tensor>& values,
         const std::optional<at::Tensor>& values32, const at::Tensor& leaf_nodes,
         const at::Tensor& column_kind, int64_t n_features);
  // float64 [rows, outputs]: base + the trees' leaf values in tree order (float32 sums when
  // float32_accum).
  at::Tensor raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const;
  // int32 [rows, trees]: the IR node id of each tree's leaf.
  at::Tensor leaves(const at::Tensor& x) const;

 private:
  void check_x(const at::Tensor& x) const;

  std::vector<at::Tensor> keep_;  // every tensor the view points into
  trees::QsView f_{};
  const int8_t* kinds_ = nullptr;  // column_kind, or nullptr when every column is read as it is
  int64_t n_features_;
};

}  // namespace pyzero
