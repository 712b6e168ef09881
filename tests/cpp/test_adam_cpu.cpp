// C++ unit tests of the torch-free CPU fused AdamW: every ISA against an independent scalar
// version of Note [AdamW update], conversions at their edge cases, threading, found sizes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/adam_cpu.h"
#include "cpu/adam_loop.h"

using pyzero::AdamHyper;
using pyzero::AdamScalars;
using pyzero::AdamTensor;
using pyzero::DType;
namespace cpu = pyzero::cpu;

namespace {

int g_failures = 0;

#define EXPECT(cond, ...)                                         \
  do {                                                            \
    if (!(cond)) {                                                \
      ++g_failures;                                               \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
    }                                                             \
  } while (0)

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Independent scalar statement of Note [AdamW update], written from the note, not the kernel.
void expected_update(float g, float& p, float& m, float& v, const AdamScalars& s, bool adamw) {
  g *= s.grad_scale;
  if (s.maximize) g = -g;
  if (adamw)
    p *= s.decay;
  else
    g += s.l2 * p;
  m = m + s.one_minus_beta1 * (g - m);
  v = v * s.beta2 + s.one_minus_beta2 * (g * g);
  p = p - s.step_size * (m / (std::sqrt(v) / s.bc2_sqrt + s.eps));
}

float load_grad(const std::vector<uint16_t>& h, const std::vector<float>& f, DType d, size_t i) {
  if (d == DType::kFloat32) return f[i];
  if (d == DType::kBFloat16) return cpu::bf16_to_f32(h[i]);
  return cpu::f16_to_f32(h[i]);
}

void test_conversions() {
  // bf16: ties to even, carry into the exponent, NaN stays quiet NaN, infinities and zeros kept.
  EXPECT(cpu::f32_to_bf16(from_bits(0x3f808000u)) == 0x3f80, "tie to even (down)");
  EXPECT(cpu::f32_to_bf16(from_bits(0x3f818000u)) == 0x3f82, "tie to even (up)");
  EXPECT(cpu::f32_to_bf16(from_bits(0x3f808001u)) == 0x3f81, "above tie");
  EXPECT(cpu::f32_to_bf16(from_bits(0x7f7fffffu)) == 0x7f80, "max float rounds to inf");
  EXPECT(cpu::f32_to_bf16(INFINITY) == 0x7f80 && cpu::f32_to_bf16(-INFINITY) == 0xff80, "inf");
  EXPECT(cpu::f32_to_bf16(0.0f) == 0x0000 && cpu::f32_to_bf16(-0.0f) == 0x8000, "signed zero");
  const uint16_t qnan = cpu::f32_to_bf16(from_bits(0x7f800001u));
  EXPECT((qnan & 0x7f80) == 0x7f80 && (qnan & 0x7f) != 0, "signalling NaN stays NaN: %04x", qnan);
  EXPECT(cpu::bf16_to_f32(0x3f80) == 1.0f, "bf16 -> f32");
  // fp16: exact values, overflow to inf, round trip of every fp16 bit pattern that is not NaN.
  EXPECT(cpu::f32_to_f16(1.0f) == 0x3c00 && cpu::f32_to_f16(65520.0f) == 0x7c00, "fp16 rounding");
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = cpu::f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT(cpu::f32_to_f16(f) == h, "fp16 round trip %04x", h);
  }
}

// Runs one update with `isa` over a tensor at element offset `off` and compares bit for bit.
void test_update(cpu::Isa isa, int64_t n, int off, DType gd, DType od, bool adamw, bool maximize,
                 int threads) {
  std::mt19937 rng(static_cast<uint32_t>(n * 31 + off));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const size_t len = static_cast<size_t>(n + off);
  std::vector<float> p(len), m(len), v(len), gf(len), out32(len);
  std::vector<uint16_t> gh(len), out16(len);
  for (size_t i = 0; i < len; ++i) {
    p[i] = dist(rng);
    m[i] = 0.1f * dist(rng);
    v[i] = std::fabs(0.01f * dist(rng));
    gf[i] = dist(rng);
    gh[i] = gd == DType::kBFloat16 ? cpu::f32_to_bf16(gf[i]) : cpu::f32_to_f16(gf[i]);
  }
  std::vector<float> ep(p), em(m), ev(v);
  const AdamHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, adamw, maximize};
  const AdamScalars s = pyzero::make_adam_scalars(h, 3.0, 0.5f);
  AdamTensor t;
  t.param = p.data() + off;
  t.grad = gd == DType::kFloat32 ? static_cast<const void*>(gf.data() + off) : gh.data() + off;
  t.grad_dtype = gd;
  t.exp_avg = m.data() + off;
  t.exp_avg_sq = v.data() + off;
  t.out_dtype = od;
  t.param_out = od == DType::kNone      ? nullptr
                : od == DType::kFloat32 ? static_cast<void*>(out32.data() + off)
                                        : out16.data() + off;
  t.n = n;
  cpu::set_isa(isa);
  cpu::fused_adamw(&t, &s, 1, threads);
  for (size_t i = static_cast<size_t>(off); i < len; ++i) {
    expected_update(load_grad(gh, gf, gd, i), ep[i], em[i], ev[i], s, adamw);
    const bool same = bits(ep[i]) == bits(p[i]) && bits(em[i]) == bits(m[i]) && bits(ev[i]) == bits(v[i]);
    bool out_ok = true;
    if (od == DType::kBFloat16) out_ok = out16[i] == cpu::f32_to_bf16(ep[i]);
    if (od == DType::kFloat16) out_ok = out16[i] == cpu::f32_to_f16(ep[i]);
    if (od == DType::kFloat32) out_ok = bits(out32[i]) == bits(ep[i]);
    if (!same || !out_ok) {
      EXPECT(false, "isa=%s n=%lld off=%d grad=%d out=%d adamw=%d i=%zu", cpu::isa_name(isa),
             static_cast<long long>(n), off, static_cast<int>(gd), static_cast<int>(od), adamw, i);
      return;
    }
  }
}

}  // namespace

int main() {
  test_conversions();
  const cpu::Isa best = cpu::detect_isa();
  std::printf("best ISA: %s\n", cpu::isa_name(best));
  const cpu::Isa isas[] = {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvx512};
  const int64_t sizes[] = {0, 1, 17, 4097, 278011};
  const DType grads[] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};
  const DType outs[] = {DType::kNone, DType::kBFloat16, DType::kFloat16, DType::kFloat32};
  for (cpu::Isa isa : isas) {
    if (static_cast<int>(isa) > static_cast<int>(best)) {
      EXPECT(!cpu::set_isa(isa), "set_isa must refuse an unsupported ISA");
      continue;
    }
    for (int64_t n : sizes)
      for (int off = 0; off < 4; off += 3)
        for (DType gd : grads)
          for (DType od : outs) test_update(isa, n, off, gd, od, true, false, 2);
    test_update(isa, 4097, 1, DType::kFloat32, DType::kNone, false, true, 1);
    test_update(isa, 278011, 2, DType::kBFloat16, DType::kBFloat16, false, false, 1);
  }
  if (g_failures == 0) std::printf("all CPU AdamW tests passed\n");
  return g_failures == 0 ? 0 : 1;
}
