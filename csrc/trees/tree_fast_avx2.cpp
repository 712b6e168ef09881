// AVX2 kernels of the perfect-tree predictor (Note [Perfect trees] in tree_fast.h): 8 rows per vector
// walk one tree level by level. Standard headers come before the target pragma so no library code is
// compiled for AVX2 here.
#include <cstdint>

#include "tree_fast.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace pyzero::trees {
namespace {

constexpr int64_t kW = 8;
// Row vectors walking the same tree together, so their independent gathers overlap (as in AVX-512).
constexpr int kGroups = 4;
// Levels 0..3 (at most 8 nodes) pick their nodes with one permute; deeper levels gather.
constexpr int32_t kPermuteLevels = 3;

inline __m256i lanes() {
  return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
}

// All ones in the lanes that go left (Note [Perfect trees]).
inline __m256i go_left(__m256 v, __m256 t, __m256i m) {
  const __m256 le = _mm256_cmp_ps(v, t, _CMP_LE_OQ);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m256 dl = _mm256_castsi256_ps(_mm256_srai_epi32(m, 31));
  return _mm256_castps_si256(_mm256_or_ps(le, _mm256_and_ps(nan, dl)));
}

template <int NG>
inline void walk(const int32_t* meta, const float* thr, int32_t depth, const float* xg, __m128i sh,
                 __m256i fmax, __m256i* j) {
  const __m256i lane = lanes();
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i fmask = _mm256_set1_epi32(static_cast<int32_t>(kMetaFeatureMask));
  for (int g = 0; g < NG; ++g) j[g] = _mm256_setzero_si256();
  for (int32_t k = 0; k < depth; ++k) {
    const int64_t off = (int64_t{1} << k) - 1;
    __m256i m[NG];
    __m256 t[NG];
    if (k <= kPermuteLevels) {
      const __m256i mv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(meta + off));
      const __m256 tv = _mm256_loadu_ps(thr + off);
      for (int g = 0; g < NG; ++g) {
        m[g] = _mm256_permutevar8x32_epi32(mv, j[g]);
        t[g] = _mm256_permutevar8x32_ps(tv, j[g]);
      }
    } else {
      for (int g = 0; g < NG; ++g) {
        m[g] = _mm256_i32gather_epi32(meta + off, j[g], 4);
        t[g] = _mm256_i32gather_ps(thr + off, j[g], 4);
      }
    }
    for (int g = 0; g < NG; ++g) {
      const __m256i feat = _mm256_min_epu32(_mm256_and_si256(m[g], fmask), fmax);
      const __m256 v =
          _mm256_i32gather_ps(xg + g * kW, _mm256_add_epi32(_mm256_sll_epi32(feat, sh), lane), 4);
      const __m256i left = go_left(v, t[g], m[g]);
      j[g] = _mm256_add_epi32(_mm256_add_epi32(j[g], j[g]), _mm256_andnot_si256(left, one));
    }
  }
}

inline void add_leaf(const float* vt, int64_t outs, __m256i j, float* acc, int64_t acc_ld) {
  const __m256i jo = outs == 1 ? j : _mm256_mullo_epi32(j, _mm256_set1_epi32(static_cast<int32_t>(outs)));
  for (int64_t o = 0; o < outs; ++o) {
    float* a = acc + o * acc_ld;
    _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_i32gather_ps(vt + o, jo, 4)));
  }
}

inline void add_leaf(const double* vt, int64_t outs, __m256i j, double* acc, int64_t acc_ld) {
  const __m256i jo = outs == 1 ? j : _mm256_mullo_epi32(j, _mm256_set1_epi32(static_cast<int32_t>(outs)));
  const __m128i lo = _mm256_castsi256_si128(jo);
  const __m128i hi = _mm256_extracti128_si256(jo, 1);
  for (int64_t o = 0; o < outs; ++o) {
    double* a = acc + o * acc_ld;
    _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), _mm256_i32gather_pd(vt + o, lo, 8)));
    _mm256_storeu_pd(a + 4, _mm256_add_pd(_mm256_loadu_pd(a + 4), _mm256_i32gather_pd(vt + o, hi, 8)));
  }
}

template <int NG>
inline void walk_rows(const PerfectView& f, int64_t t, const float* xt, int64_t r, __m128i sh, __m256i fmax,
                      __m256i* j) {
  walk<NG>(f.meta + t * f.node_stride, f.threshold + t * f.node_stride, f.depth, xt + r, sh, fmax, j);
}

