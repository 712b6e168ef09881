// pyzero::tree_walk: the GPU layouts of Note [GPU layouts] (tree_walk.h), walked by the CUDA kernel
// (csrc/cuda/tree_cuda.cu) on CUDA tensors and by its host twin on CPU tensors. Light includes only.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../cuda/tree_launch.h"
#include "tree_walk.h"
#include "tree_cpu_plan.h"
#include "tree_walk_plan.h"

#ifdef PYZERO_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../cuda/tree_cuda.h"
#endif

namespace pyzero {
namespace trees {

template <typename T>
void walk_host(const WalkForest& f, const T* x, int64_t rows, const double* base, bool float32_accum,
               double* raw, int32_t* leaves) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(static_cast<size_t>(row_slots(f)));
    std::vector<double> acc(static_cast<size_t>(f.n_outputs));
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t s = 0; s < row_slots(f); ++s) {  // Note [Row slots]
        buf[static_cast<size_t>(s)] = slot_value(f, x + r * f.n_features, s);
      }
      const T* row_ptr = buf.data();
      auto row = [row_ptr](int64_t c) { return row_ptr[c]; };
      for (int64_t o = 0; o < f.n_outputs && base != nullptr; ++o)
        acc[o] = sum_start(f, float32_accum, base[o]);
      for (int64_t t = 0; t < f.n_trees; ++t) {
        int64_t vr = 0;
        int32_t id = 0;
        if (f.format == kPerfect) {
          if constexpr (std::is_same_v<T, float>) {
            const PerfectWalker w{f};
            w.walk<1>(t, 1, row, &vr);
            id = w.leaf_id(vr);
          }
        } else if (f.format == kPerfectBlocked) {
          if constexpr (std::is_same_v<T, float>) {
            const PerfectBlockedWalker w{f};
            w.walk<1>(t, 1, row, &vr);
            id = w.leaf_id(vr);
          }
        } else if (f.format == kPerfectTiled) {
          if constexpr (std::is_same_v<T, float>) {
            const TiledWalker w{f};
            w.walk<1>(t, 1, row, &vr);
            id = w.leaf_id(vr);
          }
        } else if (f.format == kCompact) {
          CompactWalker{f}.walk<1>(t, 1, row, &vr);
          id = static_cast<int32_t>(vr);
        } else {
          WideWalker{f}.walk<1>(t, 1, row, &vr);
          id = static_cast<int32_t>(vr);
        }
        if (leaves != nullptr) {
          leaves[r * f.n_trees + t] = id;
          continue;
        }
        for (int64_t o = 0; o < f.n_outputs; ++o) {
          const double v = leaf_value(f, vr * f.n_outputs + o);
          acc[o] = float32_accum ? static_cast<double>(static_cast<float>(acc[o]) + static_cast<float>(v))
                                 : acc[o] + v;
        }
      }
      if (raw != nullptr)
        for (int64_t o = 0; o < f.n_outputs; ++o) store_output(f, float32_accum, base, raw, r, o, acc[o]);
    }
  });
}

}  // namespace trees

namespace {

void check(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == dim && t.is_contiguous(), "pyzero.tree_walk: ", what);
}

