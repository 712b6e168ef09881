// The CUDA tree kernel's launch parameters and shared-memory plan, without the CUDA runtime: used by the
// kernel (tree_kernel.cuh), its host entry point (tree_cuda.h) and its CPU emulation (Note [Kernel
// emulation], csrc/trees/kernel_emu.h).
//
// Note [GPU tree kernel]
// A block of `threads` threads takes R = threads / lanes rows; thread i walks row i % R with tree lane
// i / R. Rows are staged in shared memory (every slot of Note [Row slots]) when they fit. A lane walks
// `ilp` trees at once in lockstep (independent loads in flight):
//   lanes == 1: a thread walks every tree of its row in order and adds each leaf value as it goes (its
//     loop compiled twice, for staged rows and for rows read in global memory: one kind of feature
//     read per node visit). A visit of a perfect tree on staged rows is about 10 instructions in the
//     sm_90 SASS (a node load, the slot's clamp and shared load, one compare, the child), from about 17
//     before Note [Row slots] and 32 before that;
//   lanes == 1 with tree_chunk > 0 (perfect layout): the block copies tree_chunk trees at a time (nodes,
//     and leaf values in the type the sum adds) into shared memory, then every thread walks them there;
//   lanes > 1: the trees go in chunks of lanes * ilp; each (row, tree) pair of a chunk leaves its leaf
//     value (one output: float32 when float32_accum, else double) or value row (several) in shared
//     memory, then one thread per (row, output) adds the chunk's values in tree order to its
//     accumulator (shared memory, double, or float32 rounding after every add when float32_accum).
// Either way every output is base + tree 0 + tree 1 + ... in tree order, as the CPU kernels add: the
// result is the same bit for bit whatever the batch size, rows per block, lanes or ilp, so the
// autotuner (pyzero/trees/gpu.py) may pick any configuration without changing a single output.
//
// Note [Tiled walk]
// The throughput mode (`tiled`) of the kPerfectTiled layout (Note [GPU layouts]; one output, or leaves):
// a block of `threads` threads takes `threads` rows, staged in shared memory, and copies the forest's
// tiles of 32 interleaved trees into shared memory one at a time, as they lie in global memory (plain
// coalesced loads). Warp w walks the tile for its 32 rows one after another (`ilp` rows at once), lane
// l walking tree l: the 32 node reads of a step hit 32 distinct banks (node i of tree l is word i * 32
// + l) and the 32 feature reads come from one staged row, where a warp walking 32 rows down one tree
// reads up to 32 scattered nodes per step from L1 or L2. Each lane leaves its leaf value in the warp's
// buffer [32 rows, kTileBufPitch]; then lane l adds row l's values in tree order to its accumulator, so
// the sums are those of Note [GPU tree kernel]. A tile of depth-8 trees takes 96-128 KB, so the block
// opts in to up to kTileMaxSharedBytes (an H100's per-block limit; a GPU with less refuses the launch
// with an error, which the tuner skips). Untuned calls never reach it (the default layout is perfect):
// the tuner tries it, and on an H100 the per-row kernel beat it at 2^18 rows for the benchmark's
// forests (bench/RESULTS.md).
#pragma once

#include <cstdint>

#include "../trees/tree_walk.h"

