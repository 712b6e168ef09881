// The CUDA tree kernel of Note [GPU tree kernel] (tree_launch.h) as templates over a launcher: nvcc
// instantiates them with CudaLauncher, one translation unit per layout (tree_cuda_<layout>.cu), and the
// host build runs the same code on the CPU with emu::Launcher (Note [Kernel emulation]).
#pragma once

#include <type_traits>

#include "tree_launch.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define PYZERO_KERNEL __global__ void __launch_bounds__(kTreeMaxThreads)
#define PYZERO_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#define PYZERO_SYNC() __syncthreads()
#define PYZERO_SYNC_WARP() __syncwarp()
#define PYZERO_THREAD_ID static_cast<int>(threadIdx.x)
#define PYZERO_BLOCK_THREADS static_cast<int>(blockDim.x)
#define PYZERO_BLOCK_ID static_cast<int64_t>(blockIdx.x)
#else
#include "../trees/kernel_emu.h"
#endif

namespace pyzero::cuda {

using trees::WalkForest;

namespace detail {

// NOUT: the output count when it is 1 or 2 (accumulators in registers), 0 for any other count.
template <typename T, typename Walker, int ILP, int NOUT>
PYZERO_KERNEL walk_kernel(WalkForest f, const T* x, int64_t rows, const double* base, bool acc32, double* raw,
                          int32_t* leaves, int r_per_block, bool stage, int tree_chunk) {
  PYZERO_DYNAMIC_SHARED(smem);
  const Walker w{f};
  const int tid = PYZERO_THREAD_ID;
  const int nt = PYZERO_BLOCK_THREADS;
  const int R = r_per_block;
  const int lanes = nt / R;
  const int rl = tid % R;
  const int lane = tid / R;
  const int64_t r0 = PYZERO_BLOCK_ID * R;
  const int64_t r = r0 + rl;
  const bool active = r < rows;
  const int64_t nf = f.n_features, outs = f.n_outputs, n_trees = f.n_trees;
  const bool want_leaves = leaves != nullptr;
  const Carve cv = carve(f, sizeof(T), want_leaves, acc32, R, lanes, ILP, stage, tree_chunk);
  double* acc_s = reinterpret_cast<double*>(smem);
  unsigned char* buf = smem + cv.acc;
  T* xs = reinterpret_cast<T*>(smem + cv.acc + cv.buf);

  // Index math of the block's shared arrays in 32 bits: R * slots and R * outs fit (kStageMaxSharedBytes),
  // and 64-bit division is a called subroutine on the GPU.
  const int slots32 = static_cast<int>(trees::row_slots(f)), outs32 = static_cast<int>(outs);
  const int64_t xstride = row_stride(slots32);
  if (stage) {  // Note [Row slots]: every slot of the block's rows, reads of x coalesced
    const int n = R * slots32;
    for (int i = tid; i < n; i += nt) {
      const int rr = i / slots32, s = i - rr * slots32;
      xs[rr * xstride + s] = r0 + rr < rows ? trees::slot_value(f, x + (r0 + rr) * nf, s) : T(0);
    }
  }
  if (!want_leaves) {
    for (int i = tid; i < R * outs32; i += nt) acc_s[i] = trees::sum_start(f, acc32, base[i % outs32]);
  }
  PYZERO_SYNC();
  const T* xrow = stage ? xs + rl * xstride : x + (active ? r : r0) * nf;
  auto row = [&](int64_t s) -> T { return stage ? xrow[s] : trees::slot_value(f, xrow, s); };
  int64_t vr[ILP];

  if (lanes == 1) {  // a thread per row, every tree in order
    // Note [GPU tree kernel]: two copies of the loop, staged rows and rows read where they are, so a
    // node visit's feature read is a shared or a global load, without a branch between them.
    auto per_row = [&](const auto& row) {
      constexpr int kRegs = NOUT > 0 ? NOUT : 1;
      double a[kRegs];
      float a32[kRegs];
      PYZERO_UNROLL
      for (int o = 0; o < kRegs; ++o) {
        a[o] = (!want_leaves && NOUT > 0 && active) ? acc_s[rl * NOUT + o] : 0.0;
        a32[o] = static_cast<float>(a[o]);
      }
      // Perfect layouts with tree_chunk > 0: the block copies chunks of trees (nodes, and leaf values in the
      // type the sum adds) into shared memory and walks them there, as trees 0 .. n - 1 of a local forest.
      // Otherwise one chunk of every tree, read where it is.
      constexpr bool kPerfectWalker =
          std::is_same_v<Walker, trees::PerfectWalker> || std::is_same_v<Walker, trees::PerfectBlockedWalker>;
      const bool staged_trees = kPerfectWalker && tree_chunk > 0;
      const int64_t step = staged_trees ? tree_chunk : (n_trees > 0 ? n_trees : 1);
      auto* tn = reinterpret_cast<trees::Node8*>(smem + cv.acc + cv.buf + cv.rows);
      unsigned char* tv = smem + cv.acc + cv.buf + cv.rows + cv.tree_nodes;
      WalkForest local = f;
      if (staged_trees) local.nodes = reinterpret_cast<const uint32_t*>(tn);
      const Walker lw{local};
      const int64_t per_tree = (int64_t{1} << f.depth) * outs;  // perfect layouts: values of one tree
      for (int64_t c0 = 0; c0 < n_trees; c0 += step) {
        const int64_t n = n_trees - c0 < step ? n_trees - c0 : step;
        if (staged_trees) {
          const auto* src = reinterpret_cast<const trees::Node8*>(f.nodes) + c0 * f.node_stride;
          for (int64_t i = tid; i < n * f.node_stride; i += nt) tn[i] = src[i];
          for (int64_t i = tid; !want_leaves && i < n * per_tree; i += nt) {
            const double v = trees::leaf_value(f, c0 * per_tree + i);
            if (acc32) {
              reinterpret_cast<float*>(tv)[i] = static_cast<float>(v);
            } else {
              reinterpret_cast<double*>(tv)[i] = v;
            }
          }
          PYZERO_SYNC();
        }
        // staged: local tree and value-row numbers (global value row = local + shift); else global ones
        const float* v32 = staged_trees ? (acc32 ? reinterpret_cast<const float*>(tv) : nullptr) : f.values32;
        const double* v64 = staged_trees ? (acc32 ? nullptr : reinterpret_cast<const double*>(tv)) : f.values;
        const int64_t first = staged_trees ? 0 : c0, shift = staged_trees ? c0 << f.depth : 0;
        for (int64_t t0 = 0; active && t0 < n; t0 += ILP) {
          const int64_t count = n - t0 < ILP ? n - t0 : ILP;
          lw.template walk<ILP>(first + t0, count, row, vr);
          PYZERO_UNROLL
          for (int k = 0; k < ILP; ++k) {
            if (k >= count) break;
            if (want_leaves) {
              leaves[r * n_trees + c0 + t0 + k] = w.leaf_id(vr[k] + shift);
            } else if constexpr (NOUT > 0) {
              PYZERO_UNROLL
              for (int o = 0; o < NOUT; ++o) {
                const int64_t i = vr[k] * NOUT + o;
                if (acc32) {
                  a32[o] += v32 != nullptr ? v32[i] : static_cast<float>(v64[i]);
                } else {
                  a[o] += v64[i];
                }
              }
            } else {
              for (int64_t o = 0; o < outs; ++o) {
                const int64_t i = vr[k] * outs + o;
                const double v = v32 != nullptr ? static_cast<double>(v32[i]) : v64[i];
                double& s = acc_s[rl * outs + o];
                s = acc32 ? static_cast<double>(static_cast<float>(s) + static_cast<float>(v)) : s + v;
              }
            }
          }
        }
        if (staged_trees) PYZERO_SYNC();
      }
      if (!active || want_leaves) return;
      if constexpr (NOUT > 0) {
        PYZERO_UNROLL
        for (int o = 0; o < NOUT; ++o) {
          trees::store_output(f, acc32, base, raw, r, o, acc32 ? static_cast<double>(a32[o]) : a[o]);
        }
      } else {
        for (int64_t o = 0; o < outs; ++o)
          trees::store_output(f, acc32, base, raw, r, o, acc_s[rl * outs + o]);
      }
    };
    if (stage) {
      const T* staged = xs + rl * xstride;
#if defined(__CUDA_ARCH__)
      if constexpr (sizeof(T) == 4) {
        // The row's 32-bit shared address once: nvcc otherwise adds the row offset to the slot at every
        // visit (sm_90 SASS: 10.9 -> 9.9 instructions a visit of the perfect walk).
        const auto at = static_cast<uint32_t>(__cvta_generic_to_shared(staged));
        per_row([at](int32_t s) -> T {
          float v;
          asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(at + 4u * static_cast<uint32_t>(s)));
          return v;
        });
        return;
      }
#endif
      per_row([staged](int32_t s) -> T { return staged[s]; });
    } else {
      per_row([&f, xrow](int64_t s) -> T { return trees::slot_value(f, xrow, s); });
    }
    return;
  }

