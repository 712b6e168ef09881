// The CUDA tree kernel for the perfect layout (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_INSTANTIATE_WALK(float, trees::PerfectWalker)
}  // namespace pyzero::cuda
