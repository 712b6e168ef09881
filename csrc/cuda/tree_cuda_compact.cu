// The CUDA tree kernel for the compact layouts (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_WALK_TEMPLATE(, float, trees::CompactWalker)
PYZERO_WALK_TEMPLATE(, double, trees::CompactWalker)
}  // namespace pyzero::cuda