template <typename Acc>
void raw_rows_t(const PerfectView& f, const Acc* values, const float* xt, int shift, int64_t n_features,
                int64_t rows, Acc* acc, int64_t acc_ld) {
  const __m128i sh = _mm_cvtsi32_si128(shift);
  const __m256i fmax = _mm256_set1_epi32(static_cast<int32_t>(n_features - 1));
  const int64_t tree_values = (int64_t{1} << f.depth) * f.n_outputs;
  for (int64_t t = 0; t < f.n_trees; ++t) {
    const Acc* vt = values + t * tree_values;
    int64_t r = 0;
    for (; r + kGroups * kW <= rows; r += kGroups * kW) {
      __m256i j[kGroups];
      walk_rows<kGroups>(f, t, xt, r, sh, fmax, j);
      for (int g = 0; g < kGroups; ++g) add_leaf(vt, f.n_outputs, j[g], acc + r + g * kW, acc_ld);
    }
    for (; r < rows; r += kW) {
      __m256i j[1];
      walk_rows<1>(f, t, xt, r, sh, fmax, j);
      add_leaf(vt, f.n_outputs, j[0], acc + r, acc_ld);
    }
  }
}

void raw_rows(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
              bool float32_accum, void* acc, int64_t acc_ld) {
  with_accumulator(f, float32_accum, acc, [&](const auto* values, auto* a) {
    raw_rows_t(f, values, xt, shift, n_features, rows, a, acc_ld);
  });
}

void leaves_rows(const PerfectView& f, const float* xt, int shift, int64_t n_features, int64_t rows,
                 int32_t* out) {
  const __m128i sh = _mm_cvtsi32_si128(shift);
  const __m256i fmax = _mm256_set1_epi32(static_cast<int32_t>(n_features - 1));
  alignas(32) int32_t ids[kW];
  for (int64_t t = 0; t < f.n_trees; ++t) {
    const int32_t* leaf_nodes = f.leaf_nodes + (t << f.depth);
    for (int64_t r = 0; r < rows; r += kW) {
      __m256i j[1];
      walk_rows<1>(f, t, xt, r, sh, fmax, j);
      _mm256_store_si256(reinterpret_cast<__m256i*>(ids), _mm256_i32gather_epi32(leaf_nodes, j[0], 4));
      for (int64_t l = 0; l < kW; ++l) out[(r + l) * f.n_trees + t] = ids[l];
    }
  }
}

// One row, 8 trees per vector: lane l walks tree t0 + l (lanes past the last tree walk tree 0).
void row_trees(const PerfectView& f, const float* row, int shift, int64_t n_features, bool float32_accum,
               void* per_tree, int32_t* leaf_out) {
  const __m128i sh = _mm_cvtsi32_si128(shift);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i fmask = _mm256_set1_epi32(static_cast<int32_t>(kMetaFeatureMask));
  const __m256i fmax = _mm256_set1_epi32(static_cast<int32_t>(n_features - 1));
  const __m256i stride = _mm256_set1_epi32(static_cast<int32_t>(f.node_stride));
  const __m256i first_leaf = _mm256_set1_epi32((1 << f.depth) - 1);
  const int64_t outs = f.n_outputs;
  alignas(32) int32_t slots[kW];
  for (int64_t t0 = 0; t0 < f.n_trees; t0 += kW) {
    const int64_t n = f.n_trees - t0 < kW ? f.n_trees - t0 : kW;
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), lanes());
    const __m256i tree =
        _mm256_and_si256(live, _mm256_add_epi32(lanes(), _mm256_set1_epi32(static_cast<int32_t>(t0))));
    const __m256i base = _mm256_mullo_epi32(tree, stride);
    __m256i i = _mm256_setzero_si256();
    for (int32_t k = 0; k < f.depth; ++k) {
      const __m256i idx = _mm256_add_epi32(base, i);
      const __m256i m = _mm256_i32gather_epi32(f.meta, idx, 4);
      const __m256 t = _mm256_i32gather_ps(f.threshold, idx, 4);
      const __m256i feat = _mm256_min_epu32(_mm256_and_si256(m, fmask), fmax);
      const __m256 v = _mm256_i32gather_ps(row, _mm256_sll_epi32(feat, sh), 4);
      const __m256i left = go_left(v, t, m);
      i = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(i, i), one), _mm256_andnot_si256(left, one));
    }
    const __m256i slot =
        _mm256_add_epi32(_mm256_sll_epi32(tree, _mm_cvtsi32_si128(f.depth)), _mm256_sub_epi32(i, first_leaf));
    _mm256_store_si256(reinterpret_cast<__m256i*>(slots), slot);
    for (int64_t l = 0; l < n; ++l) {
      const int64_t s = slots[l], t = t0 + l;
      if (leaf_out != nullptr) {
        leaf_out[t] = f.leaf_nodes[s];
      } else if (float32_accum) {
        for (int64_t o = 0; o < outs; ++o)
          static_cast<float*>(per_tree)[t * outs + o] = f.values32[s * outs + o];
      } else {
        for (int64_t o = 0; o < outs; ++o)
          static_cast<double*>(per_tree)[t * outs + o] = f.values[s * outs + o];
      }
    }
  }
}

}  // namespace

PerfectKernels perfect_kernels_avx2() {
  return {kW, raw_rows, leaves_rows, row_trees};
}

}  // namespace pyzero::trees

#pragma GCC pop_options
