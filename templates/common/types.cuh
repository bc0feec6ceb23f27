// types.cuh — element types (float, __half, __nv_bfloat16), fp32 conversion, and the aligned vector
// used for 16-byte global loads/stores. Device-only (NVRTC).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/config.cuh"

namespace lightseq::kern {

template <typename T>
struct DType;  // no primary definition: an unsupported element type fails to compile here.
template <>
struct DType<float> {
  static constexpr int kBytes = 4;
};
template <>
struct DType<__half> {
  static constexpr int kBytes = 2;
};
template <>
struct DType<__nv_bfloat16> {
  static constexpr int kBytes = 2;
};

template <typename A, typename B>
struct IsSame {
  static constexpr bool kValue = false;
};
template <typename A>
struct IsSame<A, A> {
  static constexpr bool kValue = true;
};

// Elements of T per 16-byte access.
template <typename T>
inline constexpr int kMaxVec = 16 / DType<T>::kBytes;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// x rounded to T and back: the value a T tensor stores for x.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

// Unsigned integer type of exactly kBytes bytes, for single-instruction loads/stores.
template <int kBytes>
struct RawBits;
template <>
struct RawBits<1> {
  typedef unsigned char Type;
};
template <>
struct RawBits<2> {
  typedef unsigned short Type;
};
template <>
struct RawBits<4> {
  typedef unsigned int Type;
};
template <>
struct RawBits<8> {
  typedef uint2 Type;
};
template <>
struct RawBits<16> {
  typedef uint4 Type;
};

// N elements of T, aligned to their size (16 bytes for a full vector).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Loads N elements at p (aligned to sizeof(T) * N) with one instruction.
template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  typedef typename RawBits<sizeof(T) * N>::Type Raw;
  union {
    Raw raw;
    Vec<T, N> vec;
  } u;
  u.raw = *reinterpret_cast<const Raw*>(p);
  return u.vec;
}

template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  typedef typename RawBits<sizeof(T) * N>::Type Raw;
  union {
    Raw raw;
    Vec<T, N> vec;
  } u;
  u.vec = v;
  *reinterpret_cast<Raw*>(p) = u.raw;
}

// Loads N elements at p and converts them to fp32.
template <int N, typename T>
__device__ __forceinline__ void load_float(const T* p, float (&out)[N]) {
  const Vec<T, N> v = load_vec<N>(p);
#pragma unroll
  for (int e = 0; e < N; ++e) out[e] = to_float(v.v[e]);
}

// Rounds N fp32 values to T and stores them at p.
template <int N, typename T>
__device__ __forceinline__ void store_float(T* p, const float (&in)[N]) {
  Vec<T, N> v;
#pragma unroll
  for (int e = 0; e < N; ++e) v.v[e] = from_float<T>(in[e]);
  store_vec<N>(p, v);
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }

// Stores N fp32 values at p (aligned to N floats or 16 bytes) with the widest accesses.
template <int N>
__device__ __forceinline__ void store_f32(float* p, const float (&v)[N]) {
  constexpr int kW = N % 4 == 0 ? 4 : N % 2 == 0 ? 2 : 1;
#pragma unroll
  for (int i = 0; i < N; i += kW) {
    Vec<float, kW> w;
#pragma unroll
    for (int e = 0; e < kW; ++e) w.v[e] = v[i + e];
    store_vec<kW>(p + i, w);
  }
}
template <int N>
__device__ __forceinline__ void load_f32(const float* p, float (&v)[N]) {
  constexpr int kW = N % 4 == 0 ? 4 : N % 2 == 0 ? 2 : 1;
#pragma unroll
  for (int i = 0; i < N; i += kW) {
    const Vec<float, kW> w = load_vec<kW>(p + i);
#pragma unroll
    for (int e = 0; e < kW; ++e) v[i + e] = w.v[e];
  }
}

// Whether p is aligned to `bytes` (a power of two).
__device__ __forceinline__ bool is_aligned(const void* p, int bytes) {
  return (reinterpret_cast<unsigned long long>(p) & static_cast<unsigned long long>(bytes - 1)) ==
         0;
}

}  // namespace lightseq::kern
