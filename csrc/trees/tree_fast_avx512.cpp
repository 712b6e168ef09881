// AVX-512 (F) kernels of the perfect-tree predictor (Note [Perfect trees] in tree_fast.h): 16 rows per
// vector walk one tree level by level. Standard headers come before the target pragma so no library
// code is compiled for AVX-512 here.
#include <cstdint>

#include "tree_fast.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

namespace pyzero::trees {
namespace {

constexpr int64_t kW = 16;
// Gathers dominate: on this Zen-class EPYC a 16-lane vgatherdps costs ~5.5 ns (throughput, L1 data) and
// ~10 ns latency (microbenchmarks), so the kernel overlaps independent gathers and avoids them where it
// can. Tuning below: single-thread M rows/s, 100 XGBoost trees depth 8, 28 features, 10k rows, CPU time
// (thread_time) medians on the shared 2-core machine, +-5% noise.
//
// Row vectors walking the same tree together, so their independent gathers overlap:
// 1 -> 1.3, 2 -> 2.3, 4 -> 3.1, 8 -> 2.4 (register spills).
constexpr int kGroups = 4;
// The first kTopLevels levels are evaluated node by node: a node's test on every row of the group is one
// contiguous load of the transposed block and two compares, and masks route the lanes, so no gather and
// no load waits on an earlier level. Cost grows as 2^k per level: 0 -> 2.96, 2 -> 3.40, 3 -> 3.33,
// 4 -> 3.10.
constexpr int kTopLevels = 2;
// Deeper levels pick their node's fields with permutes (and blends on the high bits of the slot) up to
// level kPermuteLevels (2^k nodes: 2^(k-5) two-register permutes), and gather after that:
// 5 -> 3.0..3.2, 6 -> 3.23, 7 -> 2.8. (Emulating the x gather with 16 scalar loads through the stack,
// ~1.5x faster in isolation, measured 2.4: its store-forwarding latency sits on the level chain.)
constexpr int32_t kPermuteLevels = 5;

inline __m512i lanes() {
  return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// Field of node j (per lane) of a level of 2^k nodes stored at nodes[0, 2^k) (read 16 at least; the node
// stride >= 64 keeps that inside the tree).
inline __m512i pick(const int32_t* nodes, int32_t k, __m512i j) {
  if (k <= 4) return _mm512_permutexvar_epi32(j, _mm512_loadu_si512(nodes));
  __m512i r[1 << (kPermuteLevels - 5)];
  int pairs = 1 << (k - 5);
  for (int p = 0; p < pairs; ++p) {
    r[p] = _mm512_permutex2var_epi32(_mm512_loadu_si512(nodes + 32 * p), j,
                                     _mm512_loadu_si512(nodes + 32 * p + 16));
  }
  for (int b = 5; pairs > 1; ++b, pairs >>= 1) {
    const __mmask16 hi = _mm512_test_epi32_mask(j, _mm512_set1_epi32(1 << b));
    for (int q = 0; q < pairs / 2; ++q) r[q] = _mm512_mask_blend_epi32(hi, r[2 * q], r[2 * q + 1]);
  }
  return r[0];
}

// Lanes that go right at a node with fields m, t for the values v (Note [Perfect trees]): not (v <= t),
// which holds for a NaN threshold too, except NaN values of a default-left node.
inline __mmask16 go_right(__m512 v, __m512 t, __m512i m) {
  const __mmask16 dl = _mm512_cmplt_epi32_mask(m, _mm512_setzero_si512());
  const __mmask16 nan_left = _mm512_mask_cmp_ps_mask(dl, v, v, _CMP_UNORD_Q);
  return _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(~nan_left), v, t, _CMP_NLE_UQ);
}

// j[g] <- leaf slots reached in one tree by the 16 rows at xg + g * 16 of the transposed block (feature c
// of the group's row l at xg[(c << shift) + g * 16 + l]).
template <int TOP, int NG>
inline void walk(const int32_t* meta, const float* thr, int32_t depth, const float* xg, int shift,
                 uint32_t max_feature, __m512i* j) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i fmask = _mm512_set1_epi32(static_cast<int32_t>(kMetaFeatureMask));
  const __m512i fmax = _mm512_set1_epi32(static_cast<int32_t>(max_feature));
  const __m128i sh = _mm_cvtsi32_si128(shift);
  // Top levels: at[g][n] = lanes of group g at node n of the current level.
  __mmask16 at[NG][1 << TOP];
  for (int g = 0; g < NG; ++g) {
    j[g] = _mm512_setzero_si512();
    at[g][0] = 0xffff;
  }
#pragma GCC unroll 4
  for (int k = 0; k < TOP; ++k) {
    __mmask16 next[NG][1 << TOP];
    __mmask16 right_any[NG];
    for (int g = 0; g < NG; ++g) right_any[g] = 0;
#pragma GCC unroll 8
    for (int n = 0; n < (1 << k); ++n) {
      const int node = (1 << k) - 1 + n;
      const uint32_t m = static_cast<uint32_t>(meta[node]);
      const uint32_t c = (m & kMetaFeatureMask) < max_feature ? (m & kMetaFeatureMask) : max_feature;
      const float* col = xg + (static_cast<int64_t>(c) << shift);
      const __m512 t = _mm512_set1_ps(thr[node]);
      const __mmask16 dl = (m >> 31) ? 0xffff : 0;
      for (int g = 0; g < NG; ++g) {
        const __m512 v = _mm512_loadu_ps(col + g * kW);
        const __mmask16 nan_left = _mm512_mask_cmp_ps_mask(dl, v, v, _CMP_UNORD_Q);
        const __mmask16 right = _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(~nan_left), v, t, _CMP_NLE_UQ);
        const __mmask16 r = static_cast<__mmask16>(at[g][n] & right);
        next[g][2 * n] = static_cast<__mmask16>(at[g][n] & ~right);
        next[g][2 * n + 1] = r;
        right_any[g] = static_cast<__mmask16>(right_any[g] | r);
      }
    }
    for (int g = 0; g < NG; ++g) {
      for (int n = 0; n < (2 << k); ++n) at[g][n] = next[g][n];
      const __m512i j2 = _mm512_add_epi32(j[g], j[g]);
      j[g] = _mm512_mask_add_epi32(j2, right_any[g], j2, one);
    }
  }
  const __m512i lane = lanes();
  for (int32_t k = TOP; k < depth; ++k) {
    const int64_t off = (int64_t{1} << k) - 1;
    const int32_t* mk = meta + off;
    const float* tk = thr + off;
    __m512i m[NG];
    __m512 t[NG];
    if (k <= kPermuteLevels) {
      for (int g = 0; g < NG; ++g) {
        m[g] = pick(mk, k, j[g]);
        t[g] = _mm512_castsi512_ps(pick(reinterpret_cast<const int32_t*>(tk), k, j[g]));
      }
    } else {
      for (int g = 0; g < NG; ++g) {
        m[g] = _mm512_i32gather_epi32(j[g], mk, 4);
        t[g] = _mm512_i32gather_ps(j[g], tk, 4);
      }
    }
    for (int g = 0; g < NG; ++g) {
      const __m512i feat = _mm512_min_epu32(_mm512_and_si512(m[g], fmask), fmax);
      const __m512 v =
          _mm512_i32gather_ps(_mm512_add_epi32(_mm512_sll_epi32(feat, sh), lane), xg + g * kW, 4);
      const __m512i j2 = _mm512_add_epi32(j[g], j[g]);
      j[g] = _mm512_mask_add_epi32(j2, go_right(v, t[g], m[g]), j2, one);
    }
  }
}

