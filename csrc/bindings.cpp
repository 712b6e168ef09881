// The one translation unit that includes torch/extension.h: pybind11 module pyzero._C and the
// torch.library registrations of the `pyzero::` ops (CPU and, when built, CUDA kernels).
#include <torch/extension.h>

#include <vector>

#include "adam.h"
#include "cpu/adam_cpu.h"
#include "trees/libm_exp.h"
#include "trees/tree_cpu.h"
#include "trees/tree_cpu_plan.h"
#include "trees/tree_walk_plan.h"

#ifdef PYZERO_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/adam_cuda.h"
#endif

#ifndef PYZERO_CUDA_ARCHS
#define PYZERO_CUDA_ARCHS ""
#endif

namespace pyzero {
namespace {

DType to_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      TORCH_CHECK(false, "pyzero.fused_adamw: ", what, " must be float32, bfloat16 or float16, got ", t);
  }
}

void check_tensor(const at::Tensor& t, const char* what, size_t i, const at::Device& device, int64_t numel) {
  TORCH_CHECK(t.device() == device, "pyzero.fused_adamw: ", what, "[", i, "] is on ", t.device(),
              " but params[0] is on ", device);
  TORCH_CHECK(t.is_contiguous(), "pyzero.fused_adamw: ", what, "[", i, "] must be contiguous");
  TORCH_CHECK(t.numel() == numel, "pyzero.fused_adamw: ", what, "[", i, "] has ", t.numel(),
              " elements but params[", i, "] has ", numel);
}

// Validates the op's arguments (sizes, dtypes, devices, contiguity) and packs raw pointers.
std::vector<AdamTensor> pack(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList params_out, at::TensorList steps) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "pyzero.fused_adamw: params, grads, exp_avgs, exp_avg_sqs and state_steps must have equal "
              "lengths");
  TORCH_CHECK(params_out.empty() || params_out.size() == n,
              "pyzero.fused_adamw: params_out must be empty or as long as params");
  std::vector<AdamTensor> out(n);
  if (n == 0) return out;
  const at::Device device = params[0].device();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.scalar_type() == at::kFloat, "pyzero.fused_adamw: params[", i, "] must be float32, got ",
                p.scalar_type());
    check_tensor(p, "params", i, device, p.numel());
    check_tensor(grads[i], "grads", i, device, p.numel());
    check_tensor(exp_avgs[i], "exp_avgs", i, device, p.numel());
    check_tensor(exp_avg_sqs[i], "exp_avg_sqs", i, device, p.numel());
    TORCH_CHECK(exp_avgs[i].scalar_type() == at::kFloat && exp_avg_sqs[i].scalar_type() == at::kFloat,
                "pyzero.fused_adamw: exp_avgs[", i, "] and exp_avg_sqs[", i, "] must be float32");
    TORCH_CHECK(steps[i].scalar_type() == at::kFloat && steps[i].numel() == 1 && steps[i].device() == device,
                "pyzero.fused_adamw: state_steps[", i, "] must be a one-element float32 tensor on ", device);
    AdamTensor& t = out[i];
    t.param = p.data_ptr<float>();
    t.grad = grads[i].const_data_ptr();
    t.grad_dtype = to_dtype(grads[i].scalar_type(), "grads");
    t.exp_avg = exp_avgs[i].data_ptr<float>();
    t.exp_avg_sq = exp_avg_sqs[i].data_ptr<float>();
    t.n = p.numel();
    if (params_out.empty()) {
      t.param_out = nullptr;
      t.out_dtype = DType::kNone;
    } else {
      check_tensor(params_out[i], "params_out", i, device, p.numel());
      t.param_out = params_out[i].data_ptr();
      t.out_dtype = to_dtype(params_out[i].scalar_type(), "params_out");
    }
  }
  return out;
}

const float* scalar_ptr(const std::optional<at::Tensor>& t, const char* what, const at::Device& device) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == 1, "pyzero.fused_adamw: ", what,
              " must be a one-element float32 tensor");
  TORCH_CHECK(t->device() == device, "pyzero.fused_adamw: ", what, " is on ", t->device(),
              " but params are on ", device);
  return t->const_data_ptr<float>();
}

