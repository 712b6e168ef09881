// CPU fused AdamW: runtime ISA dispatch (AVX-512 / AVX2 / scalar) and OpenMP threading.
// Torch-free; see Note [AdamW update] in adam.h for the arithmetic.
#pragma once

#include <cstdint>

#include "../adam.h"

namespace pyzero::cpu {

enum class Isa : int32_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Best ISA this processor (and OS) supports.
Isa detect_isa();
// ISA used by fused_adamw: detect_isa(), or PYZERO_CPU_ISA=scalar|avx2|avx512 from the
// environment at first use, or the last set_isa(). Never above detect_isa().
Isa active_isa();
// Selects the ISA for later calls; returns false (and changes nothing) if unsupported.
bool set_isa(Isa isa);
const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx512"; returns false on anything else.
bool parse_isa(const char* name, Isa* out);

// Updates `num_tensors` tensors in place, tensors[i] with scalars[i], split into chunks of
// kChunkElems elements run on up to `num_threads` OpenMP threads.
void fused_adamw(const AdamTensor* tensors, const AdamScalars* scalars, int64_t num_tensors, int num_threads);

// Elements per unit of parallel work (a multiple of every vector width).
constexpr int64_t kChunkElems = 1 << 15;
// Below this many elements in total the update runs on the calling thread alone.
constexpr int64_t kSerialElems = 1 << 16;

// Per-ISA kernels: update elements [begin, end) of one tensor.
void adam_range_scalar(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s);
void adam_range_avx2(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s);
void adam_range_avx512(const AdamTensor& t, int64_t begin, int64_t end, const AdamScalars& s);

}  // namespace pyzero::cpu
