// The CUDA tree kernel for the perfect layouts (Note [GPU layouts]) and Note [Tiled walk]; see
// tree_kernel.cuh.
#include "tree_kernel.cuh"

namespace pyzero::cuda {
PYZERO_WALK_TEMPLATE(, float, trees::PerfectWalker)
PYZERO_WALK_TEMPLATE(, float, trees::PerfectBlockedWalker)
PYZERO_WALK_TEMPLATE(, float, trees::TiledWalker)
PYZERO_TILED_TEMPLATE()
}  // namespace pyzero::cuda