namespace pyzero::cuda {

// Largest block, and the shared memory a launch may use without opting in to more.
constexpr int kTreeMaxThreads = 512;
constexpr int64_t kTreeMaxSharedBytes = 48 * 1024;
// A launch whose rows fit this much shared memory stages them, opting in above kTreeMaxSharedBytes (every
// GPU from sm_80 on allows at least 99 KB a block): 256 rows of 28 features in two copies (Note [Row
// slots]) take 58 KB.
constexpr int64_t kStageMaxSharedBytes = 96 * 1024;
// Note [Tiled walk]: the padded row pitch of a warp's value buffer (lane l reads row l: distinct banks),
// and the shared memory a tiled block may opt in to.
constexpr int kTileBufPitch = trees::kTiledTrees + 1;
constexpr int64_t kTileMaxSharedBytes = 227 * 1024;

struct WalkLaunch {
  int threads;         // a multiple of 32, <= kTreeMaxThreads
  int lanes;           // divides threads
  int ilp;             // 1, 2 or 4
  bool stage;          // stage rows in shared memory (ignored when they do not fit)
  int tree_chunk = 0;  // > 0: trees staged in shared memory this many at a time (perfect layout, lanes 1)
  bool tiled = false;  // Note [Tiled walk] (kPerfectTiled; lanes 1, tree_chunk 0)
};

inline bool valid_launch(const WalkLaunch& cfg) {
  return cfg.threads >= 32 && cfg.threads <= kTreeMaxThreads && cfg.threads % 32 == 0 && cfg.lanes >= 1 &&
         cfg.threads % cfg.lanes == 0 && (cfg.ilp == 1 || cfg.ilp == 2 || cfg.ilp == 4) &&
         cfg.tree_chunk >= 0 && (cfg.tree_chunk == 0 || cfg.lanes == 1) &&
         (!cfg.tiled || (cfg.lanes == 1 && cfg.tree_chunk == 0));
}

namespace detail {

PYZERO_HD constexpr int64_t round_up(int64_t n, int64_t to) {
  return (n + to - 1) / to * to;
}

// Bytes of one chunk-buffer entry (lanes > 1): a float32 or double leaf value (one output) or an int32
// value row (several).
PYZERO_HD int64_t chunk_item_bytes(int64_t n_outputs, bool acc32) {
  return n_outputs == 1 ? (acc32 ? 4 : 8) : 4;
}

// Staged rows are row_stride(slots) values apart: an odd count, so the threads of a warp reading the
// same slot of their own rows (every thread at a tree's top levels) hit distinct banks.
PYZERO_HD int64_t row_stride(int64_t slots) {
  return slots | 1;
}

// Shared memory carve-up of one block: accumulators [R * outputs] (double), the chunk buffer [R * chunk]
// (lanes > 1), staged rows [R * row_stride(row slots)] (Note [Row slots]), staged trees' nodes
// [tree_chunk * node_stride] and leaf values [tree_chunk * 2^depth * outputs] (float32 when acc32, else
// double; none for leaves).
struct Carve {
  int64_t acc, buf, rows, tree_nodes, tree_values, total;
};

PYZERO_HD Carve carve(const trees::WalkForest& f, int64_t item, bool leaves, bool acc32, int r, int lanes,
                      int ilp, bool stage, int64_t tree_chunk) {
  Carve c{};
  c.acc = leaves ? 0 : round_up(r * f.n_outputs * 8, 16);
  const int64_t chunk = static_cast<int64_t>(lanes) * ilp;
  c.buf = (leaves || lanes == 1) ? 0 : round_up(r * chunk * chunk_item_bytes(f.n_outputs, acc32), 16);
  c.rows = stage ? round_up(r * row_stride(trees::row_slots(f)) * item, 16) : 0;
  c.tree_nodes = tree_chunk > 0 ? round_up(tree_chunk * f.node_stride * 8, 16) : 0;
  c.tree_values =
      (tree_chunk > 0 && !leaves) ? round_up((tree_chunk << f.depth) * f.n_outputs * (acc32 ? 4 : 8), 16) : 0;
  c.total = c.acc + c.buf + c.rows + c.tree_nodes + c.tree_values;
  return c;
}

// Note [Tiled walk]: staged rows [threads * row_stride(row slots)] (float), one tile's nodes [2^D, 32]
// (Node8) and leaf values [2^D, 32], and each warp's value buffer [32, kTileBufPitch] (values in the type the
// sum adds; neither for leaves).
struct TileCarve {
  int64_t rows, nodes, values, buf, total;
};

PYZERO_HD TileCarve tile_carve(const trees::WalkForest& f, bool leaves, bool acc32, int threads) {
  TileCarve c{};
  const int64_t vb = acc32 ? 4 : 8;
  c.rows = round_up(threads * row_stride(trees::row_slots(f)) * 4, 16);
  c.nodes = round_up((int64_t{1} << f.depth) * trees::kTiledTrees * 8, 16);
  c.values = leaves ? 0 : round_up((int64_t{1} << f.depth) * trees::kTiledTrees * vb, 16);
  c.buf = leaves ? 0 : round_up(threads * kTileBufPitch * vb, 16);
  c.total = c.rows + c.nodes + c.values + c.buf;
  return c;
}

}  // namespace detail

// Shared memory bytes a launch needs, or -1 when it cannot fit kTreeMaxSharedBytes (kTileMaxSharedBytes
// when tiled) even unstaged; *staged says whether the rows are staged (up to kStageMaxSharedBytes).
inline int64_t tree_walk_shared_bytes(const trees::WalkForest& f, int64_t x_item_bytes, bool leaves,
                                      bool acc32, WalkLaunch cfg, bool* staged) {
  if (cfg.tiled) {  // rows always staged; one output or leaves (Note [Tiled walk])
    *staged = true;
    if (!leaves && f.n_outputs != 1) return -1;
    const int64_t total = detail::tile_carve(f, leaves, acc32, cfg.threads).total;
    return total <= kTileMaxSharedBytes ? total : -1;
  }
  const int r = cfg.threads / cfg.lanes;
  if (cfg.stage) {
    const detail::Carve c =
        detail::carve(f, x_item_bytes, leaves, acc32, r, cfg.lanes, cfg.ilp, true, cfg.tree_chunk);
    if (c.total <= kStageMaxSharedBytes) {
      *staged = true;
      return c.total;
    }
  }
  *staged = false;
  const detail::Carve c =
      detail::carve(f, x_item_bytes, leaves, acc32, r, cfg.lanes, cfg.ilp, false, cfg.tree_chunk);
  return c.total <= kTreeMaxSharedBytes ? c.total : -1;
}

}  // namespace pyzero::cuda

namespace pyzero::cuda {

// The kernel's own code run on the CPU (Note [Kernel emulation], csrc/trees/tree_walk_emu.cpp): the
// same outputs as tree_walk on a GPU; false when the configuration or input type does not fit.
template <typename T>
bool tree_walk_emulated(const trees::WalkForest& f, const T* x, int64_t rows, const double* base,
                        bool float32_accum, double* raw, int32_t* leaves, WalkLaunch cfg);

}  // namespace pyzero::cuda