AdamHyper hyper(double lr, double beta1, double beta2, double eps, double weight_decay, bool adamw_mode,
                bool maximize) {
  return AdamHyper{lr, beta1, beta2, eps, weight_decay, adamw_mode, maximize};
}

void fused_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList params_out, at::TensorList state_steps,
                     double lr, double beta1, double beta2, double eps, double weight_decay, bool adamw_mode,
                     bool maximize, const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  std::vector<AdamTensor> tensors = pack(params, grads, exp_avgs, exp_avg_sqs, params_out, state_steps);
  if (tensors.empty()) return;
  const at::Device device = params[0].device();
  const float* fi = scalar_ptr(found_inf, "found_inf", device);
  const float* gs = scalar_ptr(grad_scale, "grad_scale", device);
  if (fi != nullptr && *fi != 0.0f) return;
  const AdamHyper h = hyper(lr, beta1, beta2, eps, weight_decay, adamw_mode, maximize);
  const float scale = gs != nullptr ? *gs : 1.0f;
  std::vector<AdamScalars> scalars(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    float* step = state_steps[i].data_ptr<float>();
    *step += 1.0f;
    scalars[i] = make_adam_scalars(h, static_cast<double>(*step), scale);
  }
  cpu::fused_adamw(tensors.data(), scalars.data(), static_cast<int64_t>(tensors.size()),
                   at::get_num_threads());
}

#ifdef PYZERO_WITH_CUDA
void fused_adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList params_out, at::TensorList state_steps,
                      double lr, double beta1, double beta2, double eps, double weight_decay, bool adamw_mode,
                      bool maximize, const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf) {
  std::vector<AdamTensor> tensors = pack(params, grads, exp_avgs, exp_avg_sqs, params_out, state_steps);
  if (tensors.empty()) return;
  const at::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  std::vector<cuda::AdamTensorCuda> list(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) list[i] = {tensors[i], state_steps[i].data_ptr<float>()};
  const cudaError_t err = cuda::fused_adamw(list.data(), static_cast<int64_t>(list.size()),
                                            hyper(lr, beta1, beta2, eps, weight_decay, adamw_mode, maximize),
                                            scalar_ptr(grad_scale, "grad_scale", device),
                                            scalar_ptr(found_inf, "found_inf", device),
                                            c10::cuda::getCurrentCUDAStream(device.index()).stream());
  TORCH_CHECK(err == cudaSuccess, "pyzero.fused_adamw (CUDA): ", cudaGetErrorString(err));
}
#endif

trees::ForestView forest_view(const at::Tensor& nodes, const at::Tensor& values, const at::Tensor& roots,
                              const at::Tensor& depths, const at::Tensor& threshold64,
                              const at::Tensor& cat_bits, const at::Tensor& cat_domain) {
  TORCH_CHECK(
      nodes.scalar_type() == at::kInt && nodes.dim() == 2 && nodes.size(1) == 4 && nodes.is_contiguous(),
      "pyzero.trees: nodes must be a contiguous int32 tensor of shape (n, 4)");
  TORCH_CHECK(roots.scalar_type() == at::kInt && roots.dim() == 1 && roots.is_contiguous(),
              "pyzero.trees: roots must be a contiguous int32 vector");
  TORCH_CHECK(depths.scalar_type() == at::kInt && depths.sizes() == roots.sizes() && depths.is_contiguous(),
              "pyzero.trees: depths must be a contiguous int32 vector as long as roots");
  TORCH_CHECK(values.scalar_type() == at::kDouble && values.dim() == 2 && values.size(0) == nodes.size(0) &&
                  values.is_contiguous(),
              "pyzero.trees: values must be a contiguous float64 tensor of shape (nodes, outputs)");
  TORCH_CHECK(threshold64.scalar_type() == at::kDouble && threshold64.dim() == 1 &&
                  threshold64.size(0) == nodes.size(0) && threshold64.is_contiguous(),
              "pyzero.trees: threshold64 must be a contiguous float64 vector with one value per node");
  TORCH_CHECK(cat_bits.scalar_type() == at::kInt && cat_bits.dim() == 2 && cat_bits.size(1) >= 1 &&
                  cat_bits.is_contiguous(),
              "pyzero.trees: cat_bits must be a contiguous int32 tensor of shape (sets, words >= 1)");
  TORCH_CHECK(
      cat_domain.scalar_type() == at::kDouble && cat_domain.numel() == 3 && cat_domain.is_contiguous(),
      "pyzero.trees: cat_domain must hold (lo, hi, invalid) as float64");
  // (lo, hi, invalid) are read on the host: a CUDA caller passes a CPU copy.
  const double* dom = cat_domain.data_ptr<double>();
  return trees::ForestView{reinterpret_cast<const trees::Node*>(nodes.data_ptr<int32_t>()),
                           values.data_ptr<double>(),
                           roots.data_ptr<int32_t>(),
                           depths.data_ptr<int32_t>(),
                           threshold64.data_ptr<double>(),
                           reinterpret_cast<const uint32_t*>(cat_bits.data_ptr<int32_t>()),
                           cat_bits.size(1),
                           dom[0],
                           dom[1],
                           static_cast<int32_t>(dom[2]),
                           roots.size(0),
                           values.size(1)};
}