// The WalkForest of the op's arguments (pointers on x's device; cat_domain on the host).
trees::WalkForest walk_forest(int64_t format, const at::Tensor& nodes, const at::Tensor& roots,
                              const at::Tensor& leaf_nodes, const at::Tensor& values,
                              const at::Tensor& threshold64, const at::Tensor& cat_bits,
                              at::ArrayRef<double> cat_domain, const at::Tensor& column_kind, int64_t depth,
                              const at::Tensor& x, int64_t n_features, int64_t copies) {
  TORCH_CHECK((x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && x.dim() == 2 &&
                  x.is_contiguous() && x.size(1) >= n_features && n_features >= 1,
              "pyzero.tree_walk: x must be a contiguous float32 or float64 tensor of shape (rows, ",
              n_features, "), got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(
      (values.scalar_type() == at::kDouble || values.scalar_type() == at::kFloat) && values.dim() == 2 &&
          values.is_contiguous(),
      "pyzero.tree_walk: values must be a contiguous float64 (or float32) tensor of shape (value rows, "
      "outputs)");
  TORCH_CHECK(values.size(1) >= 1, "pyzero.tree_walk: values needs at least one output column");
  TORCH_CHECK(values.numel() < (int64_t{1} << 31), "pyzero.tree_walk: forest too large for 32-bit indices");
  TORCH_CHECK(cat_domain.size() == 3, "pyzero.tree_walk: cat_domain must hold (lo, hi, invalid)");
  for (const at::Tensor* t : {&nodes, &roots, &leaf_nodes, &values, &threshold64, &cat_bits, &column_kind}) {
    TORCH_CHECK(t->numel() == 0 || t->device() == x.device(),
                "pyzero.tree_walk: the forest's tensors must be on ", x.device(), " with x, got one on ",
                t->device());
  }
  trees::WalkForest f{};
  f.format = static_cast<int32_t>(format);
  if (values.scalar_type() == at::kFloat) {
    f.values32 = values.data_ptr<float>();
  } else {
    f.values = values.data_ptr<double>();
  }
  f.n_outputs = values.size(1);
  f.n_features = x.size(1);
  f.cat_lo = cat_domain[0];
  f.cat_hi = cat_domain[1];
  f.cat_invalid = static_cast<int32_t>(cat_domain[2]);
  TORCH_CHECK(column_kind.numel() == 0 || (column_kind.scalar_type() == at::kChar && column_kind.dim() == 1 &&
                                           column_kind.size(0) == x.size(1) && column_kind.is_contiguous()),
              "pyzero.tree_walk: column_kind must be empty or an int8 vector with one entry per feature");
  f.column_kind = column_kind.numel() ? column_kind.data_ptr<int8_t>() : nullptr;
  TORCH_CHECK(
      copies == 1 || (copies >= 1 && copies <= 3 && trees::is_perfect_format(static_cast<int32_t>(format))),
      "pyzero.tree_walk: copies must be 1, or 1 to 3 for a perfect layout (Note [Row slots]), got ", copies);
  TORCH_CHECK(copies == 1 || x.size(1) == n_features, "pyzero.tree_walk: a layout of ", copies,
              " row copies takes x with exactly its ", n_features, " features, got ", x.size(1));
  TORCH_CHECK(copies * x.size(1) < (int64_t{1} << 24), "pyzero.tree_walk: too many features: ", x.size(1));
  f.copies = static_cast<int32_t>(copies);
  if (format == trees::kPerfectTiled) {
    check(nodes, at::kInt, 4,
          "tiled perfect layout: nodes must be a contiguous int32 tensor [tiles, 2^depth, 32, 2]");
    TORCH_CHECK(depth >= 0 && depth <= 24, "pyzero.tree_walk: perfect layout: depth must be in [0, 24], got ",
                depth);
    TORCH_CHECK(nodes.size(1) == (int64_t{1} << depth) && nodes.size(2) == trees::kTiledTrees &&
                    nodes.size(3) == 2 && reinterpret_cast<uintptr_t>(nodes.data_ptr()) % 16 == 0,
                "pyzero.tree_walk: tiled perfect layout: nodes must be [tiles, 2^depth, 32, 2], 16-byte "
                "aligned, got ",
                nodes.sizes());
    check(leaf_nodes, at::kInt, 1, "perfect layout: leaf_nodes must be a contiguous int32 vector");
    const int64_t n_trees = leaf_nodes.numel() >> depth;
    TORCH_CHECK((n_trees << depth) == leaf_nodes.numel() &&
                    (n_trees + trees::kTiledTrees - 1) / trees::kTiledTrees == nodes.size(0) &&
                    values.size(0) == (nodes.size(0) * trees::kTiledTrees << depth) && values.size(1) == 1,
                "pyzero.tree_walk: tiled perfect layout: leaf_nodes needs trees * 2^depth entries, nodes "
                "one tile per 32 trees, values [tiles * 32 * 2^depth, 1]");
    TORCH_CHECK(x.scalar_type() == at::kFloat,
                "pyzero.tree_walk: the perfect layout compares float32 inputs");
    f.nodes = reinterpret_cast<const uint32_t*>(nodes.data_ptr<int32_t>());
    f.leaf_nodes = leaf_nodes.data_ptr<int32_t>();
    f.n_trees = n_trees;
    f.node_stride = int64_t{1} << depth;
    f.depth = static_cast<int32_t>(depth);
    return f;
  }
  if (trees::is_chunkable_format(static_cast<int32_t>(format))) {
    check(nodes, at::kInt, 3, "perfect layout: nodes must be a contiguous int32 tensor [trees, stride, 2]");
    TORCH_CHECK(nodes.size(2) == 2,
                "pyzero.tree_walk: perfect layout: nodes must hold (meta, threshold) pairs");
    TORCH_CHECK(depth >= 0 && depth <= 24, "pyzero.tree_walk: perfect layout: depth must be in [0, 24], got ",
                depth);
    const int64_t slots =
        format == trees::kPerfect ? int64_t{1} << depth : trees::blocked_slots(static_cast<int32_t>(depth));
    TORCH_CHECK(nodes.size(1) >= slots, "pyzero.tree_walk: perfect layout: depth ", depth, " needs ", slots,
                " node slots per tree, nodes has ", nodes.size(1));
    TORCH_CHECK(nodes.size(0) * nodes.size(1) < (int64_t{1} << 31),
                "pyzero.tree_walk: perfect layout: forest too large for 32-bit node slots");
    TORCH_CHECK(
        format == trees::kPerfect ||
            (reinterpret_cast<uintptr_t>(nodes.data_ptr()) % 16 == 0 && nodes.size(1) % 2 == 0),
        "pyzero.tree_walk: blocked perfect layout: nodes must start 16-byte aligned with an even stride "
        "(16-byte loads)");
    check(leaf_nodes, at::kInt, 1, "perfect layout: leaf_nodes must be a contiguous int32 vector");
    TORCH_CHECK(leaf_nodes.numel() == (nodes.size(0) << depth) && values.size(0) == leaf_nodes.numel(),
                "pyzero.tree_walk: perfect layout: leaf_nodes and values need trees * 2^depth rows");
    TORCH_CHECK(x.scalar_type() == at::kFloat,
                "pyzero.tree_walk: the perfect layout compares float32 inputs");
    f.nodes = reinterpret_cast<const uint32_t*>(nodes.data_ptr<int32_t>());
    f.leaf_nodes = leaf_nodes.data_ptr<int32_t>();
    f.n_trees = nodes.size(0);
    f.node_stride = nodes.size(1);
    f.depth = static_cast<int32_t>(depth);
    return f;
  }
  TORCH_CHECK(format == trees::kCompact || format == trees::kWide,
              "pyzero.tree_walk: format must be 0 (perfect), 1 (compact), 2 (wide), 3 (perfect blocked) or 4 "
              "(perfect tiled), got ",
              format);
  check(nodes, at::kInt, 2, "nodes must be a contiguous int32 tensor [n, 2] (compact) or [n, 4] (wide)");
  TORCH_CHECK(nodes.size(1) == (format == trees::kCompact ? 2 : 4),
              "pyzero.tree_walk: nodes must have 2 columns (compact) or 4 (wide), got ", nodes.size(1));
  check(roots, at::kInt, 1, "roots must be a contiguous int32 vector");
  TORCH_CHECK(nodes.size(0) < (int64_t{1} << 31),
              "pyzero.tree_walk: forest too large for 32-bit node positions");
  TORCH_CHECK(threshold64.scalar_type() == at::kDouble && threshold64.dim() == 1 &&
                  threshold64.size(0) == nodes.size(0) && threshold64.is_contiguous(),
              "pyzero.tree_walk: threshold64 must be a contiguous float64 vector with one value per node");
  check(cat_bits, at::kInt, 2, "cat_bits must be a contiguous int32 tensor (sets, words)");
  TORCH_CHECK(cat_bits.size(1) >= 1, "pyzero.tree_walk: cat_bits needs at least one word per set");
  f.nodes = reinterpret_cast<const uint32_t*>(nodes.data_ptr<int32_t>());
  f.roots = roots.data_ptr<int32_t>();
  f.threshold64 = threshold64.data_ptr<double>();
  f.cat_bits = reinterpret_cast<const uint32_t*>(cat_bits.data_ptr<int32_t>());
  f.cat_words = cat_bits.size(1);
  f.n_trees = roots.size(0);
  return f;
}

// Rows a thread finishes at least (finish_sums): expf or exp of a row takes tens of nanoseconds.
constexpr int64_t kFinishGrain = 16384;
// finish_sums' own kind beyond trees::FinishKind (no kernel applies it): a row's softmax.
constexpr double kFinishSoftmax = 3;

// Note [Fused finish] from the op's `finish`: empty (raw sums) or [kind, scale, divisor, pair].
trees::Finish finish_of(at::ArrayRef<double> finish, const trees::WalkForest& f, bool leaves) {
  trees::Finish fin;
  if (finish.empty()) return fin;
  TORCH_CHECK(finish.size() == 4, "pyzero.tree_walk: finish must be [] or [kind, scale, divisor, pair], got ",
              finish.size(), " values");
  TORCH_CHECK(!leaves, "pyzero.tree_walk: finish applies to sums, not to leaves");
  const double kind = finish[0];
  TORCH_CHECK(kind == 0 || kind == 1 || kind == 2,
              "pyzero.tree_walk: finish kind must be 0 (raw), 1 (sigmoid) or 2 (exp), got ", kind);
  TORCH_CHECK(finish[2] >= 0, "pyzero.tree_walk: finish divisor must be >= 0 (0: a sum), got ", finish[2]);
  TORCH_CHECK(finish[3] == 0 || f.n_outputs == 1,
              "pyzero.tree_walk: finish pair needs one output, the forest has ", f.n_outputs);
  fin.kind = static_cast<int32_t>(finish[0]);
  fin.scale = finish[1];
  fin.divisor = finish[2];
  fin.pair = finish[3] != 0;
  return fin;
}

// The kernel configuration [threads, lanes, ilp, stage rows, tree chunk, tiled] (Note [GPU tree kernel],
// Note [Tiled walk]; the last two may be left out: 0).
cuda::WalkLaunch walk_launch(at::IntArrayRef config) {
  TORCH_CHECK(config.size() >= 4 && config.size() <= 6,
              "pyzero.tree_walk: config must be [threads, lanes, ilp, stage, tree_chunk, tiled], got ",
              config.size(), " values");
  return cuda::WalkLaunch{static_cast<int>(config[0]),
                          static_cast<int>(config[1]),
                          static_cast<int>(config[2]),
                          config[3] != 0,
                          config.size() >= 5 ? static_cast<int>(config[4]) : 0,
                          config.size() == 6 && config[5] != 0};
}

std::string describe(const cuda::WalkLaunch& cfg) {
  return "config threads=" + std::to_string(cfg.threads) + " lanes=" + std::to_string(cfg.lanes) +
         " ilp=" + std::to_string(cfg.ilp) + " tree_chunk=" + std::to_string(cfg.tree_chunk) +
         " tiled=" + std::to_string(cfg.tiled);
}

WalkPlan::Runner runner_for(const at::Tensor& x_like, bool emulate) {
  if (x_like.is_cuda()) {
#ifdef PYZERO_WITH_CUDA
    TORCH_CHECK(!emulate, "pyzero.tree_walk_emulated: the emulated kernel takes CPU tensors");
    return WalkPlan::Runner::kCuda;
#else
    TORCH_CHECK(false, "pyzero.tree_walk: pyzero._C was built without CUDA");
#endif
  }
  TORCH_CHECK(x_like.device().is_cpu(), "pyzero.tree_walk: x must be a CPU or CUDA tensor, got one on ",
              x_like.device());
  return emulate ? WalkPlan::Runner::kEmulated : WalkPlan::Runner::kHost;
}

}  // namespace

