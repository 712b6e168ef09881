// Prepared calls of the C++ CPU tree kernels: the perfect-tree kernel (tree_fast.h), the bitvector
// kernel (tree_qs.h) and a whole prediction (kernel, then Note [Fused finish]). Light includes only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "../local.h"
#include "tree_fast.h"
#include "tree_qs.h"

namespace pyzero {

// Note [Prepared CPU calls]
// ~~~~~~~~~~~~~~~~~~~~~~~~~
// A call of a CPU kernel op checks the forest's arrays and passes the dispatcher: about 2 us at batch 1
// for the perfect kernel's nine arguments, and for the bitvector kernel time linear in its entries
// (every word number is checked to lie in [0, words): a forest with categorical tables holds about
// 100k, XGBoost 100 trees of depth 8 with four categorical features, where the op took 98 us for one
// row and the kernel 4.4 us). A kernel plan (PerfectPlan, QsPlan) checks the arrays once and keeps the
// tensors alive; a call checks only x and base. The ops pyzero::tree_perfect_* and pyzero::tree_qs_*
// are a plan made and called once, so both paths run the same code. A CpuPredictPlan binds a kernel
// plan, base, the summation and a finish (Note [Fused finish]): CompiledForest calls it for rows it
// takes as they are (the kernel's input dtype, contiguous, n_features columns, fewer than max_rows), with no
// Python between predict_proba and the kernel, and it gives the same bits as the Python path (the same kernel
// and finish_sums calls).
class PYZERO_LOCAL CpuKernelPlan {
 public:
  virtual ~CpuKernelPlan() = default;
  // float64 [rows, outputs]: base + the trees' leaf values in tree order (float32 sums when
  // float32_accum).
  virtual at::Tensor raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const = 0;
  // int32 [rows, trees]: the IR node id of each tree's leaf.
  virtual at::Tensor leaves(const at::Tensor& x) const = 0;
  // The dtype of the rows it takes (float32; float64 for BinnedPlan).
  virtual at::ScalarType input_dtype() const { return at::kFloat; }
  int64_t n_features() const { return n_features_; }

 protected:
  explicit CpuKernelPlan(int64_t n_features) : n_features_(n_features) {}
  // x: a contiguous float32 [rows, n_features] tensor.
  void check_x(const at::Tensor& x) const;

  std::vector<at::Tensor> keep_;   // every tensor the kernel's view points into
  const int8_t* kinds_ = nullptr;  // column_kind, or nullptr when every column is read as it is
  int64_t n_features_;
};

class PYZERO_LOCAL PerfectPlan : public CpuKernelPlan {
 public:
  // The arrays of pyzero::tree_perfect_raw; without values and values32 the plan gives leaves only.
  PerfectPlan(const at::Tensor& meta, const at::Tensor& threshold, const std::optional<at::Tensor>& values,
              const std::optional<at::Tensor>& values32, const at::Tensor& leaf_nodes,
              const at::Tensor& column_kind, int64_t n_features);
  at::Tensor raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const override;
  at::Tensor leaves(const at::Tensor& x) const override;

 private:
  trees::PerfectView f_{};
};

class PYZERO_LOCAL QsPlan : public CpuKernelPlan {
 public:
  // nodes: pyzero::tree_qs_raw's 13 node arrays in their order (threshold ... cat_domain); without
  // values and values32 the plan gives leaves only.
  QsPlan(const std::vector<at::Tensor>& nodes, const std::optional<at::Tensor>& values,
         const std::optional<at::Tensor>& values32, const at::Tensor& leaf_nodes,
         const at::Tensor& column_kind, int64_t n_features);
  at::Tensor raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const override;
  at::Tensor leaves(const at::Tensor& x) const override;

 private:
  trees::QsView f_{};
};

// Note [Binned float64 inputs] (pyzero/trees/fast_cpu.py): float64 rows binned (pyzero::bin_rows), then
// a float32 kernel plan of the forest whose thresholds are their ranks.
class PYZERO_LOCAL BinnedPlan : public CpuKernelPlan {
 public:
  // edges, starts, codes, encoded: pyzero::bin_rows' (n_features + 1 starts; codes and encoded for
  // Note [Encoded categories], or neither).
  BinnedPlan(std::shared_ptr<const CpuKernelPlan> inner, const at::Tensor& edges, const at::Tensor& starts,
             const std::optional<at::Tensor>& codes, const std::optional<at::Tensor>& encoded);
  at::Tensor raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const override;
  at::Tensor leaves(const at::Tensor& x) const override;
  at::ScalarType input_dtype() const override { return at::kDouble; }

 private:
  at::Tensor bin(const at::Tensor& x) const;

  std::shared_ptr<const CpuKernelPlan> inner_;
  at::Tensor edges_, starts_;
  std::optional<at::Tensor> codes_, encoded_;
};

// Note [Binned float64 inputs]: float32 ranks [rows, n_features] of float64 rows x (codes for the
// features flagged in encoded).
at::Tensor bin_rows(const at::Tensor& x, const at::Tensor& edges, const at::Tensor& starts,
                    const std::optional<at::Tensor>& codes, const std::optional<at::Tensor>& encoded);

class PYZERO_LOCAL CpuPredictPlan {
 public:
  // finish: [] (the sums) or Note [Fused finish]'s [kind, scale, divisor, pair] as finish_sums takes
  // it (a divisor sums from 0); flat: one output comes back as [rows].
  CpuPredictPlan(std::shared_ptr<const CpuKernelPlan> kernel, const at::Tensor& base, bool float32_accum,
                 const std::vector<double>& finish, bool flat, int64_t max_rows);
  // The outputs of x, or nothing when the plan does not take x (callers take the Python path).
  std::optional<at::Tensor> operator()(const at::Tensor& x) const;

 private:
  std::shared_ptr<const CpuKernelPlan> kernel_;
  at::Tensor base_, sum_base_;  // sum_base_: zeros when the finish takes a mean, else base_
  bool float32_accum_, flat_;
  std::vector<double> finish_;
  int64_t max_rows_;
};

}  // namespace pyzero
