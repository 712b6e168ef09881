// The CUDA tree kernel for the perfect layouts (Note [GPU layouts]); see tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_WALK_TEMPLATE(, float, trees::PerfectWalker)
PYZERO_WALK_TEMPLATE(, float, trees::PerfectBlockedWalker)
}  // namespace pyzero::cuda