WalkPlan::WalkPlan(int64_t format, const at::Tensor& nodes, const at::Tensor& roots,
                   const at::Tensor& leaf_nodes, const at::Tensor& values, const at::Tensor& threshold64,
                   const at::Tensor& cat_bits, const std::vector<double>& cat_domain,
                   const at::Tensor& column_kind, int64_t depth, int64_t n_features, int64_t copies,
                   const at::Tensor& x_like, const at::Tensor& base, bool float32_accum, bool leaves,
                   const std::vector<int64_t>& config, const std::vector<double>& finish, bool emulate,
                   bool flat, int64_t host_rows)
    : keep_{nodes, roots, leaf_nodes, values, threshold64, cat_bits, column_kind, base},
      runner_(runner_for(x_like, emulate)),
      dtype_(x_like.scalar_type()),
      device_(x_like.device()),
      columns_(x_like.dim() == 2 ? x_like.size(1) : 0),
      float32_accum_(float32_accum),
      leaves_(leaves),
      flat_(flat),
      host_rows_(host_rows) {
  f_ = walk_forest(format, nodes, roots, leaf_nodes, values, threshold64, cat_bits, cat_domain, column_kind,
                   depth, x_like, n_features, copies);
  f_.finish = finish_of(finish, f_, leaves);
  TORCH_CHECK(f_.values32 == nullptr || leaves || float32_accum,
              "pyzero.tree_walk: float32 values need float32_accum (the sums round to float32)");
  if (!leaves) {
    TORCH_CHECK(base.scalar_type() == at::kDouble && base.numel() == f_.n_outputs && base.is_contiguous() &&
                    base.device() == device_,
                "pyzero.tree_walk: base must hold one float64 per output, on x's device");
  }
  TORCH_CHECK(!flat || (!leaves && f_.n_outputs == 1 && !f_.finish.pair),
              "pyzero.tree_walk: flat outputs need sums of one column");
  if (runner_ != Runner::kHost) launch_ = walk_launch(config);  // the host twin walks row by row
  TORCH_CHECK(host_rows >= 0, "pyzero.tree_walk: host_rows must be >= 0, got ", host_rows);
  if (host_rows > 0) {  // the staging buffers of host rows
    const auto on_device = x_like.options().dtype(leaves ? at::kInt : at::kDouble);
    const bool pinned = runner_ == Runner::kCuda;
    in_stage_ = at::empty({host_rows, columns_}, x_like.options().device(at::kCPU).pinned_memory(pinned));
    in_dev_ = at::empty({host_rows, columns_}, x_like.options());
    out_dev_ = at::empty(out_sizes(host_rows), on_device);
    out_stage_ = at::empty(out_sizes(host_rows), on_device.device(at::kCPU).pinned_memory(pinned));
  }
}

