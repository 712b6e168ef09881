// Argument checks shared by the torch ops of the C++ CPU kernels that read float32 rows through
// column_kind (tree_fast_op.cpp, tree_qs_op.cpp). Light includes only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "tree_fast.h"

namespace pyzero {

// x [rows, features] float32.
inline void check_x(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous() && x.size(1) >= 1,
              "pyzero.trees: x must be a contiguous float32 tensor of shape (rows, features)");
  TORCH_CHECK(x.size(1) < (int64_t{1} << 26), "pyzero.trees: too many features");
}

// column_kind [n_features] (Note [Perfect trees]'s column transforms): the kinds as the kernels take
// them, nullptr when every column is read as it is.
inline const int8_t* check_column_kind(const at::Tensor& column_kind, int64_t n_features) {
  TORCH_CHECK(column_kind.scalar_type() == at::kChar && column_kind.dim() == 1 &&
                  column_kind.is_contiguous() && column_kind.size(0) == n_features,
              "pyzero.trees: column_kind must be a contiguous int8 vector with one entry per feature of x");
  const int8_t* kinds = column_kind.data_ptr<int8_t>();
  bool any = false;
  for (int64_t c = 0; c < column_kind.size(0); ++c) {
    TORCH_CHECK(kinds[c] >= 0 &&
                    (kinds[c] & ~(trees::kColumnMissingMask | trees::kColumnLightgbmReading)) == 0 &&
                    (kinds[c] & trees::kColumnMissingMask) <= trees::kColumnZeroToNan,
                "pyzero.trees: column_kind entries must be 0, 1 or 2, plus 4 for LightGBM's input reading");
    any |= kinds[c] != trees::kColumnAsIs;
  }
  return any ? kinds : nullptr;  // nullptr: no transforms, the kernel reads x in place
}

// x and its column_kind: the kinds as the kernels take them.
inline const int8_t* check_rows(const at::Tensor& x, const at::Tensor& column_kind) {
  check_x(x);
  return check_column_kind(column_kind, x.size(1));
}

// values [units, slots, outputs] float64 and values32, the same in float32 (`units_name` and `slots_name`
// name the first two dimensions in the message): the number of outputs.
inline int64_t check_leaf_values(const at::Tensor& values, const at::Tensor& values32, int64_t units,
                                 const char* units_name, int64_t slots, const char* slots_name) {
  TORCH_CHECK(values.scalar_type() == at::kDouble && values.dim() == 3 && values.size(0) == units &&
                  values.size(1) == slots && values.size(2) >= 1 && values.is_contiguous(),
              "pyzero.trees: values must be a contiguous float64 tensor of shape (", units_name, ", ",
              slots_name, ", outputs)");
  TORCH_CHECK(
      values32.scalar_type() == at::kFloat && values32.sizes() == values.sizes() && values32.is_contiguous(),
      "pyzero.trees: values32 must be a contiguous float32 tensor shaped like values");
  TORCH_CHECK(values.numel() < (int64_t{1} << 31), "pyzero.trees: forest too large for 32-bit leaf indices");
  return values.size(2);
}

inline void check_base(const at::Tensor& base, int64_t n_outputs) {
  TORCH_CHECK(base.scalar_type() == at::kDouble && base.numel() == n_outputs && base.is_contiguous(),
              "pyzero.trees: base must hold one float64 per output");
}

}  // namespace pyzero
