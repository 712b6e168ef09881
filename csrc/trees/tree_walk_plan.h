// Prepared calls of pyzero::tree_walk (Note [Prepared walks]). Light includes only.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "../cuda/tree_launch.h"
#include "../local.h"
#include "tree_walk.h"

namespace pyzero {

// Note [Prepared walks]
// ~~~~~~~~~~~~~~~~~~~~~
// A call of the pyzero::tree_walk op spends about 14 us on the host before its launch (the dispatcher
// boxes 17 arguments, then every forest tensor is checked again), as long as the whole kernel at batch
// 1. A WalkPlan does the checks once: it binds the op's arguments except the rows, checked against a
// prototype `x_like` (its dtype, device and column count), and keeps the forest tensors alive. A call
// then checks only x, allocates the output and launches: the same code, the same outputs, bit for bit
// (the op itself is a plan made and called once). A staged plan (host_rows > 0) takes rows on the
// host instead, up to host_rows of them: it copies them into its pinned buffer (rows already in memory
// of that buffer's allocator, a pinned tensor of torch's, are read from directly), then to its device
// buffer, walks them, copies the outputs back the same way and waits for them, four steps on the
// current stream with no Python in between (the CUDA-graph path of a small host batch spends about 40
// us of Python and torch calls around the same copies). WalkPlans holds one plan per batch-size bucket
// (bucket_of in pyzero/trees/gpu.py), staged and direct, and answers None for any x its plans do not
// take, so that callers fall back to the op's path; CompiledForest keeps one per output kind (numpy
// rows reach it through torch.from_numpy). Plans share their buffers between calls: one thread at a
// time, as the CUDA graphs.
class PYZERO_LOCAL WalkPlan {
 public:
  // Where a call runs: the host twin (CPU tensors), the CUDA kernel's own code on the CPU (Note [Kernel
  // emulation], tests), or the CUDA kernel (CUDA tensors).
  enum class Runner { kHost, kEmulated, kCuda };

  // The op's arguments (tree_walk in tree_walk_op.cpp) with x_like [any rows, n_features] for x; flat:
  // raw outputs of one column come back as [rows] (the same memory as [rows, 1]); host_rows > 0: a
  // staged plan for up to host_rows rows on the host, walked on x_like's device.
  WalkPlan(int64_t format, const at::Tensor& nodes, const at::Tensor& roots, const at::Tensor& leaf_nodes,
           const at::Tensor& values, const at::Tensor& threshold64, const at::Tensor& cat_bits,
           const std::vector<double>& cat_domain, const at::Tensor& column_kind, int64_t depth,
           int64_t n_features, int64_t copies, const at::Tensor& x_like, const at::Tensor& base,
           bool float32_accum, bool leaves, const std::vector<int64_t>& config,
           const std::vector<double>& finish, bool emulate = false, bool flat = false, int64_t host_rows = 0);

  // Whether x is what the plan takes: x_like's dtype and columns, 2-d and contiguous, on x_like's
  // device (or, staged, on the host with at most host_rows rows).
  bool takes(const at::Tensor& x) const;
  bool staged() const { return host_rows_ > 0; }
  // The walk of x's rows; an error naming what x should be when the plan does not take it.
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  std::vector<int64_t> out_sizes(int64_t rows) const;
  at::Tensor run(const at::Tensor& x) const;
  at::Tensor run_staged(const at::Tensor& x) const;
  // The walk of `rows` rows at x (x_like's dtype, on its device) into out (float64 sums or int32 leaves).
  void walk(const void* x, int64_t rows, void* out) const;

  std::vector<at::Tensor> keep_;  // the forest tensors and base: f_ points into them
  trees::WalkForest f_{};
  cuda::WalkLaunch launch_{};
  Runner runner_ = Runner::kHost;
  at::ScalarType dtype_;
  at::Device device_;
  int64_t columns_;
  bool float32_accum_, leaves_, flat_;
  int64_t host_rows_;
  at::Tensor in_stage_, in_dev_, out_dev_, out_stage_;  // staged plans: pinned, device, device, pinned
};

// One WalkPlan per batch-size bucket (Note [Prepared walks]).
class PYZERO_LOCAL WalkPlans {
 public:
  static constexpr int kMaxBuckets = 32;
  void set(int64_t bucket, std::shared_ptr<WalkPlan> plan);
  void clear();
  // The walk of x by its bucket's plan, or nullopt when there is none or it does not take x.
  std::optional<at::Tensor> try_call(const at::Tensor& x) const;
  // The plan try_call would take for x, or nullptr.
  std::shared_ptr<WalkPlan> plan_for(const at::Tensor& x) const;

 private:
  const WalkPlan* find(const at::Tensor& x) const;
  using Table = std::array<std::shared_ptr<WalkPlan>, kMaxBuckets>;
  Table staged_, direct_;
};

// bucket_of(rows) of pyzero/trees/gpu.py: k with 4^(k-1) < rows <= 4^k, 0 for one row (or none).
int64_t batch_bucket(int64_t rows);

// Note [Fused finish] applied to sums the C++ CPU kernels computed: raw [rows, outputs] float64 on the
// CPU (summed from 0 when the finish takes a mean, else from base), finish [kind, scale, divisor, pair];
// the outputs the GPU kernel writes with that finish, [rows, 2] for a pair. Kind 3 is a softmax over
// each row's outputs (the cpu backend's own).
at::Tensor finish_sums(const at::Tensor& raw, const at::Tensor& base, const std::vector<double>& finish,
                       bool float32_accum);

}  // namespace pyzero
