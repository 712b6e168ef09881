// The CUDA tree kernel for the compact layout (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_INSTANTIATE_WALK(float, trees::CompactWalker)
PYZERO_INSTANTIATE_WALK(double, trees::CompactWalker)
}  // namespace pyzero::cuda
