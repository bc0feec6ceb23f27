// config.cuh — what every template file needs first: the LIGHTSEQ_HD qualifier and the fixed-width
// integer names of namespace lightseq::kern. Compiles under NVRTC, nvcc and a plain host C++
// compiler (launch.cuh, enums.cuh and philox.cuh are also included by host code).
//
// NVRTC predefines no <stdint.h> names (and we include no host headers there), so under NVRTC
// they are typedefs of the builtin types; elsewhere they are the <cstdint> types themselves, so
// that host code mixing `std::int64_t` and `lightseq::kern::int64_t` sees one type.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define LIGHTSEQ_HD __host__ __device__
#else
#define LIGHTSEQ_HD
#endif

#if defined(__CUDACC_RTC__)
namespace lightseq::kern {
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
static_assert(sizeof(int64_t) == 8 && sizeof(uint32_t) == 4, "unexpected builtin integer sizes");
}  // namespace lightseq::kern
#else
#include <cstdint>
namespace lightseq::kern {
using std::int32_t;
using std::int64_t;
using std::int8_t;
using std::uint32_t;
using std::uint64_t;
using std::uint8_t;
}  // namespace lightseq::kern
#endif
