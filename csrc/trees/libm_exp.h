// Note [Library exp]
// The native libraries' probabilities come from the host's libm: XGBoost's sigmoid calls expf on a
// float, LightGBM's and scikit-learn's exp on a double (Note [Fused finish]). CUDA's expf and exp differ
// from glibc's in the last bit on some inputs, which kept GPU probabilities within 1e-6 of the libraries
// rather than equal. libm_expf and libm_exp repeat glibc's x86-64 FMA variants (__expf_fma and
// __exp_fma, ARM's table method, glibc 2.28 on; what glibc picks on a CPU with FMA and AVX2) operation
// for operation: x = k ln2 / N + r, exp(x) = 2^(k/N) exp(r), with 2^(k/N) from a table of N = 32 (expf)
// or 128 (exp) doubles and exp(r) from a short polynomial; the same constants and the same fused
// multiply-adds (read off glibc's machine code), every other product and sum rounded on its own
// (__dmul_rn and __dadd_rn on the device, which nvcc does not contract; -ffp-contract=off on the host).
// The device finish (store_output) calls them; the host calls its real expf and exp. A host with an
// older glibc, or without FMA, may differ in the last bit. tests/cpp/test_libm_exp.cpp holds them to
// the host's expf on all 2^32 floats and to its exp on 10^8 doubles of every range; the CUDA tests hold
// the device build to the host build (the `libm_exp` op) and the GPU's probabilities to the libraries'.
// pyzero/kernels/libm_triton.py repeats these two functions in Triton for the Triton twin (Note [Triton
// rounding]), reading these tables (pyzero._C.libm_exp_tables).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "hd.h"

