// PYZERO_LOCAL: classes bound by pybind11 are hidden like pybind11's own types (within one shared
// library only).
#pragma once

#if defined(__GNUC__)
#define PYZERO_LOCAL __attribute__((visibility("hidden")))
#else
#define PYZERO_LOCAL
#endif
