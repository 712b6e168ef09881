// ISA selection and the OpenMP driver of the CPU fused AdamW.
#include "adam_cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <omp.h>

namespace pyzero::cpu {
namespace {

std::atomic<int> g_isa{-1};

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

void run_range(Isa isa, const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s) {
  switch (isa) {
    case Isa::kAvx512: return adam_range_avx512(t, begin, end, s);
    case Isa::kAvx2: return adam_range_avx2(t, begin, end, s);
    default: return adam_range_scalar(t, begin, end, s);
  }
}

}  // namespace

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kScalar;
}

bool parse_isa(const char* name, Isa* out) {
  if (name == nullptr) return false;
  if (std::strcmp(name, "scalar") == 0) {
    *out = Isa::kScalar;
    return true;
  }
  if (std::strcmp(name, "avx2") == 0) {
    *out = Isa::kAvx2;
    return true;
  }
  if (std::strcmp(name, "avx512") == 0) {
    *out = Isa::kAvx512;
    return true;
  }
  return false;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detect_isa())) return false;
  g_isa.store(static_cast<int>(isa));
  return true;
}

Isa active_isa() {
  int cur = g_isa.load();
  if (cur < 0) {
    Isa isa = detect_isa();
    Isa wanted;
    if (parse_isa(std::getenv("PYZERO_CPU_ISA"), &wanted) &&
        static_cast<int>(wanted) <= static_cast<int>(isa)) {
      isa = wanted;
    }
    cur = static_cast<int>(isa);
    g_isa.store(cur);
  }
  return static_cast<Isa>(cur);
}

void fused_adamw(const AdamTensor* tensors, const AdamScalars* scalars, int64_t num_tensors,
                 int num_threads) {
  const Isa isa = active_isa();
  int64_t total = 0;
  for (int64_t k = 0; k < num_tensors; ++k) total += tensors[k].n;
  if (total <= kSerialElems || num_threads <= 1) {
    for (int64_t k = 0; k < num_tensors; ++k) run_range(isa, tensors[k], 0, tensors[k].n, scalars[k]);
    return;
  }
  std::vector<Chunk> chunks;
  chunks.reserve(static_cast<size_t>(total / kChunkElems + num_tensors));
  for (int64_t k = 0; k < num_tensors; ++k) {
    for (int64_t b = 0; b < tensors[k].n; b += kChunkElems) {
      const int64_t e = b + kChunkElems < tensors[k].n ? b + kChunkElems : tensors[k].n;
      chunks.push_back({k, b, e});
    }
  }
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t c = 0; c < nchunks; ++c) {
    const Chunk& ch = chunks[static_cast<size_t>(c)];
    run_range(isa, tensors[ch.tensor], ch.begin, ch.end, scalars[ch.tensor]);
  }
}

}  // namespace pyzero::cpu