namespace pyzero::libm {

// Table entry k of expf: the bits of 2^(k/32) rounded to nearest, minus k << 47, so that adding
// ki << 47 (ki = k + 32 * e) scales it by 2^e.
#define PYZERO_EXPF_TABLE                                                                                 \
  {                                                                                                       \
      0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b, \
      0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, \
      0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, \
      0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13, \
      0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad, \
      0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f, \
      0x3fefa4afa2a490da, 0x3fefd0765b6e4540,                                                             \
  }
// Entries 2k and 2k + 1 of exp: the bits of tail_k = (2^(k/128) - h_k) / h_k rounded, and of h_k (2^(k/128)
// rounded to nearest) minus k << 45.
#define PYZERO_EXP_TABLE                                                                                  \
  {                                                                                                       \
      0x0000000000000000, 0x3ff0000000000000, 0x3c9b3b4f1a88bf6e, 0x3feff63da9fb3335, 0xbc7160139cd8dc5d, \
      0x3fefec9a3e778061, 0xbc905e7a108766d1, 0x3fefe315e86e7f85, 0x3c8cd2523567f613, 0x3fefd9b0d3158574, \
      0xbc8bce8023f98efa, 0x3fefd06b29ddf6de, 0x3c60f74e61e6c861, 0x3fefc74518759bc8, 0x3c90a3e45b33d399, \
      0x3fefbe3ecac6f383, 0x3c979aa65d837b6d, 0x3fefb5586cf9890f, 0x3c8eb51a92fdeffc, 0x3fefac922b7247f7, \
      0x3c3ebe3d702f9cd1, 0x3fefa3ec32d3d1a2, 0xbc6a033489906e0b, 0x3fef9b66affed31b, 0xbc9556522a2fbd0e, \
      0x3fef9301d0125b51, 0xbc5080ef8c4eea55, 0x3fef8abdc06c31cc, 0xbc91c923b9d5f416, 0x3fef829aaea92de0, \
      0x3c80d3e3e95c55af, 0x3fef7a98c8a58e51, 0xbc801b15eaa59348, 0x3fef72b83c7d517b, 0xbc8f1ff055de323d, \
      0x3fef6af9388c8dea, 0x3c8b898c3f1353bf, 0x3fef635beb6fcb75, 0xbc96d99c7611eb26, 0x3fef5be084045cd4, \
      0x3c9aecf73e3a2f60, 0x3fef54873168b9aa, 0xbc8fe782cb86389d, 0x3fef4d5022fcd91d, 0x3c8a6f4144a6c38d, \
      0x3fef463b88628cd6, 0x3c807a05b0e4047d, 0x3fef3f49917ddc96, 0x3c968efde3a8a894, 0x3fef387a6e756238, \
      0x3c875e18f274487d, 0x3fef31ce4fb2a63f, 0x3c80472b981fe7f2, 0x3fef2b4565e27cdd, 0xbc96b87b3f71085e, \
      0x3fef24dfe1f56381, 0x3c82f7e16d09ab31, 0x3fef1e9df51fdee1, 0xbc3d219b1a6fbffa, 0x3fef187fd0dad990, \
      0x3c8b3782720c0ab4, 0x3fef1285a6e4030b, 0x3c6e149289cecb8f, 0x3fef0cafa93e2f56, 0x3c834d754db0abb6, \
      0x3fef06fe0a31b715, 0x3c864201e2ac744c, 0x3fef0170fc4cd831, 0x3c8fdd395dd3f84a, 0x3feefc08b26416ff, \
      0xbc86a3803b8e5b04, 0x3feef6c55f929ff1, 0xbc924aedcc4b5068, 0x3feef1a7373aa9cb, 0xbc9907f81b512d8e, \
      0x3feeecae6d05d866, 0xbc71d1e83e9436d2, 0x3feee7db34e59ff7, 0xbc991919b3ce1b15, 0x3feee32dc313a8e5, \
      0x3c859f48a72a4c6d, 0x3feedea64c123422, 0xbc9312607a28698a, 0x3feeda4504ac801c, 0xbc58a78f4817895b, \
      0x3feed60a21f72e2a, 0xbc7c2c9b67499a1b, 0x3feed1f5d950a897, 0x3c4363ed60c2ac11, 0x3feece086061892d, \
      0x3c9666093b0664ef, 0x3feeca41ed1d0057, 0x3c6ecce1daa10379, 0x3feec6a2b5c13cd0, 0x3c93ff8e3f0f1230, \
      0x3feec32af0d7d3de, 0x3c7690cebb7aafb0, 0x3feebfdad5362a27, 0x3c931dbdeb54e077, 0x3feebcb299fddd0d, \
      0xbc8f94340071a38e, 0x3feeb9b2769d2ca7, 0xbc87deccdc93a349, 0x3feeb6daa2cf6642, 0xbc78dec6bd0f385f, \
      0x3feeb42b569d4f82, 0xbc861246ec7b5cf6, 0x3feeb1a4ca5d920f, 0x3c93350518fdd78e, 0x3feeaf4736b527da, \
      0x3c7b98b72f8a9b05, 0x3feead12d497c7fd, 0x3c9063e1e21c5409, 0x3feeab07dd485429, 0x3c34c7855019c6ea, \
      0x3feea9268a5946b7, 0x3c9432e62b64c035, 0x3feea76f15ad2148, 0xbc8ce44a6199769f, 0x3feea5e1b976dc09, \
      0xbc8c33c53bef4da8, 0x3feea47eb03a5585, 0xbc845378892be9ae, 0x3feea34634ccc320, 0xbc93cedd78565858, \
      0x3feea23882552225, 0x3c5710aa807e1964, 0x3feea155d44ca973, 0xbc93b3efbf5e2228, 0x3feea09e667f3bcd, \
      0xbc6a12ad8734b982, 0x3feea012750bdabf, 0xbc6367efb86da9ee, 0x3fee9fb23c651a2f, 0xbc80dc3d54e08851, \
      0x3fee9f7df9519484, 0xbc781f647e5a3ecf, 0x3fee9f75e8ec5f74, 0xbc86ee4ac08b7db0, 0x3fee9f9a48a58174, \
      0xbc8619321e55e68a, 0x3fee9feb564267c9, 0x3c909ccb5e09d4d3, 0x3feea0694fde5d3f, 0xbc7b32dcb94da51d, \
      0x3feea11473eb0187, 0x3c94ecfd5467c06b, 0x3feea1ed0130c132, 0x3c65ebe1abd66c55, 0x3feea2f336cf4e62, \
      0xbc88a1c52fb3cf42, 0x3feea427543e1a12, 0xbc9369b6f13b3734, 0x3feea589994cce13, 0xbc805e843a19ff1e, \
      0x3feea71a4623c7ad, 0xbc94d450d872576e, 0x3feea8d99b4492ed, 0x3c90ad675b0e8a00, 0x3feeaac7d98a6699, \
      0x3c8db72fc1f0eab4, 0x3feeace5422aa0db, 0xbc65b6609cc5e7ff, 0x3feeaf3216b5448c, 0x3c7bf68359f35f44, \
      0x3feeb1ae99157736, 0xbc93091fa71e3d83, 0x3feeb45b0b91ffc6, 0xbc5da9b88b6c1e29, 0x3feeb737b0cdc5e5, \
      0xbc6c23f97c90b959, 0x3feeba44cbc8520f, 0xbc92434322f4f9aa, 0x3feebd829fde4e50, 0xbc85ca6cd7668e4b, \
      0x3feec0f170ca07ba, 0x3c71affc2b91ce27, 0x3feec49182a3f090, 0x3c6dd235e10a73bb, 0x3feec86319e32323, \
      0xbc87c50422622263, 0x3feecc667b5de565, 0x3c8b1c86e3e231d5, 0x3feed09bec4a2d33, 0xbc91bbd1d3bcbb15, \
      0x3feed503b23e255d, 0x3c90cc319cee31d2, 0x3feed99e1330b358, 0x3c8469846e735ab3, 0x3feede6b5579fdbf, \
      0xbc82dfcd978e9db4, 0x3feee36bbfd3f37a, 0x3c8c1a7792cb3387, 0x3feee89f995ad3ad, 0xbc907b8f4ad1d9fa, \
      0x3feeee07298db666, 0xbc55c3d956dcaeba, 0x3feef3a2b84f15fb, 0xbc90a40e3da6f640, 0x3feef9728de5593a, \
      0xbc68d6f438ad9334, 0x3feeff76f2fb5e47, 0xbc91eee26b588a35, 0x3fef05b030a1064a, 0x3c74ffd70a5fddcd, \
      0x3fef0c1e904bc1d2, 0xbc91bdfbfa9298ac, 0x3fef12c25bd71e09, 0x3c736eae30af0cb3, 0x3fef199bdd85529c, \
      0x3c8ee3325c9ffd94, 0x3fef20ab5fffd07a, 0x3c84e08fd10959ac, 0x3fef27f12e57d14b, 0x3c63cdaf384e1a67, \
      0x3fef2f6d9406e7b5, 0x3c676b2c6c921968, 0x3fef3720dcef9069, 0xbc808a1883ccb5d2, 0x3fef3f0b555dc3fa, \
      0xbc8fad5d3ffffa6f, 0x3fef472d4a07897c, 0xbc900dae3875a949, 0x3fef4f87080d89f2, 0x3c74a385a63d07a7, \
      0x3fef5818dcfba487, 0xbc82919e2040220f, 0x3fef60e316c98398, 0x3c8e5a50d5c192ac, 0x3fef69e603db3285, \
      0x3c843a59ac016b4b, 0x3fef7321f301b460, 0xbc82d52107b43e1f, 0x3fef7c97337b9b5f, 0xbc892ab93b470dc9, \
      0x3fef864614f5a129, 0x3c74b604603a88d3, 0x3fef902ee78b3ff6, 0x3c83c5ec519d7271, 0x3fef9a51fbc74c83, \
      0xbc8ff7128fd391f0, 0x3fefa4afa2a490da, 0xbc8dae98e223747d, 0x3fefaf482d8e67f1, 0x3c8ec3bc41aa2008, \
      0x3fefba1bee615a27, 0x3c842b94c3a9eb32, 0x3fefc52b376bba97, 0x3c8a64a931d185ee, 0x3fefd0765b6e4540, \
      0xbc8e37bae43be3ed, 0x3fefdbfdad9cbe14, 0x3c77893b4d91cd9d, 0x3fefe7c1819e90d8, 0x3c5305c14160cc89, \
      0x3feff3c22b8f71f1,                                                                                 \
  }

#if defined(__CUDACC__)
// In global memory, read through the read-only cache: a warp's rows read different entries, which
// constant memory would serialize.
static __device__ const unsigned long long kExpfTableDevice[32] = PYZERO_EXPF_TABLE;
static __device__ const unsigned long long kExpTableDevice[256] = PYZERO_EXP_TABLE;
#endif
inline constexpr uint64_t kExpfTable[32] = PYZERO_EXPF_TABLE;
inline constexpr uint64_t kExpTable[256] = PYZERO_EXP_TABLE;

// expf: 32 / ln 2, the rounding shift 1.5 * 2^52, and the polynomial 1 + C2 r + C1 r^2 + C0 r^3 (r in units
// of ln 2 / 32).
constexpr double kExpfInvLn2N = 0x1.71547652b82fep+5;
constexpr double kExpfC0 = 0x1.c6af84b912394p-20;
constexpr double kExpfC1 = 0x1.ebfce50fac4f3p-13;
constexpr double kExpfC2 = 0x1.62e42ff0c52d6p-6;
// exp: 128 / ln 2, -ln 2 / 128 in two parts, and the polynomial r + C2 r^2 + ... + C5 r^5.
constexpr double kExpInvLn2N = 0x1.71547652b82fep+7;
constexpr double kExpNegLn2HiN = -0x1.62e42fefa0000p-8;
constexpr double kExpNegLn2LoN = -0x1.cf79abc9e3b3ap-47;
constexpr double kExpC2 = 0x1.ffffffffffdbdp-2;
constexpr double kExpC3 = 0x1.555555555543cp-3;
constexpr double kExpC4 = 0x1.55555cf172b91p-5;
constexpr double kExpC5 = 0x1.1111167a4d017p-7;
constexpr double kRoundShift = 0x1.8p52;  // z + shift leaves round(z) in the low bits

// Each helper below is one thing done two ways: `device` in device code, `host` in host code (the other
// expression is not compiled there).
#if defined(__CUDA_ARCH__)
#define PYZERO_DEVICE_OR_HOST(device, host) device
#else
#define PYZERO_DEVICE_OR_HOST(device, host) host
#endif

// v's bits read as a To (the host's bit cast).
template <typename To, typename From>
inline To host_bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To t;
  memcpy(&t, &v, sizeof t);
  return t;
}

