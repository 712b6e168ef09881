// Portable fallback of the CPU fused AdamW (no SIMD intrinsics).
#include "adam_cpu.h"
#include "adam_loop.h"

namespace pyzero::cpu {
namespace {
struct VecScalar {
  using F = float;
  static constexpr int W = 1;
  static float sqrt_scalar(float x) { return __builtin_sqrtf(x); }
};
}  // namespace

void adam_range_scalar(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s) {
  adam_range_dispatch<VecScalar>(t, begin, end, s);
}

}  // namespace pyzero::cpu
