// The CUDA tree kernel of Note [GPU tree kernel] (tree_cuda.h) as a template; tree_cuda_<layout>.cu
// instantiate it, one translation unit per layout.
#pragma once

#include <type_traits>

#include "tree_cuda.h"

namespace pyzero::cuda {

using trees::WalkForest;

namespace detail {

__host__ __device__ constexpr int64_t round_up(int64_t n, int64_t to) {
  return (n + to - 1) / to * to;
}

// Shared memory carve-up of one block: accumulators [R * outputs] (double), the chunk buffer (lanes > 1:
// double [R * chunk] leaf values for one output, else int32 [R * chunk] value rows), staged rows [R * nf].
struct Carve {
  int64_t acc, buf, rows, total;
};

__host__ __device__ inline Carve carve(const WalkForest& f, int64_t item, bool leaves, int r, int lanes,
                                       int ilp, bool stage) {
  Carve c{};
  c.acc = leaves ? 0 : round_up(r * f.n_outputs * 8, 16);
  const int64_t chunk = static_cast<int64_t>(lanes) * ilp;
  c.buf = (leaves || lanes == 1) ? 0 : round_up(r * chunk * (f.n_outputs == 1 ? 8 : 4), 16);
  c.rows = stage ? round_up(r * f.n_features * item, 16) : 0;
  c.total = c.acc + c.buf + c.rows;
  return c;
}

// NOUT: the output count when it is 1 or 2 (accumulators in registers), 0 for any other count.
template <typename T, typename Walker, int ILP, int NOUT>
__global__ void __launch_bounds__(kTreeMaxThreads)
    walk_kernel(WalkForest f, const T* x, int64_t rows, const double* base, bool acc32, double* raw,
                int32_t* leaves, int r_per_block, bool stage) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Walker w{f};
  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const int R = r_per_block;
  const int lanes = nt / R;
  const int rl = tid % R;
  const int lane = tid / R;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * R;
  const int64_t r = r0 + rl;
  const bool active = r < rows;
  const int64_t nf = f.n_features, outs = f.n_outputs, n_trees = f.n_trees;
  const bool want_leaves = leaves != nullptr;
  const Carve cv = carve(f, sizeof(T), want_leaves, R, lanes, ILP, stage);
  double* acc_s = reinterpret_cast<double*>(smem);
  unsigned char* buf = smem + cv.acc;
  T* xs = reinterpret_cast<T*>(smem + cv.acc + cv.buf);

  if (stage) {
    const int64_t n = static_cast<int64_t>(R) * nf;
    for (int64_t i = tid; i < n; i += nt) {
      const int64_t rr = r0 + i / nf;
      T v = rr < rows ? x[rr * nf + i % nf] : T(0);
      xs[i] = trees::prepare_value(f, v, i % nf);
    }
  }
  if (!want_leaves) {
    for (int64_t i = tid; i < R * outs; i += nt) {
      const double b = base[i % outs];
      acc_s[i] = acc32 ? static_cast<double>(static_cast<float>(b)) : b;
    }
  }
  __syncthreads();
  const T* xrow = stage ? xs + rl * nf : x + (active ? r : r0) * nf;
  auto row = [&](int64_t c) -> T { return stage ? xrow[c] : trees::prepare_value(f, xrow[c], c); };
  int64_t vr[ILP];

  if (lanes == 1) {  // a thread per row, every tree in order
    if (!active) return;
    constexpr int kRegs = NOUT > 0 ? NOUT : 1;
    double a[kRegs];
    float a32[kRegs];
    PYZERO_UNROLL
    for (int o = 0; o < kRegs; ++o) {
      a[o] = (!want_leaves && NOUT > 0) ? acc_s[rl * NOUT + o] : 0.0;
      a32[o] = static_cast<float>(a[o]);
    }
    for (int64_t t0 = 0; t0 < n_trees; t0 += ILP) {
      const int64_t count = n_trees - t0 < ILP ? n_trees - t0 : ILP;
      w.template walk<ILP>(t0, count, row, vr);
      PYZERO_UNROLL
      for (int k = 0; k < ILP; ++k) {
        if (k >= count) break;
        if (want_leaves) {
          leaves[r * n_trees + t0 + k] = w.leaf_id(vr[k]);
        } else if constexpr (NOUT > 0) {
          PYZERO_UNROLL
          for (int o = 0; o < NOUT; ++o) {
            const double v = f.values[vr[k] * NOUT + o];
            if (acc32) {
              a32[o] += static_cast<float>(v);
            } else {
              a[o] += v;
            }
          }
        } else {
          for (int64_t o = 0; o < outs; ++o) {
            const double v = f.values[vr[k] * outs + o];
            double& s = acc_s[rl * outs + o];
            s = acc32 ? static_cast<double>(static_cast<float>(s) + static_cast<float>(v)) : s + v;
          }
        }
      }
    }
    if (want_leaves) return;
    if constexpr (NOUT > 0) {
      PYZERO_UNROLL
      for (int o = 0; o < NOUT; ++o) raw[r * NOUT + o] = acc32 ? static_cast<double>(a32[o]) : a[o];
    } else {
      for (int64_t o = 0; o < outs; ++o) raw[r * outs + o] = acc_s[rl * outs + o];
    }
    return;
  }

