// The CUDA tree kernel for the wide layout (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_WALK_TEMPLATE(, float, trees::WideWalker)
PYZERO_WALK_TEMPLATE(, double, trees::WideWalker)
}  // namespace pyzero::cuda