inline void add_leaf(const float* vt, int64_t outs, __m512i j, float* acc, int64_t acc_ld) {
  if (outs == 1) {
    _mm512_storeu_ps(acc, _mm512_add_ps(_mm512_loadu_ps(acc), _mm512_i32gather_ps(j, vt, 4)));
    return;
  }
  const __m512i jo = _mm512_mullo_epi32(j, _mm512_set1_epi32(static_cast<int32_t>(outs)));
  for (int64_t o = 0; o < outs; ++o) {
    float* a = acc + o * acc_ld;
    _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_i32gather_ps(jo, vt + o, 4)));
  }
}

inline void add_leaf(const double* vt, int64_t outs, __m512i j, double* acc, int64_t acc_ld) {
  const __m512i jo = outs == 1 ? j : _mm512_mullo_epi32(j, _mm512_set1_epi32(static_cast<int32_t>(outs)));
  const __m256i lo = _mm512_castsi512_si256(jo);
  const __m256i hi = _mm512_extracti64x4_epi64(jo, 1);
  for (int64_t o = 0; o < outs; ++o) {
    double* a = acc + o * acc_ld;
    _mm512_storeu_pd(a, _mm512_add_pd(_mm512_loadu_pd(a), _mm512_i32gather_pd(lo, vt + o, 8)));
    _mm512_storeu_pd(a + 8, _mm512_add_pd(_mm512_loadu_pd(a + 8), _mm512_i32gather_pd(hi, vt + o, 8)));
  }
}

