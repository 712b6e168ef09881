// Functions compiled for both the host and a CUDA device (the walk, its finish, libm_exp.h).
#pragma once

#if defined(__CUDACC__)
#define PYZERO_HD __host__ __device__ __forceinline__
#define PYZERO_UNROLL _Pragma("unroll")
#define PYZERO_UNROLL8 _Pragma("unroll 8")
#else
#define PYZERO_HD inline
#define PYZERO_UNROLL
#define PYZERO_UNROLL8
#endif
