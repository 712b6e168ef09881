// Prepared calls of pyzero::tree_walk (Note [Prepared walks]). Light includes only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "../cuda/tree_launch.h"
#include "tree_walk.h"

// Hidden like pybind11's own types, which bind these (within one shared library only).
#if defined(__GNUC__)
#define PYZERO_LOCAL __attribute__((visibility("hidden")))
#else
#define PYZERO_LOCAL
#endif

namespace pyzero {

// Note [Prepared walks]
// ~~~~~~~~~~~~~~~~~~~~~
// A call of the pyzero::tree_walk op spends about 14 us on the host before its launch (the dispatcher
// boxes 17 arguments, then every forest tensor is checked again), as long as the whole kernel at batch
// 1. A WalkPlan does the checks once: it binds the op's arguments except the rows, checked against a
// prototype `x_like` (its dtype, device and column count), and keeps the forest tensors alive. A call
// then checks only x, allocates the output and launches: the same code, the same outputs, bit for bit
// (the op itself is a plan made and called once). WalkPlans holds one plan per batch-size bucket
// (bucket_of in pyzero/trees/gpu.py) and answers None for any x its plans do not take, so that
// callers fall back to the op's path; CompiledForest keeps one per output kind for device rows.
class PYZERO_LOCAL WalkPlan {
 public:
  // Where a call runs: the host twin (CPU tensors), the CUDA kernel's own code on the CPU (Note [Kernel
  // emulation], tests), or the CUDA kernel (CUDA tensors).
  enum class Runner { kHost, kEmulated, kCuda };

  // The op's arguments (tree_walk in tree_walk_op.cpp) with x_like [any rows, n_features] for x; flat:
  // raw outputs of one column come back as [rows] (the same memory as [rows, 1]).
  WalkPlan(int64_t format, const at::Tensor& nodes, const at::Tensor& roots, const at::Tensor& leaf_nodes,
           const at::Tensor& values, const at::Tensor& threshold64, const at::Tensor& cat_bits,
           const std::vector<double>& cat_domain, const at::Tensor& column_kind, int64_t depth,
           int64_t n_features, const at::Tensor& x_like, const at::Tensor& base, bool float32_accum,
           bool leaves, const std::vector<int64_t>& config, const std::vector<double>& finish,
           bool emulate = false, bool flat = false);

  // Whether x is what the plan takes: x_like's dtype, device and columns, 2-d and contiguous.
  bool takes(const at::Tensor& x) const;
  // The walk of x's rows; an error naming what x should be when the plan does not take it.
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  at::Tensor run(const at::Tensor& x) const;

  std::vector<at::Tensor> keep_;  // the forest tensors and base: f_ points into them
  trees::WalkForest f_{};
  cuda::WalkLaunch launch_{};
  Runner runner_ = Runner::kHost;
  at::ScalarType dtype_;
  at::Device device_;
  int64_t columns_;
  bool float32_accum_, leaves_, flat_;
};

// One WalkPlan per batch-size bucket (Note [Prepared walks]).
class PYZERO_LOCAL WalkPlans {
 public:
  static constexpr int kMaxBuckets = 32;
  void set(int64_t bucket, std::shared_ptr<WalkPlan> plan);
  void clear();
  // The walk of x by its bucket's plan, or nullopt when there is none or it does not take x.
  std::optional<at::Tensor> try_call(const at::Tensor& x) const;

 private:
  std::shared_ptr<WalkPlan> plans_[kMaxBuckets];
};

// bucket_of(rows) of pyzero/trees/gpu.py: k with 4^(k-1) < rows <= 4^k, 0 for one row (or none).
int64_t batch_bucket(int64_t rows);

}  // namespace pyzero
