// The CUDA tree kernel for the perfect layout (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_WALK_TEMPLATE(, float, trees::PerfectWalker)
}  // namespace pyzero::cuda
