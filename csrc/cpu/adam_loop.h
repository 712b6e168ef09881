// The element loop of the CPU fused AdamW, generic over a vector type V.
// Included once per ISA translation unit, after that unit's `#pragma GCC target`, so every
// function here has internal linkage (anonymous namespace) and never leaks wider code
// into another unit.
#pragma once

#include <cstdint>
#include <cstring>

#include "../adam.h"

namespace pyzero::cpu {
namespace {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  _Float16 x;
  std::memcpy(&x, &h, 2);
  return static_cast<float>(x);
}

inline uint16_t f32_to_f16(float f) {
  _Float16 x = static_cast<_Float16>(f);
  uint16_t h;
  std::memcpy(&h, &x, 2);
  return h;
}

template <DType G>
inline float load_grad_scalar(const void* g, int64_t i) {
  if constexpr (G == DType::kFloat32) {
    return static_cast<const float*>(g)[i];
  } else if constexpr (G == DType::kBFloat16) {
    return bf16_to_f32(static_cast<const uint16_t*>(g)[i]);
  } else {
    return f16_to_f32(static_cast<const uint16_t*>(g)[i]);
  }
}

template <DType O>
inline void store_out_scalar(void* out, int64_t i, float p) {
  if constexpr (O == DType::kBFloat16) {
    static_cast<uint16_t*>(out)[i] = f32_to_bf16(p);
  } else if constexpr (O == DType::kFloat16) {
    static_cast<uint16_t*>(out)[i] = f32_to_f16(p);
  } else if constexpr (O == DType::kFloat32) {
    static_cast<float*>(out)[i] = p;
  }
}

template <class V, DType G>
inline typename V::F load_grad(const void* g, int64_t i) {
  if constexpr (G == DType::kFloat32) {
    return V::load(static_cast<const float*>(g) + i);
  } else if constexpr (G == DType::kBFloat16) {
    return V::load_bf16(static_cast<const uint16_t*>(g) + i);
  } else {
    return V::load_f16(static_cast<const uint16_t*>(g) + i);
  }
}

template <class V, DType O>
inline void store_out(void* out, int64_t i, typename V::F p) {
  if constexpr (O == DType::kBFloat16) {
    V::store_bf16(static_cast<uint16_t*>(out) + i, p);
  } else if constexpr (O == DType::kFloat16) {
    V::store_f16(static_cast<uint16_t*>(out) + i, p);
  } else if constexpr (O == DType::kFloat32) {
    V::store(static_cast<float*>(out) + i, p);
  }
}

// Note [AdamW update], vector body plus scalar tail with the same operation order.
template <class V, DType G, DType O>
void adam_range_t(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s) {
  using F = typename V::F;
  float* __restrict p = t.param;
  float* __restrict m = t.exp_avg;
  float* __restrict v = t.exp_avg_sq;
  const bool adamw = s.l2 == 0.0f;
  int64_t i = begin;
  if constexpr (V::W > 1) {
    const F gs = V::set1(s.grad_scale), decay = V::set1(s.decay), l2 = V::set1(s.l2);
    const F b1 = V::set1(s.one_minus_beta1), b2 = V::set1(s.beta2), omb2 = V::set1(s.one_minus_beta2);
    const F bc2 = V::set1(s.bc2_sqrt), eps = V::set1(s.eps), step = V::set1(s.step_size);
    for (; i + V::W <= end; i += V::W) {
      F g = V::mul(load_grad<V, G>(t.grad, i), gs);
      if (s.maximize) g = V::neg(g);
      F pv = V::load(p + i);
      if (adamw) {
        pv = V::mul(pv, decay);
      } else {
        g = V::add(g, V::mul(l2, pv));
      }
      F mv = V::load(m + i);
      mv = V::add(mv, V::mul(b1, V::sub(g, mv)));
      F vv = V::add(V::mul(V::load(v + i), b2), V::mul(omb2, V::mul(g, g)));
      const F denom = V::add(V::div(V::sqrt(vv), bc2), eps);
      pv = V::sub(pv, V::mul(step, V::div(mv, denom)));
      V::store(p + i, pv);
      V::store(m + i, mv);
      V::store(v + i, vv);
      store_out<V, O>(t.param_out, i, pv);
    }
  }
  for (; i < end; ++i) {
    float g = load_grad_scalar<G>(t.grad, i) * s.grad_scale;
    if (s.maximize) g = -g;
    float pv = p[i];
    if (adamw) {
      pv = pv * s.decay;
    } else {
      g = g + s.l2 * pv;
    }
    float mv = m[i];
    mv = mv + s.one_minus_beta1 * (g - mv);
    const float vv = v[i] * s.beta2 + s.one_minus_beta2 * (g * g);
    const float denom = V::sqrt_scalar(vv) / s.bc2_sqrt + s.eps;
    pv = pv - s.step_size * (mv / denom);
    p[i] = pv;
    m[i] = mv;
    v[i] = vv;
    store_out_scalar<O>(t.param_out, i, pv);
  }
}

template <class V, DType G>
void adam_range_out(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s) {
  switch (t.out_dtype) {
    case DType::kBFloat16: return adam_range_t<V, G, DType::kBFloat16>(t, begin, end, s);
    case DType::kFloat16: return adam_range_t<V, G, DType::kFloat16>(t, begin, end, s);
    case DType::kFloat32: return adam_range_t<V, G, DType::kFloat32>(t, begin, end, s);
    default: return adam_range_t<V, G, DType::kNone>(t, begin, end, s);
  }
}

template <class V>
void adam_range_dispatch(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s) {
  switch (t.grad_dtype) {
    case DType::kBFloat16: return adam_range_out<V, DType::kBFloat16>(t, begin, end, s);
    case DType::kFloat16: return adam_range_out<V, DType::kFloat16>(t, begin, end, s);
    default: return adam_range_out<V, DType::kFloat32>(t, begin, end, s);
  }
}

}  // namespace
}  // namespace pyzero::cpu