bool WalkPlan::takes(const at::Tensor& x) const {
  const bool where = host_rows_ > 0 ? x.device().is_cpu() && x.size(0) <= host_rows_ : x.device() == device_;
  return x.defined() && x.scalar_type() == dtype_ && x.dim() == 2 && x.size(1) == columns_ &&
         x.is_contiguous() && where;
}

at::Tensor WalkPlan::operator()(const at::Tensor& x) const {
  TORCH_CHECK(
      takes(x), "pyzero.tree_walk: this prepared walk takes x as a contiguous ", dtype_,
      " tensor of shape (rows, ", columns_, ")",
      host_rows_ > 0 ? c10::str(" on the host, at most ", host_rows_, " rows") : c10::str(" on ", device_),
      ", got ",
      x.defined() ? c10::str("a ", x.scalar_type(), " tensor of shape ", x.sizes(), " on ", x.device(),
                             x.is_contiguous() ? "" : " (not contiguous)")
                  : std::string("an undefined tensor"));
  return host_rows_ > 0 ? run_staged(x) : run(x);
}

std::vector<int64_t> WalkPlan::out_sizes(int64_t rows) const {
  if (leaves_) return {rows, f_.n_trees};
  if (flat_) return {rows};
  return {rows, f_.finish.pair ? 2 : f_.n_outputs};
}

