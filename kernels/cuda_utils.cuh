// Device-side helpers shared by the CUDA op families: storage-type traits (load/store as fp32, 16-byte
// vector access), warp and block reductions, and the dtype switch that instantiates a launcher.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "kernels/core/cuda_check.h"
#include "kernels/core/dtype.h"

namespace stavid::cuda {

template <typename T>
struct TypeOf;
template <>
struct TypeOf<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};
template <>
struct TypeOf<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct TypeOf<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <typename T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  return TypeOf<T>::to_float(p[i]);
}
template <typename T>
__device__ __forceinline__ void st(T* p, int64_t i, float v) {
  p[i] = TypeOf<T>::from_float(v);
}

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kVec16 = 16 / sizeof(T);

// 16 bytes of T, converted to/from an fp32 array.
template <typename T>
struct alignas(16) Vec16 {
  T v[kVec16<T>];
};

template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[kVec16<T>]) {
  const Vec16<T> x = *reinterpret_cast<const Vec16<T>*>(p);
#pragma unroll
  for (int i = 0; i < kVec16<T>; ++i) out[i] = TypeOf<T>::to_float(x.v[i]);
}
template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[kVec16<T>]) {
  Vec16<T> x;
#pragma unroll
  for (int i = 0; i < kVec16<T>; ++i) x.v[i] = TypeOf<T>::from_float(in[i]);
  *reinterpret_cast<Vec16<T>*>(p) = x;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats. Callable repeatedly
// with the same scratch (it synchronizes before reuse).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline unsigned grid_for(int64_t work_items, int threads, int64_t max_blocks = 65535LL * 32) {
  int64_t b = (work_items + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return static_cast<unsigned>(b);
}

// ---- PTX-level helpers shared by the attention kernels ----

// Shared-memory address of a generic pointer (for ldmatrix, cp.async, TMA, wgmma descriptors).
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 2^x on the SFU (ex2.approx: 2 ulp, flushes denormals; -inf -> +0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats rounded to T (bf16 or f16) and packed into one 32-bit register, low half first.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Runs `configure` (a kernel instance's cudaFuncSetAttribute calls) the first time the instance
// launches on `device`, with `device` current. Function attributes belong to each device's context,
// so a process that drives several GPUs (sequence-parallel groups) must set them on every one; a
// per-process "configured" flag left the second GPU's launches without their shared memory size.
// Two threads racing on one device may both configure (the calls are idempotent); devices past 63
// configure on every launch.
template <typename F>
void once_per_device(std::atomic<uint64_t>& done, int device, const F& configure) {
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return;
  configure();
  if (bit != 0) done.fetch_or(bit, std::memory_order_release);
}

}  // namespace stavid::cuda

// Runs `body` with `T` bound to the storage type of `dtype`: STAVID_DISPATCH_DTYPE(p.dtype, { f<T>(); })
#define STAVID_DISPATCH_DTYPE(dtype, ...)        \
  switch (dtype) {                               \
    case ::stavid::DType::F32: {                 \
      using T = float;                           \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
    case ::stavid::DType::BF16: {                \
      using T = __nv_bfloat16;                   \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
    case ::stavid::DType::F16: {                 \
      using T = __half;                          \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
  }