  // lanes > 1: chunks of lanes * ILP trees, summed in tree order per (row, output)
  const int64_t chunk = static_cast<int64_t>(lanes) * ILP;
  double* vbuf = reinterpret_cast<double*>(buf);
  int32_t* ibuf = reinterpret_cast<int32_t*>(buf);
  for (int64_t c0 = 0; c0 < n_trees; c0 += chunk) {
    const int64_t t0 = c0 + static_cast<int64_t>(lane) * ILP;
    const int64_t count = n_trees - t0 < ILP ? n_trees - t0 : ILP;
    if (active && count > 0) {
      w.template walk<ILP>(t0, count, row, vr);
#pragma unroll
      for (int k = 0; k < ILP; ++k) {
        if (k >= count) break;
        if (want_leaves) {
          leaves[r * n_trees + t0 + k] = w.leaf_id(vr[k]);
        } else if (outs == 1) {
          vbuf[rl * chunk + lane * ILP + k] = f.values[vr[k]];
        } else {
          ibuf[rl * chunk + lane * ILP + k] = static_cast<int32_t>(vr[k]);
        }
      }
    }
    if (want_leaves) continue;
    __syncthreads();
    const int64_t in_chunk = n_trees - c0 < chunk ? n_trees - c0 : chunk;
    for (int64_t i = tid; i < R * outs; i += nt) {
      const int64_t rr = i / outs;
      if (r0 + rr >= rows) continue;
      const int64_t o = i % outs;
      double s = acc_s[i];
      if (acc32) {
        float s32 = static_cast<float>(s);
        if (outs == 1) {
          PYZERO_UNROLL8
          for (int64_t j = 0; j < in_chunk; ++j) s32 += static_cast<float>(vbuf[rr * chunk + j]);
        } else {
          for (int64_t j = 0; j < in_chunk; ++j)
            s32 += static_cast<float>(f.values[static_cast<int64_t>(ibuf[rr * chunk + j]) * outs + o]);
        }
        s = s32;
      } else if (outs == 1) {
        PYZERO_UNROLL8
        for (int64_t j = 0; j < in_chunk; ++j) s += vbuf[rr * chunk + j];
      } else {
        for (int64_t j = 0; j < in_chunk; ++j)
          s += f.values[static_cast<int64_t>(ibuf[rr * chunk + j]) * outs + o];
      }
      acc_s[i] = s;
    }
    __syncthreads();
  }
  if (want_leaves) return;
  for (int64_t i = tid; i < R * outs; i += nt) {
    if (r0 + i / outs < rows) raw[r0 * outs + i] = acc_s[i];
  }
}

template <typename T, typename Walker, int NOUT>
void launch_ilp(const WalkForest& f, const T* x, int64_t rows, const double* base, bool acc32, double* raw,
                int32_t* leaves, WalkLaunch cfg, bool stage, int64_t smem, cudaStream_t stream) {
  const int R = cfg.threads / cfg.lanes;
  const auto blocks = static_cast<unsigned int>((rows + R - 1) / R);
  if (cfg.ilp == 1) {
    walk_kernel<T, Walker, 1, NOUT>
        <<<blocks, cfg.threads, smem, stream>>>(f, x, rows, base, acc32, raw, leaves, R, stage);
  } else if (cfg.ilp == 2) {
    walk_kernel<T, Walker, 2, NOUT>
        <<<blocks, cfg.threads, smem, stream>>>(f, x, rows, base, acc32, raw, leaves, R, stage);
  } else {
    walk_kernel<T, Walker, 4, NOUT>
        <<<blocks, cfg.threads, smem, stream>>>(f, x, rows, base, acc32, raw, leaves, R, stage);
  }
}

}  // namespace detail

// One layout's launches (a translation unit per layout, so they compile in parallel).
template <typename T, typename Walker>
cudaError_t launch_walk(const WalkForest& f, const T* x, int64_t rows, const double* base, bool acc32,
                        double* raw, int32_t* leaves, WalkLaunch cfg, bool stage, int64_t smem,
                        cudaStream_t stream) {
  if (leaves != nullptr || f.n_outputs > 2) {
    detail::launch_ilp<T, Walker, 0>(f, x, rows, base, acc32, raw, leaves, cfg, stage, smem, stream);
  } else if (f.n_outputs == 1) {
    detail::launch_ilp<T, Walker, 1>(f, x, rows, base, acc32, raw, leaves, cfg, stage, smem, stream);
  } else {
    detail::launch_ilp<T, Walker, 2>(f, x, rows, base, acc32, raw, leaves, cfg, stage, smem, stream);
  }
  return cudaGetLastError();
}

#define PYZERO_INSTANTIATE_WALK(T, WALKER)                                                                \
  template cudaError_t launch_walk<T, WALKER>(const trees::WalkForest&, const T*, int64_t, const double*, \
                                              bool, double*, int32_t*, WalkLaunch, bool, int64_t,         \
                                              cudaStream_t);

}  // namespace pyzero::cuda