at::Tensor WalkPlan::run(const at::Tensor& x) const {
  at::Tensor out = at::empty(out_sizes(x.size(0)), x.options().dtype(leaves_ ? at::kInt : at::kDouble));
  walk(x.data_ptr(), x.size(0), out.data_ptr());
  return out;
}

at::Tensor WalkPlan::run_staged(const at::Tensor& x) const {
  const int64_t rows = x.size(0);
  const auto in_bytes = static_cast<size_t>(x.nbytes());
  at::Tensor out = at::empty(out_sizes(rows), x.options().dtype(leaves_ ? at::kInt : at::kDouble));
  const auto out_bytes = static_cast<size_t>(out.nbytes());
  // rows from the staging buffer's own allocator (pinned on a GPU) are copied from directly, others
  // (pageable) into the staging buffer first
  const void* src = in_stage_.data_ptr();
  if (x.storage().allocator() == in_stage_.storage().allocator()) {
    src = x.data_ptr();
  } else {
    std::memcpy(in_stage_.data_ptr(), x.data_ptr(), in_bytes);
  }
  if (runner_ == Runner::kCuda) {
#ifdef PYZERO_WITH_CUDA
    const c10::cuda::CUDAGuard guard(device_);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device_.index()).stream();
    C10_CUDA_CHECK(cudaMemcpyAsync(in_dev_.data_ptr(), src, in_bytes, cudaMemcpyHostToDevice, stream));
    walk(in_dev_.data_ptr(), rows, out_dev_.data_ptr());
    C10_CUDA_CHECK(cudaMemcpyAsync(out_stage_.data_ptr(), out_dev_.data_ptr(), out_bytes,
                                   cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
#endif
  } else {  // CPU plans (tests): the same steps, the copies on the host
    std::memcpy(in_dev_.data_ptr(), src, in_bytes);
    walk(in_dev_.data_ptr(), rows, out_dev_.data_ptr());
    std::memcpy(out_stage_.data_ptr(), out_dev_.data_ptr(), out_bytes);
  }
  std::memcpy(out.data_ptr(), out_stage_.data_ptr(), out_bytes);
  return out;
}

void WalkPlan::walk(const void* x, int64_t rows, void* out) const {
#ifdef PYZERO_WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
  if (runner_ == Runner::kCuda) guard.emplace(device_);
#endif
  double* raw = leaves_ ? nullptr : static_cast<double*>(out);
  int32_t* leaf_ids = leaves_ ? static_cast<int32_t*>(out) : nullptr;
  const double* base = leaves_ ? nullptr : keep_.back().data_ptr<double>();
  auto go = [&](const auto* xp) {
    if (runner_ == Runner::kHost) {
      trees::walk_host(f_, xp, rows, base, float32_accum_, raw, leaf_ids);
    } else if (runner_ == Runner::kEmulated) {
      const bool ok = cuda::tree_walk_emulated(f_, xp, rows, base, float32_accum_, raw, leaf_ids, launch_);
      TORCH_CHECK(ok, "pyzero.tree_walk_emulated: the kernel refuses this configuration (", describe(launch_),
                  ")");
    } else {
#ifdef PYZERO_WITH_CUDA
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device_.index()).stream();
      const cudaError_t err =
          cuda::tree_walk(f_, xp, rows, base, float32_accum_, raw, leaf_ids, launch_, stream);
      TORCH_CHECK(err == cudaSuccess, "pyzero.tree_walk (CUDA): ", cudaGetErrorString(err), " (",
                  describe(launch_), ")");
#endif
    }
  };
  if (dtype_ == at::kDouble) {
    go(static_cast<const double*>(x));
  } else {
    go(static_cast<const float*>(x));
  }
}