PYZERO_HD uint64_t bits_of(double v) {
  return PYZERO_DEVICE_OR_HOST(static_cast<uint64_t>(__double_as_longlong(v)), host_bit_cast<uint64_t>(v));
}
PYZERO_HD double double_of(uint64_t b) {
  return PYZERO_DEVICE_OR_HOST(__longlong_as_double(static_cast<long long>(b)), host_bit_cast<double>(b));
}
PYZERO_HD uint32_t bits_of(float v) {
  return PYZERO_DEVICE_OR_HOST(static_cast<uint32_t>(__float_as_uint(v)), host_bit_cast<uint32_t>(v));
}

// One rounding each (never contracted into a fused multiply-add), and the fused multiply-add a * b + c.
PYZERO_HD double mul(double a, double b) {
  return PYZERO_DEVICE_OR_HOST(__dmul_rn(a, b), a * b);
}
PYZERO_HD double add(double a, double b) {
  return PYZERO_DEVICE_OR_HOST(__dadd_rn(a, b), a + b);
}
PYZERO_HD double sub(double a, double b) {
  return PYZERO_DEVICE_OR_HOST(__dsub_rn(a, b), a - b);
}
PYZERO_HD double fma(double a, double b, double c) {
  return PYZERO_DEVICE_OR_HOST(__fma_rn(a, b, c), std::fma(a, b, c));
}

