// The CUDA tree kernel compiled for the CPU: Note [Kernel emulation] (kernel_emu.h). Torch-free.
#include "../cuda/tree_kernel.cuh"

namespace pyzero::cuda {

template <typename T>
bool tree_walk_emulated(const WalkForest& f, const T* x, int64_t rows, const double* base, bool float32_accum,
                        double* raw, int32_t* leaves, WalkLaunch cfg) {
  return walk_layouts(emu::Launcher{}, f, x, rows, base, float32_accum, raw, leaves, cfg);
}

template bool tree_walk_emulated<float>(const WalkForest&, const float*, int64_t, const double*, bool,
                                        double*, int32_t*, WalkLaunch);
template bool tree_walk_emulated<double>(const WalkForest&, const double*, int64_t, const double*, bool,
                                         double*, int32_t*, WalkLaunch);

}  // namespace pyzero::cuda