void check_rows(const at::Tensor& x) {
  TORCH_CHECK(
      (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) && x.dim() == 2 && x.is_contiguous(),
      "pyzero.trees: x must be a contiguous float32 or float64 tensor of shape (rows, features)");
}

at::Tensor tree_predict_raw_cpu(const at::Tensor& nodes, const at::Tensor& values, const at::Tensor& roots,
                                const at::Tensor& depths, const at::Tensor& threshold64,
                                const at::Tensor& cat_bits, const at::Tensor& cat_domain, const at::Tensor& x,
                                const at::Tensor& base, bool float32_accum) {
  const trees::ForestView f = forest_view(nodes, values, roots, depths, threshold64, cat_bits, cat_domain);
  check_rows(x);
  TORCH_CHECK(base.scalar_type() == at::kDouble && base.numel() == f.n_outputs && base.is_contiguous(),
              "pyzero.trees: base must hold one float64 per output");
  at::Tensor raw = at::empty({x.size(0), f.n_outputs}, x.options().dtype(at::kDouble));
  if (x.scalar_type() == at::kDouble) {
    trees::predict_raw(f, x.data_ptr<double>(), x.size(0), x.size(1), base.data_ptr<double>(), float32_accum,
                       raw.data_ptr<double>(), at::get_num_threads());
  } else {
    trees::predict_raw(f, x.data_ptr<float>(), x.size(0), x.size(1), base.data_ptr<double>(), float32_accum,
                       raw.data_ptr<double>(), at::get_num_threads());
  }
  return raw;
}

at::Tensor tree_predict_leaves_cpu(const at::Tensor& nodes, const at::Tensor& values, const at::Tensor& roots,
                                   const at::Tensor& depths, const at::Tensor& threshold64,
                                   const at::Tensor& cat_bits, const at::Tensor& cat_domain,
                                   const at::Tensor& x) {
  const trees::ForestView f = forest_view(nodes, values, roots, depths, threshold64, cat_bits, cat_domain);
  check_rows(x);
  at::Tensor leaves = at::empty({x.size(0), f.n_trees}, x.options().dtype(at::kInt));
  if (x.scalar_type() == at::kDouble) {
    trees::predict_leaves(f, x.data_ptr<double>(), x.size(0), x.size(1), leaves.data_ptr<int32_t>(),
                          at::get_num_threads());
  } else {
    trees::predict_leaves(f, x.data_ptr<float>(), x.size(0), x.size(1), leaves.data_ptr<int32_t>(),
                          at::get_num_threads());
  }
  return leaves;
}

void set_cpu_isa(const std::string& name) {
  cpu::Isa isa;
  TORCH_CHECK_VALUE(cpu::parse_isa(name.c_str(), &isa),
                    "set_cpu_isa: isa must be 'scalar', 'avx2' or 'avx512', got '", name, "'");
  TORCH_CHECK_VALUE(cpu::set_isa(isa), "set_cpu_isa: this processor does not support '", name,
                    "' (best: ", cpu::isa_name(cpu::detect_isa()), ")");
}

}  // namespace
}  // namespace pyzero