  // lanes > 1: chunks of lanes * ILP trees, summed in tree order per (row, output)
  const int64_t chunk = static_cast<int64_t>(lanes) * ILP;
  double* vbuf = reinterpret_cast<double*>(buf);
  float* fbuf = reinterpret_cast<float*>(buf);
  int32_t* ibuf = reinterpret_cast<int32_t*>(buf);
  for (int64_t c0 = 0; c0 < n_trees; c0 += chunk) {
    const int64_t t0 = c0 + static_cast<int64_t>(lane) * ILP;
    const int64_t count = n_trees - t0 < ILP ? n_trees - t0 : ILP;
    if (active && count > 0) {
      w.template walk<ILP>(t0, count, row, vr);
      PYZERO_UNROLL
      for (int k = 0; k < ILP; ++k) {
        if (k >= count) break;
        const int64_t slot = rl * chunk + lane * ILP + k;
        if (want_leaves) {
          leaves[r * n_trees + t0 + k] = w.leaf_id(vr[k]);
        } else if (outs != 1) {
          ibuf[slot] = static_cast<int32_t>(vr[k]);
        } else if (acc32) {  // the float32 the sum adds, rounded here by the walking threads
          fbuf[slot] = static_cast<float>(trees::leaf_value(f, vr[k]));
        } else {
          vbuf[slot] = trees::leaf_value(f, vr[k]);
        }
      }
    }
    if (want_leaves) continue;
    PYZERO_SYNC();
    const int64_t in_chunk = n_trees - c0 < chunk ? n_trees - c0 : chunk;
    for (int i = tid; i < R * outs32; i += nt) {
      const int rr = i / outs32;
      if (r0 + rr >= rows) continue;
      const int o = i - rr * outs32;
      double s = acc_s[i];
      if (outs == 1 && acc32) {
        float s32 = static_cast<float>(s);
        const float* vals = fbuf + rr * chunk;
        PYZERO_UNROLL8
        for (int64_t j = 0; j < in_chunk; ++j) s32 += vals[j];
        s = s32;
      } else if (outs == 1) {
        const double* vals = vbuf + rr * chunk;
        PYZERO_UNROLL8
        for (int64_t j = 0; j < in_chunk; ++j) s += vals[j];
      } else if (acc32) {
        float s32 = static_cast<float>(s);
        for (int64_t j = 0; j < in_chunk; ++j)
          s32 +=
              static_cast<float>(trees::leaf_value(f, static_cast<int64_t>(ibuf[rr * chunk + j]) * outs + o));
        s = s32;
      } else {
        for (int64_t j = 0; j < in_chunk; ++j)
          s += trees::leaf_value(f, static_cast<int64_t>(ibuf[rr * chunk + j]) * outs + o);
      }
      acc_s[i] = s;
    }
    PYZERO_SYNC();
  }
  if (want_leaves) return;
  for (int i = tid; i < R * outs32; i += nt) {
    const int rr = i / outs32;
    if (r0 + rr < rows) trees::store_output(f, acc32, base, raw, r0 + rr, i - rr * outs32, acc_s[i]);
  }
}

// Note [Tiled walk] (tree_launch.h): kPerfectTiled, one output or leaves; ILP rows of a warp at once.
template <int ILP>
PYZERO_KERNEL tile_kernel(WalkForest f, const float* x, int64_t rows, const double* base, bool acc32,
                          double* raw, int32_t* leaves) {
  PYZERO_DYNAMIC_SHARED(smem);
  constexpr int kW = trees::kTiledTrees;
  const int tid = PYZERO_THREAD_ID;
  const int nt = PYZERO_BLOCK_THREADS;
  const int warp = tid / kW, lane = tid % kW;
  const int64_t r0 = PYZERO_BLOCK_ID * nt;
  const bool want_leaves = leaves != nullptr;
  const TileCarve cv = tile_carve(f, want_leaves, acc32, nt);
  float* xs = reinterpret_cast<float*>(smem);
  auto* tn = reinterpret_cast<trees::Node8*>(smem + cv.rows);
  unsigned char* tv = smem + cv.rows + cv.nodes;
  float* buf32 = reinterpret_cast<float*>(smem + cv.rows + cv.nodes + cv.values) + warp * kW * kTileBufPitch;
  double* buf64 =
      reinterpret_cast<double*>(smem + cv.rows + cv.nodes + cv.values) + warp * kW * kTileBufPitch;
  const int slots = static_cast<int>(trees::row_slots(f));
  const auto last = static_cast<uint32_t>(slots - 1);
  const int xstride = static_cast<int>(row_stride(slots));
  for (int i = tid; i < nt * slots; i += nt) {  // Note [Row slots]; reads of x coalesced
    const int rr = i / slots, s = i - rr * slots;
    xs[rr * xstride + s] = r0 + rr < rows ? trees::slot_value(f, x + (r0 + rr) * f.n_features, s) : 0.0f;
  }
  const int64_t my_row = r0 + tid;  // the row lane `lane` of this warp adds up
  double a = want_leaves ? 0.0 : trees::sum_start(f, acc32, base[0]);
  float a32 = static_cast<float>(a);
  const int depth = f.depth;
  const int leaves_per_tree = 1 << depth, first_leaf = leaves_per_tree - 1;
  const int tile_nodes = leaves_per_tree * kW;  // Node8 per tile, and values per tile
  const uint32_t q0 = static_cast<uint32_t>(cv.rows) + static_cast<uint32_t>(lane) * 8;
  const uint32_t step = static_cast<uint32_t>((kW - lane) * 8) - static_cast<uint32_t>(cv.rows);
  constexpr uint32_t kRightChild = kW * 8;
  const int64_t n_trees = f.n_trees;
  for (int64_t c0 = 0; c0 < n_trees; c0 += kW) {
    const int n = n_trees - c0 < kW ? static_cast<int>(n_trees - c0) : kW;
    const int64_t tile = c0 / kW;
    PYZERO_SYNC();  // the rows are staged; every warp is done with the previous tile
    const auto* src = reinterpret_cast<const trees::NodePair*>(f.nodes) + tile * (tile_nodes / 2);
    auto* dst = reinterpret_cast<trees::NodePair*>(tn);
    for (int i = tid; i < tile_nodes / 2; i += nt) dst[i] = src[i];
    const int64_t v0 = tile * tile_nodes;
    for (int i = tid; !want_leaves && i < tile_nodes; i += nt) {
      if (acc32) {
        reinterpret_cast<float*>(tv)[i] =
            f.values32 != nullptr ? f.values32[v0 + i] : static_cast<float>(f.values[v0 + i]);
      } else {
        reinterpret_cast<double*>(tv)[i] = trees::leaf_value(f, v0 + i);
      }
    }
    PYZERO_SYNC();
    for (int j0 = 0; j0 < kW; j0 += ILP) {  // lane l walks tree c0 + l for rows j0 .. j0 + ILP - 1
      // q: byte offset in shared memory of node i of tree `lane`, tn_off + (i * 32 + lane) * 8; its left
      // child 2i + 1 is at 2q + step, its right child 256 bytes further (32-bit arithmetic, mod 2^32).
      uint32_t q[ILP];
      const float* xr[ILP];
      PYZERO_UNROLL
      for (int k = 0; k < ILP; ++k) {
        q[k] = q0;
        xr[k] = xs + (warp * kW + j0 + k) * xstride;
      }
      for (int d = 0; d < depth; ++d) {
        PYZERO_UNROLL
        for (int k = 0; k < ILP; ++k) {
          const trees::Node8 nd = *reinterpret_cast<const trees::Node8*>(smem + q[k]);
          const float v = xr[k][nd.word0 < last ? nd.word0 : last];
          q[k] = 2 * q[k] + step + (v <= trees::bits_to_float(nd.word1) ? 0u : kRightChild);
        }
      }
      PYZERO_UNROLL
      for (int k = 0; k < ILP; ++k) {
        const int j = static_cast<int>((q[k] - q0) / 8 / kW) - first_leaf;
        if (want_leaves) {
          const int64_t r = r0 + warp * kW + j0 + k;
          if (lane < n && r < rows)
            leaves[r * n_trees + c0 + lane] = f.leaf_nodes[((c0 + lane) << depth) + j];
        } else if (acc32) {
          buf32[(j0 + k) * kTileBufPitch + lane] = reinterpret_cast<const float*>(tv)[j * kW + lane];
        } else {
          buf64[(j0 + k) * kTileBufPitch + lane] = reinterpret_cast<const double*>(tv)[j * kW + lane];
        }
      }
    }
    if (want_leaves) continue;
    PYZERO_SYNC_WARP();  // the warp's values are in its buffer: lane l adds row l's in tree order
    if (acc32) {
      const float* vals = buf32 + lane * kTileBufPitch;
      PYZERO_UNROLL8
      for (int t = 0; t < n; ++t) a32 += vals[t];
    } else {
      const double* vals = buf64 + lane * kTileBufPitch;
      PYZERO_UNROLL8
      for (int t = 0; t < n; ++t) a += vals[t];
    }
  }
  if (!want_leaves && my_row < rows) trees::store_output(f, acc32, base, raw, my_row, 0, acc32 ? a32 : a);
}

}  // namespace detail