int64_t batch_bucket(int64_t rows) {
  if (rows <= 1) return 0;
  int64_t bits = 0;  // bit length of rows - 1
  for (uint64_t v = static_cast<uint64_t>(rows - 1); v != 0; v >>= 1) ++bits;
  return (bits + 1) / 2;
}

void WalkPlans::set(int64_t bucket, std::shared_ptr<WalkPlan> plan) {
  TORCH_CHECK(bucket >= 0 && bucket < kMaxBuckets, "pyzero.WalkPlans.set: bucket must be in [0, ",
              kMaxBuckets, "), got ", bucket);
  TORCH_CHECK(plan != nullptr, "pyzero.WalkPlans.set: plan must be a WalkPlan, got None");
  (plan->staged() ? staged_ : direct_)[bucket] = std::move(plan);
}

void WalkPlans::clear() {
  for (auto* plans : {&staged_, &direct_})
    for (auto& p : *plans) p.reset();
}

std::optional<at::Tensor> WalkPlans::try_call(const at::Tensor& x) const {
  const WalkPlan* plan = find(x);
  if (plan == nullptr) return std::nullopt;
  return (*plan)(x);
}

std::shared_ptr<WalkPlan> WalkPlans::plan_for(const at::Tensor& x) const {
  const WalkPlan* plan = find(x);
  if (plan == nullptr) return nullptr;
  const int64_t bucket = batch_bucket(x.size(0));
  return plan->staged() ? staged_[bucket] : direct_[bucket];
}

const WalkPlan* WalkPlans::find(const at::Tensor& x) const {
  if (!x.defined() || x.dim() != 2 || x.size(0) < 1) return nullptr;
  const int64_t bucket = batch_bucket(x.size(0));
  if (bucket >= kMaxBuckets) return nullptr;
  for (const auto* plans : {&staged_, &direct_}) {  // host rows: the staged plan first
    const WalkPlan* plan = (*plans)[bucket].get();
    if (plan != nullptr && plan->takes(x)) return plan;
  }
  return nullptr;
}

