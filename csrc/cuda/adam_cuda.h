// CUDA fused AdamW, host-side entry point. Torch-free: raw device pointers and a stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../adam.h"

namespace pyzero::cuda {

// One tensor to update in place, with its own fp32 step count in device memory.
struct AdamTensorCuda {
  AdamTensor t;
  float* step;
};

// Multi-tensor fused AdamW (Note [AdamW update] in adam.h) on `stream`. For every batch of up to
// kMaxTensorsPerLaunch tensors: one tiny launch advances each step by one (skipped when
// *found_inf != 0), then one launch updates all their elements, any size, 16-byte vector
// accesses where a tensor's pointers allow. grad_scale and found_inf are fp32 device scalars or
// nullptr. Returns the first CUDA error.
cudaError_t fused_adamw(const AdamTensorCuda* tensors, int64_t num_tensors, const AdamHyper& h,
                        const float* grad_scale, const float* found_inf, cudaStream_t stream);

constexpr int kMaxTensorsPerLaunch = 24;

}  // namespace pyzero::cuda
