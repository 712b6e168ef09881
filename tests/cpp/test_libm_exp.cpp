// C++ unit test of Note [Library exp] (csrc/trees/libm_exp.h): libm_expf equals the host's expf on all
// 2^32 floats and libm_exp its exp on doubles of every range (random bit patterns, the ranges where
// exp is neither 0, 1 nor infinite, the subnormal results, the edges of each special case), bit for bit.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "trees/libm_exp.h"

namespace {

// Doubles of each kind compared (exp): a multiple of the 2^20 the loop draws at a time.
constexpr int64_t kDoublesPerKind = int64_t{1} << 24;

uint64_t bits64(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

bool same(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || bits64(a) == bits64(b);
}

// Mismatches of libm_expf on all floats, and the first one.
int64_t check_expf() {
  int64_t bad = 0;
  int64_t first = -1;
#pragma omp parallel for reduction(+ : bad) schedule(static)
  for (int64_t i = 0; i < (int64_t{1} << 32); ++i) {
    const auto u = static_cast<uint32_t>(i);
    float x;
    std::memcpy(&x, &u, sizeof x);
    const float want = expf(x);
    const float got = pyzero::libm::libm_expf(x);
    if (!same(want, got)) {
      ++bad;
#pragma omp critical
      if (first < 0) first = i;
    }
  }
  if (bad)
    std::printf("FAIL expf: %lld of 2^32 floats differ, the first bits 0x%08llx\n",
                static_cast<long long>(bad), static_cast<long long>(first));
  return bad;
}

// splitmix64: the i-th of a stream of well-mixed 64-bit values.
uint64_t mix(uint64_t i) {
  uint64_t z = i * 0x9e3779b97f4a7c15ull + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Double i of kind k.
double draw(int k, int64_t i) {
  const uint64_t b = mix(static_cast<uint64_t>(i) * 8 + k);
  const double u = static_cast<double>(b >> 11) * 0x1p-53;  // uniform in [0, 1)
  switch (k) {
    case 0: {  // any bit pattern
      double v;
      std::memcpy(&v, &b, sizeof v);
      return v;
    }
    case 1: return -745.2 + u * (709.8 + 745.2);  // results neither 0 nor infinite
    case 2: return -40.0 + 80.0 * u;              // where the finishes take it
    case 3: return -745.2 + u * (745.2 - 708.3);  // subnormal results
    case 4:                                       // near |x| = 2^-54
      return (b & 1 ? -1.0 : 1.0) * std::ldexp(1.0 + u, -60 + static_cast<int>(b >> 1) % 12);
    default:  // near |x| = 512 and 1024
      return (b & 1 ? -1.0 : 1.0) * (b & 2 ? 512.0 : 1024.0) * (1.0 + (u - 0.5) * 1e-3);
  }
}

int64_t check_exp() {
  int64_t bad = 0;
  for (int k = 0; k < 6; ++k) {
    int64_t bad_k = 0;
    double first = 0;
    for (int64_t start = 0; start < kDoublesPerKind; start += 1 << 20) {
#pragma omp parallel for reduction(+ : bad_k) schedule(static)
      for (int64_t i = start; i < start + (1 << 20); ++i) {
        const double x = draw(k, i);
        if (!same(exp(x), pyzero::libm::libm_exp(x))) {
          ++bad_k;
#pragma omp critical
          first = x;
        }
      }
    }
    if (bad_k)
      std::printf("FAIL exp kind %d: %lld doubles differ, e.g. %a\n", k, static_cast<long long>(bad_k),
                  first);
    bad += bad_k;
  }
  const double specials[] = {0.0,
                             -0.0,
                             1.0,
                             -1.0,
                             INFINITY,
                             -INFINITY,
                             NAN,
                             0x1p-1074,
                             -0x1p-1074,
                             709.782712893384,
                             709.7827128933841,
                             -745.1332191019411,
                             -745.1332191019412,
                             -708.3964185322641,
                             0x1p-54,
                             -0x1p-54,
                             512.0,
                             -512.0,
                             1024.0,
                             -1024.0};
  for (double x : specials) {
    if (!same(exp(x), pyzero::libm::libm_exp(x))) {
      ++bad;
      std::printf("FAIL exp(%a): %a, glibc %a\n", x, pyzero::libm::libm_exp(x), exp(x));
    }
  }
  return bad;
}

}  // namespace

int main() {
  const int64_t bad = check_expf() + check_exp();
  std::printf("%s\n", bad ? "FAILED" : "libm_exp: all equal");
  return bad ? 1 : 0;
}