at::Tensor finish_sums(const at::Tensor& raw, const at::Tensor& base, const std::vector<double>& finish,
                       bool float32_accum) {
  TORCH_CHECK(raw.scalar_type() == at::kDouble && raw.dim() == 2 && raw.is_contiguous() &&
                  (raw.is_cpu() || raw.is_cuda()),
              "pyzero.trees: raw must be a contiguous float64 CPU or CUDA tensor of shape (rows, outputs)");
  const bool softmax = finish.size() == 4 && finish[0] == kFinishSoftmax;
  TORCH_CHECK(!softmax || (finish[1] == 1 && finish[2] >= 0 && finish[3] == 0),
              "pyzero.trees: softmax takes scale 1, a divisor >= 0 and no pair");
  trees::WalkForest f{};
  f.n_outputs = raw.size(1);
  if (!softmax) f.finish = finish_of(finish, f, false);
  if (softmax) f.finish.divisor = finish[2];  // the mean first (softmax_sums)
  TORCH_CHECK(base.scalar_type() == at::kDouble && base.is_contiguous() && base.device() == raw.device() &&
                  base.numel() == f.n_outputs,
              "pyzero.trees: base must hold one float64 per output, on raw's device");
  at::Tensor out = at::empty({raw.size(0), f.finish.pair ? 2 : f.n_outputs}, raw.options());
  const double* s = raw.data_ptr<double>();
  const double* b = base.data_ptr<double>();
  double* o = out.data_ptr<double>();
  const int64_t outs = f.n_outputs;
  if (raw.is_cuda()) {
#ifdef PYZERO_WITH_CUDA
    const c10::cuda::CUDAGuard guard(raw.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(raw.device().index()).stream();
    const cudaError_t err = cuda::finish_rows(f, softmax, float32_accum, s, raw.size(0), b, o, stream);
    TORCH_CHECK(err == cudaSuccess, "pyzero.trees.finish_sums (CUDA): ", cudaGetErrorString(err));
#else
    TORCH_CHECK(false, "pyzero.trees: pyzero._C was built without CUDA");
#endif
    return out;
  }
  at::parallel_for(0, raw.size(0), kFinishGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (softmax) {
        trees::softmax_sums(s + r * outs, b, f.finish.divisor, outs, float32_accum, o + r * outs);
        continue;
      }
      for (int64_t k = 0; k < outs; ++k) trees::store_output(f, float32_accum, b, o, r, k, s[r * outs + k]);
    }
  });
  return out;
}

CpuPredictPlan::CpuPredictPlan(std::shared_ptr<const CpuKernelPlan> kernel, const at::Tensor& base,
                               bool float32_accum, const std::vector<double>& finish, bool flat,
                               int64_t max_rows)
    : kernel_(std::move(kernel)),
      base_(base),
      float32_accum_(float32_accum),
      flat_(flat),
      finish_(finish),
      max_rows_(max_rows) {
  TORCH_CHECK(kernel_ != nullptr, "pyzero.trees: a predict plan needs a kernel plan");
  TORCH_CHECK(base.scalar_type() == at::kDouble && base.dim() == 1 && base.is_contiguous() && base.is_cpu(),
              "pyzero.trees: base must be a contiguous float64 CPU vector");
  TORCH_CHECK(finish.empty() || finish.size() == 4,
              "pyzero.trees: finish must be [] or [kind, scale, divisor, pair]");
  const bool mean = !finish.empty() && finish[2] > 0;
  sum_base_ = mean ? at::zeros_like(base) : base;
  TORCH_CHECK(!flat || (base.numel() == 1 && (finish.empty() || finish[3] == 0)),
              "pyzero.trees: flat outputs need one output and no pair");
}

std::optional<at::Tensor> CpuPredictPlan::operator()(const at::Tensor& x) const {
  if (!x.is_cpu() || x.scalar_type() != kernel_->input_dtype() || x.dim() != 2 || !x.is_contiguous() ||
      x.size(1) != kernel_->n_features() || x.size(0) < 1 || x.size(0) >= max_rows_) {
    return std::nullopt;
  }
  at::Tensor out = kernel_->raw(x, sum_base_, float32_accum_);
  if (!finish_.empty()) out = finish_sums(out, base_, finish_, float32_accum_);
  return flat_ ? out.view({x.size(0)}) : out;
}