TORCH_LIBRARY(pyzero, m) {
  m.def(
      "fused_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] params_out, Tensor(e!)[] state_steps, *, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool adamw_mode, bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None) "
      "-> ()");
  m.def(
      "tree_predict_raw(Tensor nodes, Tensor values, Tensor roots, Tensor depths, Tensor threshold64, "
      "Tensor cat_bits, Tensor cat_domain, Tensor x, Tensor base, bool float32_accum) -> Tensor");
  m.def(
      "tree_predict_leaves(Tensor nodes, Tensor values, Tensor roots, Tensor depths, Tensor threshold64, "
      "Tensor cat_bits, Tensor cat_domain, Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(pyzero, CPU, m) {
  m.impl("fused_adamw_", &pyzero::fused_adamw_cpu);
  m.impl("tree_predict_raw", &pyzero::tree_predict_raw_cpu);
  m.impl("tree_predict_leaves", &pyzero::tree_predict_leaves_cpu);
}

#ifdef PYZERO_WITH_CUDA
TORCH_LIBRARY_IMPL(pyzero, CUDA, m) {
  m.impl("fused_adamw_", &pyzero::fused_adamw_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyzero native kernels (the ops are registered under torch.ops.pyzero)";
  m.def(
      "cpu_isa", [] { return std::string(pyzero::cpu::isa_name(pyzero::cpu::active_isa())); },
      "ISA the CPU kernels use now: 'avx512', 'avx2' or 'scalar'.");
  m.def(
      "cpu_isa_detected", [] { return std::string(pyzero::cpu::isa_name(pyzero::cpu::detect_isa())); },
      "Best ISA this processor supports.");
  m.def("set_cpu_isa", &pyzero::set_cpu_isa, "Selects the CPU kernels' ISA (for tests and benchmarks).");
  namespace py = pybind11;
  // Note [Prepared walks] in csrc/trees/tree_walk_plan.h
  py::class_<pyzero::WalkPlan, std::shared_ptr<pyzero::WalkPlan>>(
      m, "WalkPlan", "A pyzero::tree_walk call with every argument but x bound and checked once.")
      .def(py::init<int64_t, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const at::Tensor&, const at::Tensor&, const std::vector<double>&, const at::Tensor&,
                    int64_t, int64_t, int64_t, const at::Tensor&, const at::Tensor&, bool, bool,
                    const std::vector<int64_t>&, const std::vector<double>&, bool, bool, int64_t>(),
           py::arg("format"), py::arg("nodes"), py::arg("roots"), py::arg("leaf_nodes"), py::arg("values"),
           py::arg("threshold64"), py::arg("cat_bits"), py::arg("cat_domain"), py::arg("column_kind"),
           py::arg("depth"), py::arg("n_features"), py::arg("copies"), py::arg("x_like"), py::arg("base"),
           py::arg("float32_accum"), py::arg("leaves"), py::arg("config"), py::arg("finish"),
           py::arg("emulate") = false, py::arg("flat") = false, py::arg("host_rows") = 0)
      .def("takes", &pyzero::WalkPlan::takes, py::arg("x"), "Whether the plan takes x as it is.")
      .def_property_readonly("staged", &pyzero::WalkPlan::staged, "Whether the plan takes host rows.")
      .def("__call__", &pyzero::WalkPlan::operator(), py::arg("x"), "The walk of x's rows (as tree_walk).");
  py::class_<pyzero::WalkPlans>(m, "WalkPlans", "One WalkPlan per batch-size bucket.")
      .def(py::init<>())
      .def("set", &pyzero::WalkPlans::set, py::arg("bucket"), py::arg("plan"))
      .def("clear", &pyzero::WalkPlans::clear)
      .def("plan_for", &pyzero::WalkPlans::plan_for, py::arg("x"), "The plan that takes x, or None.")
      .def("__call__", &pyzero::WalkPlans::try_call, py::arg("x"),
           "The walk of x by its bucket's plan, or None when no plan takes x.");
  // Note [Prepared CPU calls] in csrc/trees/tree_cpu_plan.h
  py::class_<pyzero::CpuKernelPlan, std::shared_ptr<pyzero::CpuKernelPlan>>(
      m, "CpuKernelPlan", "A C++ CPU tree kernel with the forest's arrays bound and checked once.")
      .def("raw", &pyzero::CpuKernelPlan::raw, py::arg("x"), py::arg("base"), py::arg("float32_accum"),
           "float64 [rows, outputs], as the kernel's raw op.")
      .def("leaves", &pyzero::CpuKernelPlan::leaves, py::arg("x"), "int32 [rows, trees], as the leaves op.")
      .def_property_readonly("n_features", &pyzero::CpuKernelPlan::n_features);
  py::class_<pyzero::PerfectPlan, pyzero::CpuKernelPlan, std::shared_ptr<pyzero::PerfectPlan>>(
      m, "PerfectPlan", "pyzero::tree_perfect_raw / _leaves with the forest's arrays bound.")
      .def(py::init<const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t>(),
           py::arg("meta"), py::arg("threshold"), py::arg("values"), py::arg("values32"),
           py::arg("leaf_nodes"), py::arg("column_kind"), py::arg("n_features"));
  py::class_<pyzero::QsPlan, pyzero::CpuKernelPlan, std::shared_ptr<pyzero::QsPlan>>(
      m, "QsPlan", "pyzero::tree_qs_raw / _leaves with the forest's arrays bound.")
      .def(py::init<const std::vector<at::Tensor>&, const std::optional<at::Tensor>&,
                    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t>(),
           py::arg("nodes"), py::arg("values"), py::arg("values32"), py::arg("leaf_nodes"),
           py::arg("column_kind"), py::arg("n_features"));
  py::class_<pyzero::BinnedPlan, pyzero::CpuKernelPlan, std::shared_ptr<pyzero::BinnedPlan>>(
      m, "BinnedPlan", "Note [Binned float64 inputs]: float64 rows binned, then a float32 kernel plan.")
      .def(py::init<std::shared_ptr<const pyzero::CpuKernelPlan>, const at::Tensor&, const at::Tensor&,
                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&>(),
           py::arg("inner"), py::arg("edges"), py::arg("starts"), py::arg("codes") = py::none(),
           py::arg("encoded") = py::none());
  py::class_<pyzero::CpuPredictPlan, std::shared_ptr<pyzero::CpuPredictPlan>>(
      m, "CpuPredictPlan",
      "A kernel plan, base, summation and finish: the outputs of rows taken as they are.")
      .def(py::init<std::shared_ptr<const pyzero::CpuKernelPlan>, const at::Tensor&, bool,
                    const std::vector<double>&, bool, int64_t>(),
           py::arg("kernel"), py::arg("base"), py::arg("float32_accum"), py::arg("finish"), py::arg("flat"),
           py::arg("max_rows"))
      .def("__call__", &pyzero::CpuPredictPlan::operator(), py::arg("x"),
           "The outputs of x, or None when the plan does not take x.");
  m.def("finish_sums", &pyzero::finish_sums, py::arg("raw"), py::arg("base"), py::arg("finish"),
        py::arg("float32_accum"),
        "Note [Fused finish] applied to the CPU kernels' sums (float64 [rows, outputs]).");
  m.def(
      "libm_exp_tables",
      [] {
        const auto table = [](const uint64_t* entries, int64_t n) {
          return at::from_blob(const_cast<uint64_t*>(entries), {n}, at::kLong).clone();
        };
        return py::make_tuple(table(pyzero::libm::kExpfTable, 32), table(pyzero::libm::kExpTable, 256));
      },
      "Note [Library exp]'s tables (libm_exp.h): expf's int64 [32] and exp's int64 [256], their bits.");
  m.def("batch_bucket", &pyzero::batch_bucket, py::arg("rows"), "bucket_of(rows) of pyzero.trees.gpu.");
#ifdef PYZERO_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = std::string(PYZERO_CUDA_ARCHS);
}