// Entry i of each table.
PYZERO_HD uint64_t expf_entry(uint64_t i) {
  return PYZERO_DEVICE_OR_HOST(__ldg(&kExpfTableDevice[i]), kExpfTable[i]);
}
PYZERO_HD uint64_t exp_entry(uint64_t i) {
  return PYZERO_DEVICE_OR_HOST(__ldg(&kExpTableDevice[i]), kExpTable[i]);
}

// glibc's expf (Note [Library exp]).
PYZERO_HD float libm_expf(float x) {
  const uint32_t ux = bits_of(x);
  const uint32_t abstop = (ux >> 20) & 0x7ff;
  if (abstop > 0x42a) {  // |x| >= 88, or not finite
    if (ux == 0xff800000u) return 0.0f;
    if (abstop > 0x7f7) return x + x;
    if (x > 0x1.62e42ep6f) return static_cast<float>(INFINITY);
    if (x < -0x1.9fe368p6f) return 0.0f;
    if (x < -0x1.9d1d9ep6f) return 0x1p-149f;  // glibc's "may underflow" result
  }
  const double xd = x;
  double kd = fma(kExpfInvLn2N, xd, kRoundShift);
  const uint64_t ki = bits_of(kd);
  kd = sub(kd, kRoundShift);
  const double r = fma(kExpfInvLn2N, xd, -kd);
  const double s = double_of(expf_entry(ki % 32) + (ki << 47));
  const double z = fma(kExpfC0, r, kExpfC1);
  const double r2 = mul(r, r);
  const double y = fma(z, r2, fma(kExpfC2, r, 1.0));
  return static_cast<float>(mul(y, s));
}