// Calls body(t, r, j) for every tree t in order and every group of rows r.. r + NG*16 of it, j[] holding
// the leaf slots of the NG groups.
template <int TOP, typename Body>
inline void for_trees(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                      Body&& body) {
  const uint32_t max_feature = static_cast<uint32_t>(n_features - 1);
  for (int64_t t = 0; t < f.n_trees; ++t) {
    const int32_t* meta = f.meta + t * f.node_stride;
    const float* thr = f.threshold + t * f.node_stride;
    int64_t r = 0;
    for (; r + kGroups * kW <= rows; r += kGroups * kW) {
      __m512i j[kGroups];
      walk<TOP, kGroups>(meta, thr, f.depth, xt + r, shift, max_feature, j);
      for (int g = 0; g < kGroups; ++g) body(t, r + g * kW, j[g]);
    }
    for (; r < rows; r += kW) {
      __m512i j[1];
      walk<TOP, 1>(meta, thr, f.depth, xt + r, shift, max_feature, j);
      body(t, r, j[0]);
    }
  }
}

template <typename Body>
inline void for_trees_any(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                          Body&& body) {
  switch (f.depth < kTopLevels ? f.depth : kTopLevels) {
    case 0: return for_trees<0>(f, xt, shift, n_features, rows, body);
    case 1: return for_trees<1>(f, xt, shift, n_features, rows, body);
    case 2: return for_trees<2>(f, xt, shift, n_features, rows, body);
    case 3: return for_trees<3>(f, xt, shift, n_features, rows, body);
    default: return for_trees<kTopLevels>(f, xt, shift, n_features, rows, body);
  }
}

void raw_rows(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
              bool float32_accum, void* acc, int64_t acc_ld) {
  const int64_t tree_values = (int64_t{1} << f.depth) * f.n_outputs;
  with_accumulator(f, float32_accum, acc, [&](const auto* values, auto* a) {
    for_trees_any(f, xt, shift, n_features, rows, [&](int64_t t, int64_t r, __m512i j) {
      add_leaf(values + t * tree_values, f.n_outputs, j, a + r, acc_ld);
    });
  });
}

void leaves_rows(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                 int32_t* out) {
  const __m512i outoff = _mm512_mullo_epi32(lanes(), _mm512_set1_epi32(static_cast<int32_t>(f.n_trees)));
  for_trees_any(f, xt, shift, n_features, rows, [&](int64_t t, int64_t r, __m512i j) {
    const __m512i ids = _mm512_i32gather_epi32(j, f.leaf_nodes + (t << f.depth), 4);
    _mm512_i32scatter_epi32(out + r * f.n_trees + t, outoff, ids, 4);
  });
}

