// CUDA fused AdamW kernels. See Note [AdamW update] in adam.h for the arithmetic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "adam_cuda.h"

namespace pyzero::cuda {
namespace {

constexpr int kThreads = 256;
// Elements per block: two float4 groups per thread.
constexpr int64_t kChunkElems = 2 * kThreads * 4;

struct LaunchArgs {
  float* param[kMaxTensorsPerLaunch];
  const void* grad[kMaxTensorsPerLaunch];
  float* exp_avg[kMaxTensorsPerLaunch];
  float* exp_avg_sq[kMaxTensorsPerLaunch];
  void* out[kMaxTensorsPerLaunch];
  float* step[kMaxTensorsPerLaunch];
  int64_t n[kMaxTensorsPerLaunch];
  int64_t chunk_begin[kMaxTensorsPerLaunch + 1];  // prefix sum of chunks per tensor
  bool vec[kMaxTensorsPerLaunch];                 // all pointers allow 4-element vector access
  int num_tensors;
};

struct NoOut {};

template <typename T>
__device__ __forceinline__ float to_f32(T x);
template <>
__device__ __forceinline__ float to_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_f32<__half>(__half x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}

// Note [AdamW update] for one element; returns the new parameter.
__device__ __forceinline__ float adam_elem(float g, float& p, float& m, float& v, const AdamScalars& s,
                                           bool adamw) {
  g = g * s.grad_scale;
  if (s.maximize) g = -g;
  if (adamw) {
    p = p * s.decay;
  } else {
    g = g + s.l2 * p;
  }
  m = m + s.one_minus_beta1 * (g - m);
  v = v * s.beta2 + s.one_minus_beta2 * (g * g);
  const float denom = sqrtf(v) / s.bc2_sqrt + s.eps;
  p = p - s.step_size * (m / denom);
  return p;
}

// Four consecutive elements of T as one aligned access (16 bytes for fp32, 8 for 16-bit types).
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T x[4];
};

template <typename G, typename O>
__global__ void __launch_bounds__(kThreads) adam_kernel(const __grid_constant__ LaunchArgs a, AdamHyper h,
                                                        const float* grad_scale, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  const float gs = grad_scale != nullptr ? *grad_scale : 1.0f;
  const bool adamw = h.adamw_mode;
  const int64_t total = a.chunk_begin[a.num_tensors];
  int t = 0;
  int cached = -1;
  AdamScalars s;
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    while (c >= a.chunk_begin[t + 1]) ++t;
    if (t != cached) {
      s = make_adam_scalars(h, static_cast<double>(*a.step[t]), gs);
      cached = t;
    }
    const int64_t n = a.n[t];
    const int64_t begin = (c - a.chunk_begin[t]) * kChunkElems;
    const int64_t end = begin + kChunkElems < n ? begin + kChunkElems : n;
    float* __restrict__ p = a.param[t];
    float* __restrict__ m = a.exp_avg[t];
    float* __restrict__ v = a.exp_avg_sq[t];
    const G* __restrict__ g = static_cast<const G*>(a.grad[t]);
    int64_t scalar_begin = begin;
    if (a.vec[t]) {
      scalar_begin = begin + ((end - begin) / 4) * 4;
      for (int64_t i = begin + 4 * threadIdx.x; i < scalar_begin; i += 4 * kThreads) {
        Vec4<float> pv = *reinterpret_cast<const Vec4<float>*>(p + i);
        Vec4<float> mv = *reinterpret_cast<const Vec4<float>*>(m + i);
        Vec4<float> vv = *reinterpret_cast<const Vec4<float>*>(v + i);
        const Vec4<G> gv = *reinterpret_cast<const Vec4<G>*>(g + i);
        Vec4<O> ov;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float np = adam_elem(to_f32(gv.x[k]), pv.x[k], mv.x[k], vv.x[k], s, adamw);
          if constexpr (!std::is_same_v<O, NoOut>) ov.x[k] = from_f32<O>(np);
        }
        *reinterpret_cast<Vec4<float>*>(p + i) = pv;
        *reinterpret_cast<Vec4<float>*>(m + i) = mv;
        *reinterpret_cast<Vec4<float>*>(v + i) = vv;
        if constexpr (!std::is_same_v<O, NoOut>)
          *reinterpret_cast<Vec4<O>*>(static_cast<O*>(a.out[t]) + i) = ov;
      }
    }
    for (int64_t i = scalar_begin + threadIdx.x; i < end; i += kThreads) {
      float pv = p[i], mv = m[i], vv = v[i];
      const float np = adam_elem(to_f32(g[i]), pv, mv, vv, s, adamw);
      p[i] = pv;
      m[i] = mv;
      v[i] = vv;
      if constexpr (!std::is_same_v<O, NoOut>) static_cast<O*>(a.out[t])[i] = from_f32<O>(np);
    }
  }
}

