// The AVX-512 twin of qs_words_scalar (Note [Bitvector trees], tree_qs.h): the 16 rows of a group in one
// vector, so a node's test and its mask go to all of them at once; a feature's nodes are walked in
// threshold order until one fails no row (the rest fail none either). Standard headers come before the
// target pragma so no library code is compiled for AVX-512.
#include <algorithm>
#include <cstdint>

#include "tree_qs.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

namespace pyzero::trees {
namespace {

// One word for the 16 rows: lanes whose bit is set in `rows` AND in `mask`.
inline void and_rows(uint64_t* w, __mmask16 rows, uint64_t mask) {
  const __m512i m = _mm512_set1_epi64(static_cast<long long>(mask));
  const __m512i lo = _mm512_loadu_si512(w), hi = _mm512_loadu_si512(w + 8);
  _mm512_storeu_si512(w, _mm512_mask_and_epi64(lo, static_cast<__mmask8>(rows), lo, m));
  _mm512_storeu_si512(w + 8, _mm512_mask_and_epi64(hi, static_cast<__mmask8>(rows >> 8), hi, m));
}

}  // namespace

void qs_words_avx512(const QsView& f, const float* xt, int shift, int64_t rows, uint64_t* words) {
  static_assert(kQsRowGroup == 16, "a group is one vector of 16 floats");
  const __m512i all = _mm512_set1_epi64(-1);
  for (int64_t w = 0; w < f.n_words; ++w) {
    _mm512_storeu_si512(words + w * kQsRowGroup, all);
    _mm512_storeu_si512(words + w * kQsRowGroup + 8, all);
  }
  const __mmask16 live =
      rows >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << rows) - 1);
  for (int64_t c = 0; c < f.n_features; ++c) {
    const __m512 v = _mm512_maskz_loadu_ps(live, xt + (c << shift));
    const __mmask16 nan = _mm512_mask_cmp_ps_mask(live, v, v, _CMP_UNORD_Q);
    if (nan != 0) {
      for (int64_t i = f.nan_start[c]; i < f.nan_start[c + 1]; ++i)
        and_rows(words + f.nan_word[i] * kQsRowGroup, nan, f.nan_mask[i]);
    }
    const __mmask16 num = static_cast<__mmask16>(live & ~nan);
    for (int64_t i = f.start[c]; i < f.start[c + 1]; ++i) {
      const __mmask16 failed = _mm512_mask_cmp_ps_mask(num, v, _mm512_set1_ps(f.threshold[i]), _CMP_NLE_UQ);
      if (failed == 0) break;  // thresholds ascend: no later node fails a row either
      and_rows(words + f.word[i] * kQsRowGroup, failed, f.mask[i]);
    }
  }
}

}  // namespace pyzero::trees

#pragma GCC pop_options