// One layout's launches with launcher L (L.launch(kernel, blocks, threads, shared bytes, args...)).
template <typename Launcher, typename T, typename Walker>
void launch_walk(const Launcher& L, const WalkForest& f, const T* x, int64_t rows, const double* base,
                 bool acc32, double* raw, int32_t* leaves, WalkLaunch cfg, bool stage, int64_t smem) {
  const int R = cfg.threads / cfg.lanes;
  const int64_t blocks = (rows + R - 1) / R;
  auto go = [&](auto kernel) {
    L.launch(kernel, blocks, cfg.threads, smem, f, x, rows, base, acc32, raw, leaves, R, stage,
             cfg.tree_chunk);
  };
  auto by_ilp = [&](auto nout) {
    constexpr int N = decltype(nout)::value;
    if (cfg.ilp == 1) {
      go(detail::walk_kernel<T, Walker, 1, N>);
    } else if (cfg.ilp == 2) {
      go(detail::walk_kernel<T, Walker, 2, N>);
    } else {
      go(detail::walk_kernel<T, Walker, 4, N>);
    }
  };
  if (leaves != nullptr || f.n_outputs > 2) {
    by_ilp(std::integral_constant<int, 0>{});
  } else if (f.n_outputs == 1) {
    by_ilp(std::integral_constant<int, 1>{});
  } else {
    by_ilp(std::integral_constant<int, 2>{});
  }
}

