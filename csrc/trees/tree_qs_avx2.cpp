// The AVX2 twin of qs_words_scalar (Note [Bitvector trees], tree_qs.h): a group's 16 rows as two
// vectors of 8, a node's test for all of them and its mask ANDed into the words of the rows it fails
// (four rows of 64-bit words per register); a feature's nodes are walked in threshold order until one
// fails no row. Standard headers come before the target pragma so no library code is compiled for AVX2.
#include <cstdint>

#include "tree_qs.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace pyzero::trees {
namespace {

// w[0 .. 4) &= mask in the rows whose 32-bit lane of `failed` is set (all ones).
inline void and_rows(uint64_t* w, __m128i failed, __m256i mask) {
  const __m256i rows = _mm256_cvtepi32_epi64(failed);
  const __m256i cut = _mm256_andnot_si256(mask, rows);  // the bits the failed rows lose
  const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(w), _mm256_andnot_si256(cut, words));
}

// One word of the 16 rows (0 .. 15) for the rows failed[0] (rows 0-7) and failed[1] (8-15).
inline void and_group(uint64_t* w, const __m256i failed[2], uint64_t mask) {
  const __m256i m = _mm256_set1_epi64x(static_cast<long long>(mask));
  for (int h = 0; h < 2; ++h) {
    and_rows(w + 8 * h, _mm256_castsi256_si128(failed[h]), m);
    and_rows(w + 8 * h + 4, _mm256_extracti128_si256(failed[h], 1), m);
  }
}

}  // namespace

void qs_words_avx2(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words) {
  static_assert(kQsRowGroup == 16, "a group is two vectors of 8 floats");
  const __m256i all = _mm256_set1_epi64x(-1);
  for (int64_t i = 0; i < f.n_words * kQsRowGroup; i += 4)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + i), all);
  // live[h]: the group's rows in half h (all ones), so absent rows never fail a node
  __m256i live[2];
  for (int h = 0; h < 2; ++h) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    live[h] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rows) - 8 * h), lane);
  }
  for (int64_t c = 0; c < f.n_features; ++c) {
    __m256 v[2];
    __m256i nan[2], num[2];
    int any_nan = 0;
    for (int h = 0; h < 2; ++h) {
      v[h] = _mm256_maskload_ps(xt + (c << shift) + 8 * h, live[h]);
      nan[h] = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v[h], v[h], _CMP_UNORD_Q)), live[h]);
      num[h] = _mm256_andnot_si256(nan[h], live[h]);
      any_nan |= _mm256_movemask_ps(_mm256_castsi256_ps(nan[h]));
    }
    if (any_nan != 0) {
      for (int64_t i = f.nan_start[c]; i < f.nan_start[c + 1]; ++i)
        and_group(words + f.nan_word[i] * kQsRowGroup, nan, f.nan_mask[i]);
    }
    for (int64_t i = f.start[c]; i < f.start[c + 1]; ++i) {
      const __m256 t = _mm256_set1_ps(f.threshold[i]);
      __m256i failed[2];
      int any = 0;
      for (int h = 0; h < 2; ++h) {
        failed[h] = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v[h], t, _CMP_NLE_UQ)), num[h]);
        any |= _mm256_movemask_ps(_mm256_castsi256_ps(failed[h]));
      }
      if (any == 0) break;  // thresholds ascend: no later node fails a row either
      and_group(words + f.word[i] * kQsRowGroup, failed, f.mask[i]);
    }
  }
}

}  // namespace pyzero::trees

#pragma GCC pop_options
