// The CUDA tree kernel for the wide layout (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_INSTANTIATE_WALK(float, trees::WideWalker)
PYZERO_INSTANTIATE_WALK(double, trees::WideWalker)
}  // namespace pyzero::cuda
