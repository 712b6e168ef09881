// torch ops of the perfect-tree CPU kernel (tree_fast.h), pyzero::tree_perfect_raw and
// pyzero::tree_perfect_leaves, and their prepared calls (PerfectPlan: Note [Prepared CPU calls],
// tree_cpu_plan.h). Light includes only, so this unit compiles quickly.
#include <algorithm>
#include <limits>
#include <utility>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "tree_cpu_plan.h"
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

}  // namespace

void CpuKernelPlan::check_x(const at::Tensor& x) const {
  pyzero::check_x(x);
  TORCH_CHECK(x.size(1) == n_features_, "pyzero.trees: x has ", x.size(1), " features, the forest takes ",
              n_features_);
}

PerfectPlan::PerfectPlan(const at::Tensor& meta, const at::Tensor& threshold,
                         const std::optional<at::Tensor>& values, const std::optional<at::Tensor>& values32,
                         const at::Tensor& leaf_nodes, const at::Tensor& column_kind, int64_t n_features)
    : CpuKernelPlan(n_features) {
  f_ = perfect_view(meta, threshold, leaf_nodes);
  kinds_ = check_column_kind(column_kind, n_features);
  TORCH_CHECK(values.has_value() == values32.has_value(),
              "pyzero.trees: give both values and values32, or neither");
  if (values.has_value()) {
    f_.n_outputs = check_leaf_values(*values, *values32, f_.n_trees, "trees", leaf_nodes.size(1), "2^depth");
    f_.values = values->data_ptr<double>();
    f_.values32 = values32->data_ptr<float>();
    keep_.insert(keep_.end(), {*values, *values32});
  }
  keep_.insert(keep_.end(), {meta, threshold, leaf_nodes, column_kind});
}

at::Tensor PerfectPlan::raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const {
  check_x(x);
  TORCH_CHECK(f_.values != nullptr, "pyzero.trees: this perfect-tree plan has no leaf values (leaves only)");
  check_base(base, f_.n_outputs);
  at::Tensor raw = at::empty({x.size(0), f_.n_outputs}, x.options().dtype(at::kDouble));
  trees::perfect_raw(f_, x.data_ptr<float>(), x.size(0), x.size(1), kinds_, base.data_ptr<double>(),
                     float32_accum, raw.data_ptr<double>(), at::get_num_threads());
  return raw;
}

at::Tensor PerfectPlan::leaves(const at::Tensor& x) const {
  check_x(x);
  at::Tensor out = at::empty({x.size(0), f_.n_trees}, x.options().dtype(at::kInt));
  trees::perfect_leaves(f_, x.data_ptr<float>(), x.size(0), x.size(1), kinds_, out.data_ptr<int32_t>(),
                        at::get_num_threads());
  return out;
}

namespace {

at::Tensor tree_perfect_raw_cpu(const at::Tensor& meta, const at::Tensor& threshold, const at::Tensor& values,
                                const at::Tensor& values32, const at::Tensor& leaf_nodes,
                                const at::Tensor& column_kind, const at::Tensor& x, const at::Tensor& base,
                                bool float32_accum) {
  check_x(x);
  return PerfectPlan(meta, threshold, values, values32, leaf_nodes, column_kind, x.size(1))
      .raw(x, base, float32_accum);
}

at::Tensor tree_perfect_leaves_cpu(const at::Tensor& meta, const at::Tensor& threshold,
                                   const at::Tensor& leaf_nodes, const at::Tensor& column_kind,
                                   const at::Tensor& x) {
  check_x(x);
  return PerfectPlan(meta, threshold, std::nullopt, std::nullopt, leaf_nodes, column_kind, x.size(1))
      .leaves(x);
}

// Rows a thread bins at least (bin_rows), and rows searched in lockstep: a search is a chain of about
// eight dependent loads, so one row at a time waits on each (2-core EPYC, 100k rows x 20 features of up
// to 254 thresholds: 29.8 ms one row at a time).
constexpr int64_t kBinGrainRows = 1024;
constexpr int64_t kBinLanes = 16;

// The rank of each of the n values v (Note [Binned float64 inputs]): how many of e[0 .. len) (ascending)
// lie below it, NaN for NaN, the value itself (as a float32) when len is 0; with codes, the code of the
// e[i] equal to v instead, NaN when none is (an unknown category). The searches go in lockstep (Khuong
// and Morin's branchless lower bound).
inline void bin_lanes(const double* e, const float* codes, int64_t len, const double* v, int64_t n,
                      float* out) {
  int64_t at[kBinLanes] = {};
  for (int64_t size = len; size > 1; size -= size >> 1) {
    const int64_t half = size >> 1;
    for (int64_t l = 0; l < n; ++l) at[l] += half & -static_cast<int64_t>(e[at[l] + half - 1] < v[l]);
  }
  for (int64_t l = 0; l < n; ++l) {
    const int64_t rank = len == 0 ? 0 : at[l] + static_cast<int64_t>(e[at[l]] < v[l]);
    if (codes != nullptr) {
      out[l] = rank < len && e[rank] == v[l] ? codes[rank] : std::numeric_limits<float>::quiet_NaN();
    } else {
      out[l] = v[l] != v[l] || len == 0 ? static_cast<float>(v[l]) : static_cast<float>(rank);
    }
  }
}

}  // namespace

