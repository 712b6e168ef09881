// torch ops of the perfect-tree CPU kernel (tree_fast.h): pyzero::tree_perfect_raw and
// pyzero::tree_perfect_leaves. Light includes only, so this unit compiles quickly.
#include <algorithm>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "tree_fast.h"
#include "tree_op_checks.h"

namespace pyzero {
namespace {

int32_t depth_of(int64_t leaves) {
  int32_t d = 0;
  while ((int64_t{1} << d) < leaves) ++d;
  return d;
}

trees::PerfectView perfect_view(const at::Tensor& meta, const at::Tensor& threshold,
                                const at::Tensor& leaf_nodes) {
  TORCH_CHECK(meta.scalar_type() == at::kInt && meta.dim() == 2 && meta.is_contiguous(),
              "pyzero.trees: meta must be a contiguous int32 tensor of shape (trees, node_stride)");
  TORCH_CHECK(
      threshold.scalar_type() == at::kFloat && threshold.sizes() == meta.sizes() && threshold.is_contiguous(),
      "pyzero.trees: threshold must be a contiguous float32 tensor shaped like meta");
  TORCH_CHECK(leaf_nodes.scalar_type() == at::kInt && leaf_nodes.dim() == 2 &&
                  leaf_nodes.size(0) == meta.size(0) && leaf_nodes.is_contiguous(),
              "pyzero.trees: leaf_nodes must be a contiguous int32 tensor of shape (trees, 2^depth)");
  const int64_t leaves = leaf_nodes.size(1);
  const int32_t depth = depth_of(leaves);
  TORCH_CHECK(leaves >= 1 && (int64_t{1} << depth) == leaves && depth <= 30,
              "pyzero.trees: leaf_nodes must have a power-of-two number of columns");
  TORCH_CHECK(meta.size(1) >= std::max(leaves, trees::kMinNodeStride),
              "pyzero.trees: meta needs at least max(2^depth, ", trees::kMinNodeStride, ") columns");
  TORCH_CHECK(meta.numel() < (int64_t{1} << 31) && leaf_nodes.numel() < (int64_t{1} << 31),
              "pyzero.trees: forest too large for 32-bit node indices");
  return trees::PerfectView{meta.data_ptr<int32_t>(),
                            threshold.data_ptr<float>(),
                            nullptr,
                            nullptr,
                            leaf_nodes.data_ptr<int32_t>(),
                            meta.size(0),
                            1,
                            meta.size(1),
                            depth};
}

at::Tensor tree_perfect_raw_cpu(const at::Tensor& meta, const at::Tensor& threshold, const at::Tensor& values,
                                const at::Tensor& values32, const at::Tensor& leaf_nodes,
                                const at::Tensor& column_kind, const at::Tensor& x, const at::Tensor& base,
                                bool float32_accum) {
  trees::PerfectView f = perfect_view(meta, threshold, leaf_nodes);
  f.n_outputs = check_leaf_values(values, values32, f.n_trees, "trees", leaf_nodes.size(1), "2^depth");
  f.values = values.data_ptr<double>();
  f.values32 = values32.data_ptr<float>();
  const int8_t* kinds = check_rows(x, column_kind);
  check_base(base, f.n_outputs);
  at::Tensor raw = at::empty({x.size(0), f.n_outputs}, x.options().dtype(at::kDouble));
  trees::perfect_raw(f, x.data_ptr<float>(), x.size(0), x.size(1), kinds, base.data_ptr<double>(),
                     float32_accum, raw.data_ptr<double>(), at::get_num_threads());
  return raw;
}

at::Tensor tree_perfect_leaves_cpu(const at::Tensor& meta, const at::Tensor& threshold,
                                   const at::Tensor& leaf_nodes, const at::Tensor& column_kind,
                                   const at::Tensor& x) {
  const trees::PerfectView f = perfect_view(meta, threshold, leaf_nodes);
  const int8_t* kinds = check_rows(x, column_kind);
  at::Tensor leaves = at::empty({x.size(0), f.n_trees}, x.options().dtype(at::kInt));
  trees::perfect_leaves(f, x.data_ptr<float>(), x.size(0), x.size(1), kinds, leaves.data_ptr<int32_t>(),
                        at::get_num_threads());
  return leaves;
}

}  // namespace
}  // namespace pyzero

TORCH_LIBRARY_FRAGMENT(pyzero, m) {
  m.def(
      "tree_perfect_raw(Tensor meta, Tensor threshold, Tensor values, Tensor values32, Tensor leaf_nodes, "
      "Tensor column_kind, Tensor x, Tensor base, bool float32_accum) -> Tensor");
  m.def(
      "tree_perfect_leaves(Tensor meta, Tensor threshold, Tensor leaf_nodes, Tensor column_kind, Tensor x) "
      "-> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(pyzero, CPU, m) {
  m.impl("tree_perfect_raw", &pyzero::tree_perfect_raw_cpu);
  m.impl("tree_perfect_leaves", &pyzero::tree_perfect_leaves_cpu);
}