// One row, 16 trees per vector: lane l walks tree t0 + l (lanes past the last tree walk tree 0 and are
// not stored).
void row_trees(const PerfectView& f, const float* row, int shift, int64_t n_features, bool float32_accum,
               void* per_tree, int32_t* leaf_out) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i fmask = _mm512_set1_epi32(static_cast<int32_t>(kMetaFeatureMask));
  const __m512i fmax = _mm512_set1_epi32(static_cast<int32_t>(n_features - 1));
  const __m512i stride = _mm512_set1_epi32(static_cast<int32_t>(f.node_stride));
  const __m128i sh = _mm_cvtsi32_si128(shift);
  const int64_t outs = f.n_outputs;
  const __m512i outsv = _mm512_set1_epi32(static_cast<int32_t>(outs));
  const __m512i first_leaf = _mm512_set1_epi32((1 << f.depth) - 1);
  for (int64_t t0 = 0; t0 < f.n_trees; t0 += kW) {
    const int64_t n = f.n_trees - t0 < kW ? f.n_trees - t0 : kW;
    const __mmask16 live = static_cast<__mmask16>((1u << n) - 1);
    const __m512i tree = _mm512_maskz_add_epi32(live, lanes(), _mm512_set1_epi32(static_cast<int32_t>(t0)));
    const __m512i base = _mm512_mullo_epi32(tree, stride);
    __m512i i = _mm512_setzero_si512();
    for (int32_t k = 0; k < f.depth; ++k) {
      const __m512i idx = _mm512_add_epi32(base, i);
      const __m512i m = _mm512_i32gather_epi32(idx, f.meta, 4);
      const __m512 t = _mm512_i32gather_ps(idx, f.threshold, 4);
      const __m512i feat = _mm512_min_epu32(_mm512_and_si512(m, fmask), fmax);
      const __m512 v = _mm512_i32gather_ps(_mm512_sll_epi32(feat, sh), row, 4);
      const __m512i i2 = _mm512_add_epi32(_mm512_add_epi32(i, i), one);
      i = _mm512_mask_add_epi32(i2, go_right(v, t, m), i2, one);
    }
    const __m512i slot = _mm512_add_epi32(_mm512_slli_epi32(tree, static_cast<unsigned>(f.depth)),
                                          _mm512_sub_epi32(i, first_leaf));
    if (leaf_out != nullptr) {
      _mm512_mask_storeu_epi32(leaf_out + t0, live, _mm512_i32gather_epi32(slot, f.leaf_nodes, 4));
      continue;
    }
    const __m512i so = _mm512_mullo_epi32(slot, outsv);
    const __m512i dst = _mm512_mullo_epi32(lanes(), outsv);
    for (int64_t o = 0; o < outs; ++o) {
      if (float32_accum) {
        const __m512 v = _mm512_i32gather_ps(so, f.values32 + o, 4);
        _mm512_mask_i32scatter_ps(static_cast<float*>(per_tree) + t0 * outs + o, live, dst, v, 4);
      } else {
        double* p = static_cast<double*>(per_tree) + t0 * outs + o;
        const __m512d lo = _mm512_i32gather_pd(_mm512_castsi512_si256(so), f.values + o, 8);
        const __m512d hi = _mm512_i32gather_pd(_mm512_extracti64x4_epi64(so, 1), f.values + o, 8);
        _mm512_mask_i32scatter_pd(p, static_cast<__mmask8>(live), _mm512_castsi512_si256(dst), lo, 8);
        _mm512_mask_i32scatter_pd(p, static_cast<__mmask8>(live >> 8), _mm512_extracti64x4_epi64(dst, 1), hi,
                                  8);
      }
    }
  }
}

}  // namespace

PerfectKernels perfect_kernels_avx512() {
  return {kW, raw_rows, leaves_rows, row_trees};
}

}  // namespace pyzero::trees

#pragma GCC pop_options
