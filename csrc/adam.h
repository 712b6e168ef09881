// Fused AdamW contract shared by every backend (CPU SIMD, CUDA, Triton, reference).
// Torch-free: raw pointers and sizes only, so the standalone CMake build and nvcc can use it.
#pragma once

#include <cmath>
#include <cstdint>

namespace pyzero {

// Element types a gradient or a low-precision parameter output may have.
enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kNone = 3 };

// Note [AdamW update]
// One element, all arithmetic in fp32, in this order (mirrors torch.optim.AdamW's
// single-tensor path so results agree to rounding):
//   g = grad * grad_scale             grad_scale = clip_coef / loss_scale (a device scalar)
//   if maximize: g = -g
//   if adamw:    p = p * (1 - lr * wd)          (decoupled weight decay)
//   else:        g = g + wd * p                 (L2 penalty, torch.optim.Adam)
//   m = m + (1 - beta1) * (g - m)
//   v = v * beta2 + (1 - beta2) * (g * g)
//   denom = sqrt(v) / sqrt(1 - beta2^step) + eps
//   p = p - (lr / (1 - beta1^step)) * (m / denom)
//   out = round_to_nearest_even(p) in the output dtype, when an output is given
// `step` is the count after this update (the first update uses step = 1). When a
// found_inf flag is given and nonzero, nothing is written and step is not advanced.
// Bias corrections are computed in double from the step count, then used as fp32.
// Kernels are compiled with -ffp-contract=off so vector bodies and scalar tails agree bitwise.

// Per-launch hyperparameters (host scalars).
struct AdamHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool adamw_mode;
  bool maximize;
};

// Scalars one tensor's update needs, derived from AdamHyper and its step count.
struct AdamScalars {
  float grad_scale;
  float decay;  // 1 - lr * wd in AdamW mode, 1 otherwise
  float l2;     // wd in Adam (L2) mode, 0 otherwise
  float beta1;
  float beta2;
  float one_minus_beta1;
  float one_minus_beta2;
  float step_size;  // lr / (1 - beta1^step)
  float bc2_sqrt;   // sqrt(1 - beta2^step)
  float eps;
  bool maximize;
};

// One tensor (or one flat buffer) to update in place.
struct AdamTensor {
  float* param;       // fp32 master parameter, n elements
  const void* grad;   // n elements of grad_dtype
  float* exp_avg;     // n fp32
  float* exp_avg_sq;  // n fp32
  void* param_out;    // n elements of out_dtype, or nullptr (out_dtype == kNone)
  int64_t n;
  DType grad_dtype;
  DType out_dtype;
};

#if defined(__CUDACC__)
#define PYZERO_ADAM_HD __host__ __device__
#else
#define PYZERO_ADAM_HD
#endif

// Derives the per-tensor scalars (see Note [AdamW update]); `step` counts this update.
PYZERO_ADAM_HD inline AdamScalars make_adam_scalars(const AdamHyper& h, double step, float grad_scale) {
  AdamScalars s;
  s.grad_scale = grad_scale;
  s.decay = h.adamw_mode ? static_cast<float>(1.0 - h.lr * h.weight_decay) : 1.0f;
  s.l2 = h.adamw_mode ? 0.0f : static_cast<float>(h.weight_decay);
  s.beta1 = static_cast<float>(h.beta1);
  s.beta2 = static_cast<float>(h.beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  const double bc1 = 1.0 - ::pow(h.beta1, step);
  const double bc2 = 1.0 - ::pow(h.beta2, step);
  s.step_size = static_cast<float>(h.lr / bc1);
  s.bc2_sqrt = static_cast<float>(::sqrt(bc2));
  s.eps = static_cast<float>(h.eps);
  s.maximize = h.maximize;
  return s;
}

}  // namespace pyzero