__global__ void advance_steps_kernel(const __grid_constant__ LaunchArgs a, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  const int i = threadIdx.x;
  if (i < a.num_tensors) *a.step[i] += 1.0f;
}

bool aligned(const void* ptr, int bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

int dtype_bytes(DType d) {
  return d == DType::kFloat32 ? 4 : 2;
}

// One block per chunk of kChunkElems. Measured on an H100 at 512M params: 95-99% of copy bandwidth,
// against 90-93% for a one-wave grid striding over 4K-16K-element chunks (bench/RESULTS.md).
template <typename G, typename O>
void launch_typed(const LaunchArgs& a, const AdamHyper& h, const float* grad_scale, const float* found_inf,
                  int64_t chunks, cudaStream_t stream) {
  const int blocks = static_cast<int>(chunks < INT32_MAX ? chunks : INT32_MAX);  // the kernel strides past it
  adam_kernel<G, O><<<blocks, kThreads, 0, stream>>>(a, h, grad_scale, found_inf);
}

template <typename G>
void launch_out(DType out, const LaunchArgs& a, const AdamHyper& h, const float* gs, const float* fi,
                int64_t chunks, cudaStream_t stream) {
  switch (out) {
    case DType::kBFloat16: return launch_typed<G, __nv_bfloat16>(a, h, gs, fi, chunks, stream);
    case DType::kFloat16: return launch_typed<G, __half>(a, h, gs, fi, chunks, stream);
    case DType::kFloat32: return launch_typed<G, float>(a, h, gs, fi, chunks, stream);
    default: return launch_typed<G, NoOut>(a, h, gs, fi, chunks, stream);
  }
}

void launch(DType grad, DType out, const LaunchArgs& a, const AdamHyper& h, const float* gs, const float* fi,
            int64_t chunks, cudaStream_t stream) {
  switch (grad) {
    case DType::kBFloat16: return launch_out<__nv_bfloat16>(out, a, h, gs, fi, chunks, stream);
    case DType::kFloat16: return launch_out<__half>(out, a, h, gs, fi, chunks, stream);
    default: return launch_out<float>(out, a, h, gs, fi, chunks, stream);
  }
}

}  // namespace

cudaError_t fused_adamw(const AdamTensorCuda* tensors, int64_t num_tensors, const AdamHyper& h,
                        const float* grad_scale, const float* found_inf, cudaStream_t stream) {
  int64_t k = 0;
  while (k < num_tensors) {
    // A launch holds tensors of one (grad dtype, out dtype) pair.
    const DType grad = tensors[k].t.grad_dtype;
    const DType out = tensors[k].t.out_dtype;
    LaunchArgs a{};
    a.num_tensors = 0;
    a.chunk_begin[0] = 0;
    while (k < num_tensors && a.num_tensors < kMaxTensorsPerLaunch && tensors[k].t.grad_dtype == grad &&
           tensors[k].t.out_dtype == out) {
      const AdamTensor& t = tensors[k].t;
      const int j = a.num_tensors;
      a.param[j] = t.param;
      a.grad[j] = t.grad;
      a.exp_avg[j] = t.exp_avg;
      a.exp_avg_sq[j] = t.exp_avg_sq;
      a.out[j] = t.param_out;
      a.step[j] = tensors[k].step;
      a.n[j] = t.n;
      a.chunk_begin[j + 1] = a.chunk_begin[j] + (t.n + kChunkElems - 1) / kChunkElems;
      a.vec[j] = aligned(t.param, 16) && aligned(t.exp_avg, 16) && aligned(t.exp_avg_sq, 16) &&
                 aligned(t.grad, 4 * dtype_bytes(grad)) &&
                 (out == DType::kNone || aligned(t.param_out, 4 * dtype_bytes(out)));
      ++a.num_tensors;
      ++k;
    }
    advance_steps_kernel<<<1, kMaxTensorsPerLaunch, 0, stream>>>(a, found_inf);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const int64_t chunks = a.chunk_begin[a.num_tensors];
    if (chunks > 0) {
      launch(grad, out, a, h, grad_scale, found_inf, chunks, stream);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace pyzero::cuda
