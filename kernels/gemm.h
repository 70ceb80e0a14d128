// GEMM with bias and activation epilogues, the shape of a PyTorch Linear:
//   D[m, n] = act(A[m, k] . op(B) + bias[n])      (+ D when accumulate)
// where op(B) = B^T for a weight stored [n, k] (b_transposed, the Linear layout) or B for [k, n].
// Row-major, leading dimensions in elements; optional strided batch. CPU: OpenBLAS sgemm (fp32
// compute; 16-bit inputs are widened first). CUDA: cuBLASLt, 16-bit inputs with fp32 accumulation,
// bias and GELU-tanh fused in cuBLASLt's epilogue.
#pragma once

#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

enum class GemmEpilogue : uint8_t {
  None,
  Bias,          // + bias[n]
  GeluTanh,      // gelu_tanh(AB)
  BiasGeluTanh,  // gelu_tanh(AB + bias[n])
};

struct GemmParams {
  const void* a = nullptr;  // [m, k], row stride lda
  const void* b = nullptr;  // [n, k] (b_transposed) or [k, n], row stride ldb
  const void* bias = nullptr;  // [n], out_dtype; required by the Bias epilogues
  void* d = nullptr;           // [m, n], row stride ldd
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  bool b_transposed = true;
  // Strided batch: batch items are `stride_*` elements apart (0 broadcasts that operand).
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_d = 0;
  GemmEpilogue epilogue = GemmEpilogue::None;
  float alpha = 1.f;          // scales AB before the epilogue
  bool accumulate = false;    // D += result (not with GELU epilogues)
  DType dtype = DType::F32;      // A and B
  DType out_dtype = DType::F32;  // D and bias
  Device device;
};

// Validates and runs. Throws stavid::Error on bad shapes, strides, dtypes or epilogue combinations.
void gemm(const GemmParams& p, const Stream& stream);

// FLOPs of one call, for benchmarks: 2*m*n*k*batch.
inline double gemm_flops(const GemmParams& p) {
  return 2.0 * static_cast<double>(p.m) * p.n * p.k * p.batch;
}

namespace detail {
void gemm_cpu(const GemmParams& p);
void gemm_cuda(const GemmParams& p, CudaStream stream);
}  // namespace detail
}  // namespace stavid