namespace {

template <bool kEmulate>
at::Tensor tree_walk_impl(int64_t format, const at::Tensor& nodes, const at::Tensor& roots,
                          const at::Tensor& leaf_nodes, const at::Tensor& values,
                          const at::Tensor& threshold64, const at::Tensor& cat_bits,
                          at::ArrayRef<double> cat_domain, const at::Tensor& column_kind, int64_t depth,
                          int64_t n_features, int64_t copies, const at::Tensor& x, const at::Tensor& base,
                          bool float32_accum, bool leaves, at::IntArrayRef config,
                          at::ArrayRef<double> finish) {
  const WalkPlan plan(format, nodes, roots, leaf_nodes, values, threshold64, cat_bits, cat_domain.vec(),
                      column_kind, depth, n_features, copies, x, base, float32_accum, leaves, config.vec(),
                      finish.vec(), kEmulate, false, 0);
  return plan(x);
}

// Elements a CPU thread takes at least (libm_exp).
constexpr int64_t kLibmExpGrain = 1 << 16;

// Note [Library exp]: glibc's exp of each element of x (expf for float32) by libm_exp.h's code, the host
// build for CPU tensors and the device build for CUDA tensors, so tests can hold each to the other and
// the host build to libm itself.
at::Tensor libm_exp_impl(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "pyzero.libm_exp: x must be float32 or float64, got ", x.scalar_type());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t n = xc.numel();
  const bool f32 = xc.scalar_type() == at::kFloat;
  if (xc.is_cuda()) {
#ifdef PYZERO_WITH_CUDA
    const c10::cuda::CUDAGuard guard(xc.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(xc.device().index()).stream();
    const cudaError_t err = f32 ? cuda::libm_exp(xc.data_ptr<float>(), y.data_ptr<float>(), n, stream)
                                : cuda::libm_exp(xc.data_ptr<double>(), y.data_ptr<double>(), n, stream);
    TORCH_CHECK(err == cudaSuccess, "pyzero.libm_exp (CUDA): ", cudaGetErrorString(err));
#endif
    return y;
  }
  at::parallel_for(0, n, kLibmExpGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      if (f32) {
        y.data_ptr<float>()[i] = libm::libm_expf(xc.data_ptr<float>()[i]);
      } else {
        y.data_ptr<double>()[i] = libm::libm_exp(xc.data_ptr<double>()[i]);
      }
    }
  });
  return y;
}

// LightGBM's cross_entropy_lambda output, log1p(exp(x)) of each element of float64 CPU x with the host's
// libm, as LightGBM computes it (Note [Host finishes] in pyzero/trees/compiled.py: no device repeats
// glibc's log1p).
at::Tensor libm_softplus_impl(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kDouble && x.is_cpu(),
              "pyzero.libm_softplus: x must be a float64 CPU tensor, got ", x.scalar_type(), " on ",
              x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const double* in = xc.data_ptr<double>();
  double* out = y.data_ptr<double>();
  at::parallel_for(0, xc.numel(), kLibmExpGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = std::log1p(std::exp(in[i]));
  });
  return y;
}

}  // namespace
}  // namespace pyzero

TORCH_LIBRARY_FRAGMENT(pyzero, m) {
  m.def("libm_exp(Tensor x) -> Tensor");
  m.def("libm_softplus(Tensor x) -> Tensor");
  m.def(
      "tree_walk(int format, Tensor nodes, Tensor roots, Tensor leaf_nodes, Tensor values, "
      "Tensor threshold64, Tensor cat_bits, float[] cat_domain, Tensor column_kind, int depth, int "
      "n_features, int copies, "
      "Tensor x, Tensor base, bool float32_accum, bool leaves, int[] config, float[] finish) -> Tensor");
  m.def(
      "tree_walk_emulated(int format, Tensor nodes, Tensor roots, Tensor leaf_nodes, Tensor values, "
      "Tensor threshold64, Tensor cat_bits, float[] cat_domain, Tensor column_kind, int depth, int "
      "n_features, int copies, Tensor x, Tensor base, bool float32_accum, bool leaves, int[] config, float[] "
      "finish) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(pyzero, CPU, m) {
  m.impl("tree_walk", &pyzero::tree_walk_impl<false>);
  m.impl("tree_walk_emulated", &pyzero::tree_walk_impl<true>);
  m.impl("libm_exp", &pyzero::libm_exp_impl);
  m.impl("libm_softplus", &pyzero::libm_softplus_impl);
}

#ifdef PYZERO_WITH_CUDA
TORCH_LIBRARY_IMPL(pyzero, CUDA, m) {
  m.impl("tree_walk", &pyzero::tree_walk_impl<false>);
  m.impl("libm_exp", &pyzero::libm_exp_impl);
}
#endif