// glibc's exp (Note [Library exp]).
PYZERO_HD double libm_exp(double x) {
  const uint64_t ux = bits_of(x);
  uint32_t abstop = static_cast<uint32_t>(ux >> 52) & 0x7ff;
  if (abstop - 0x3c9u >= 0x3fu) {                                       // |x| < 2^-54, or >= 512
    if (static_cast<int32_t>(abstop - 0x3c9u) < 0) return add(x, 1.0);  // tiny
    if (abstop >= 0x409) {                                              // |x| >= 1024
      if (ux == 0xfff0000000000000ull) return 0.0;
      if (abstop == 0x7ff) return add(x, 1.0);
      return (ux >> 63) ? 0.0 : static_cast<double>(INFINITY);
    }
    abstop = 0;  // 512 <= |x| < 1024: the scale may leave the exponent range (below)
  }
  double kd = fma(x, kExpInvLn2N, kRoundShift);
  const uint64_t ki = bits_of(kd);
  kd = sub(kd, kRoundShift);
  const double r = fma(kd, kExpNegLn2LoN, fma(kd, kExpNegLn2HiN, x));
  const uint64_t idx = 2 * (ki % 128);
  const double tail = double_of(exp_entry(idx));
  const uint64_t sbits = exp_entry(idx + 1) + (ki << 45);
  const double r2 = mul(r, r);
  const double low = fma(r2, fma(r, kExpC3, kExpC2), add(r, tail));
  const double tmp = fma(mul(r2, r2), fma(r, kExpC5, kExpC4), low);
  if (abstop != 0) {
    const double scale = double_of(sbits);
    return fma(scale, tmp, scale);
  }
  if ((ki & 0x80000000u) == 0) {  // k > 0: scale down by 2^1009 first
    const double scale = double_of(sbits - (1009ull << 52));
    return mul(fma(scale, tmp, scale), 0x1p1009);
  }
  const double scale = double_of(sbits + (1022ull << 52));  // k < 0: scale up by 2^1022 first
  const double st = mul(scale, tmp);
  double y = add(scale, st);
  if (y < 1.0) {  // a subnormal result: round once, to its own precision
    const double hi = add(y, 1.0);
    const double lo = add(add(sub(1.0, hi), y), add(sub(scale, y), st));
    y = sub(add(lo, hi), 1.0);
  }
  return mul(y, 0x1p-1022);
}

// The library's exp of a finish (Note [Fused finish]): the host's own libm, glibc's on the device.
PYZERO_HD float lib_expf(float x) {
  return PYZERO_DEVICE_OR_HOST(libm_expf(x), expf(x));
}
PYZERO_HD double lib_exp(double x) {
  return PYZERO_DEVICE_OR_HOST(libm_exp(x), exp(x));
}

#undef PYZERO_DEVICE_OR_HOST

}  // namespace pyzero::libm