// Note [Binned float64 inputs] (fast_cpu.py): out[r, c] = the number of feature c's thresholds
// edges[starts[c] .. starts[c + 1]) (ascending, distinct) below x[r, c], as a float32; NaN stays NaN, and
// a feature without thresholds passes as float32(x[r, c]). A feature c with encoded[c] (Note [Encoded
// categories]) has its known categories as edges instead and takes the code of the one equal to x[r, c]
// (codes[i] for edges[i]), NaN for any other value.
at::Tensor bin_rows(const at::Tensor& x, const at::Tensor& edges, const at::Tensor& starts,
                    const std::optional<at::Tensor>& codes, const std::optional<at::Tensor>& encoded) {
  TORCH_CHECK(x.scalar_type() == at::kDouble && x.dim() == 2 && x.is_contiguous() && x.is_cpu(),
              "pyzero.bin_rows: x must be a contiguous float64 CPU tensor of shape (rows, features)");
  TORCH_CHECK(edges.scalar_type() == at::kDouble && edges.dim() == 1 && edges.is_contiguous(),
              "pyzero.bin_rows: edges must be a contiguous 1-D float64 tensor");
  const int64_t n_features = x.size(1);
  TORCH_CHECK(starts.scalar_type() == at::kLong && starts.dim() == 1 && starts.is_contiguous() &&
                  starts.numel() == n_features + 1,
              "pyzero.bin_rows: starts must be a contiguous int64 tensor of n_features + 1 = ",
              n_features + 1, " offsets, got ", starts.numel());
  const int64_t* st = starts.data_ptr<int64_t>();
  TORCH_CHECK(st[0] == 0 && st[n_features] == edges.numel(), "pyzero.bin_rows: starts must run from 0 to ",
              edges.numel(), " (the edges)");
  for (int64_t c = 0; c < n_features; ++c)
    TORCH_CHECK(st[c] <= st[c + 1], "pyzero.bin_rows: starts must not decrease (feature ", c, ")");
  TORCH_CHECK(codes.has_value() == encoded.has_value(), "pyzero.bin_rows: codes and encoded go together");
  const float* code = nullptr;
  const bool* is_encoded = nullptr;
  if (codes.has_value()) {
    TORCH_CHECK(codes->scalar_type() == at::kFloat && codes->dim() == 1 && codes->is_contiguous() &&
                    codes->numel() == edges.numel(),
                "pyzero.bin_rows: codes must be a contiguous float32 tensor of one code per edge (",
                edges.numel(), "), got ", codes->numel());
    TORCH_CHECK(encoded->scalar_type() == at::kBool && encoded->dim() == 1 && encoded->is_contiguous() &&
                    encoded->numel() == n_features,
                "pyzero.bin_rows: encoded must be a contiguous bool tensor of n_features = ", n_features,
                " flags, got ", encoded->numel());
    code = codes->data_ptr<float>();
    is_encoded = encoded->data_ptr<bool>();
  }
  at::Tensor out = at::empty({x.size(0), n_features}, x.options().dtype(at::kFloat));
  const double* xs = x.data_ptr<double>();
  const double* e = edges.data_ptr<double>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, x.size(0), kBinGrainRows, [&](int64_t r0, int64_t r1) {
    double v[kBinLanes];
    float ranks[kBinLanes];
    for (int64_t b = r0; b < r1; b += kBinLanes) {
      const int64_t n = std::min(kBinLanes, r1 - b);
      for (int64_t c = 0; c < n_features; ++c) {
        for (int64_t l = 0; l < n; ++l) v[l] = xs[(b + l) * n_features + c];
        const float* feature_codes = is_encoded != nullptr && is_encoded[c] ? code + st[c] : nullptr;
        bin_lanes(e + st[c], feature_codes, st[c + 1] - st[c], v, n, ranks);
        for (int64_t l = 0; l < n; ++l) o[(b + l) * n_features + c] = ranks[l];
      }
    }
  });
  return out;
}

BinnedPlan::BinnedPlan(std::shared_ptr<const CpuKernelPlan> inner, const at::Tensor& edges,
                       const at::Tensor& starts, const std::optional<at::Tensor>& codes,
                       const std::optional<at::Tensor>& encoded)
    : CpuKernelPlan(inner != nullptr ? inner->n_features() : 0),
      inner_(std::move(inner)),
      edges_(edges),
      starts_(starts),
      codes_(codes),
      encoded_(encoded) {
  TORCH_CHECK(inner_ != nullptr && inner_->input_dtype() == at::kFloat,
              "pyzero.trees: a binned plan needs a float32 kernel plan");
  bin(at::empty({0, n_features_}, edges.options().dtype(at::kDouble)));  // the checks
}

at::Tensor BinnedPlan::bin(const at::Tensor& x) const {
  return bin_rows(x, edges_, starts_, codes_, encoded_);
}

at::Tensor BinnedPlan::raw(const at::Tensor& x, const at::Tensor& base, bool float32_accum) const {
  return inner_->raw(bin(x), base, float32_accum);
}

at::Tensor BinnedPlan::leaves(const at::Tensor& x) const {
  return inner_->leaves(bin(x));
}

}  // namespace pyzero

TORCH_LIBRARY_FRAGMENT(pyzero, m) {
  m.def(
      "bin_rows(Tensor x, Tensor edges, Tensor starts, Tensor? codes=None, Tensor? encoded=None) -> Tensor");
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
  m.impl("bin_rows", &pyzero::bin_rows);
}