// Note [Tiled walk]'s launch: a block per `threads` rows.
template <typename Launcher>
void launch_tiled(const Launcher& L, const WalkForest& f, const float* x, int64_t rows, const double* base,
                  bool acc32, double* raw, int32_t* leaves, WalkLaunch cfg, int64_t smem) {
  const int64_t blocks = (rows + cfg.threads - 1) / cfg.threads;
  auto go = [&](auto kernel) {
    L.launch(kernel, blocks, cfg.threads, smem, f, x, rows, base, acc32, raw, leaves);
  };
  if (cfg.ilp == 1) {
    go(detail::tile_kernel<1>);
  } else if (cfg.ilp == 2) {
    go(detail::tile_kernel<2>);
  } else {
    go(detail::tile_kernel<4>);
  }
}

// Checks the configuration and launches the forest's layout: false when the configuration or the
// input type does not fit (nothing launched).
template <typename Launcher, typename T>
bool walk_layouts(const Launcher& L, const WalkForest& f, const T* x, int64_t rows, const double* base,
                  bool acc32, double* raw, int32_t* leaves, WalkLaunch cfg) {
  if (!valid_launch(cfg) || (cfg.tree_chunk > 0 && !trees::is_chunkable_format(f.format)) ||
      (cfg.tiled && f.format != trees::kPerfectTiled)) {
    return false;
  }
  if (cfg.tree_chunk > f.n_trees) cfg.tree_chunk = static_cast<int>(f.n_trees);  // no room for absent trees
  if (rows == 0 || (leaves != nullptr && f.n_trees == 0)) return true;
  bool stage = false;
  const int64_t smem = tree_walk_shared_bytes(f, sizeof(T), leaves != nullptr, acc32, cfg, &stage);
  if (smem < 0) return false;
  switch (f.format) {
    case trees::kPerfect:
      if constexpr (std::is_same_v<T, float>) {
        launch_walk<Launcher, T, trees::PerfectWalker>(L, f, x, rows, base, acc32, raw, leaves, cfg, stage,
                                                       smem);
        return true;
      }
      return false;  // the perfect layouts compare float32 inputs only
    case trees::kPerfectBlocked:
      if constexpr (std::is_same_v<T, float>) {
        launch_walk<Launcher, T, trees::PerfectBlockedWalker>(L, f, x, rows, base, acc32, raw, leaves, cfg,
                                                              stage, smem);
        return true;
      }
      return false;
    case trees::kPerfectTiled:
      if constexpr (std::is_same_v<T, float>) {
        if (cfg.tiled) {
          launch_tiled(L, f, x, rows, base, acc32, raw, leaves, cfg, smem);
        } else {
          launch_walk<Launcher, T, trees::TiledWalker>(L, f, x, rows, base, acc32, raw, leaves, cfg, stage,
                                                       smem);
        }
        return true;
      }
      return false;
    case trees::kCompact:
      launch_walk<Launcher, T, trees::CompactWalker>(L, f, x, rows, base, acc32, raw, leaves, cfg, stage,
                                                     smem);
      return true;
    case trees::kWide:
      launch_walk<Launcher, T, trees::WideWalker>(L, f, x, rows, base, acc32, raw, leaves, cfg, stage, smem);
      return true;
    default: return false;
  }
}

#if defined(__CUDACC__)
struct CudaLauncher {
  cudaStream_t stream;
  template <typename... P, typename... A>
  void launch(void (*kernel)(P...), int64_t blocks, int threads, int64_t smem, A... args) const {
    if (smem > kTreeMaxSharedBytes) {  // tiles or big staged rows: opt in (an error fails the launch below)
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess) {
        return;
      }
    }
    kernel<<<static_cast<unsigned int>(blocks), threads, static_cast<size_t>(smem), stream>>>(args...);
  }
};

#define PYZERO_WALK_TEMPLATE(PREFIX, T, WALKER)                                                              \
  PREFIX template void launch_walk<CudaLauncher, T, WALKER>(const CudaLauncher&, const WalkForest&,          \
                                                            const T*, int64_t, const double*, bool, double*, \
                                                            int32_t*, WalkLaunch, bool, int64_t);
#define PYZERO_TILED_TEMPLATE(PREFIX)                                                                   \
  PREFIX template void launch_tiled<CudaLauncher>(const CudaLauncher&, const WalkForest&, const float*, \
                                                  int64_t, const double*, bool, double*, int32_t*,      \
                                                  WalkLaunch, int64_t);
#endif

}  // namespace pyzero::cuda
