// Row normalizations over the last dimension, computed in fp32 whatever the storage type.
//   LayerNorm:  y = (x - mean) * rstd [* weight + bias] [* (1 + scale) + shift]
//   RMSNorm:    y = x * rsqrt(mean(x^2) + eps) [* weight]
// The modulation (adaLN) vectors are per group of rows: row r uses scale/shift row r / rows_per_group,
// which is how one conditioning vector per batch item broadcasts over its tokens.
#pragma once

#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

enum class NormKind : uint8_t { LayerNorm, RmsNorm };

struct NormParams {
  NormKind kind = NormKind::LayerNorm;
  const void* x = nullptr;  // [rows, dim], row stride x_stride
  void* y = nullptr;        // [rows, dim], row stride y_stride (may alias x when strides match)
  int64_t rows = 0, dim = 0;
  int64_t x_stride = 0, y_stride = 0;
  const void* weight = nullptr;  // [dim] or null
  const void* bias = nullptr;    // [dim] or null (LayerNorm only)
  const void* scale = nullptr;   // modulation: [groups, dim], group stride mod_stride; or null
  const void* shift = nullptr;   // modulation: [groups, dim]; or null (LayerNorm only)
  int64_t rows_per_group = 1;
  int64_t mod_stride = 0;
  float eps = 1e-6f;
  DType dtype = DType::F32;  // x, y, weight, bias, scale, shift
  Device device;
};

void norm(const NormParams& p, const Stream& stream);

// Bytes a norm must move at least (x read once, y written once; the small vectors ignored).
inline double norm_bytes(const NormParams& p) {
  return 2.0 * static_cast<double>(p.rows) * p.dim * dtype_size(p.dtype);
}

namespace detail {
void norm_cpu(const NormParams& p);
void norm_cuda(const NormParams& p, CudaStream stream);

// The CUDA kernels, and the one selector that says which runs for a params struct.
enum class NormCudaKernel : uint8_t {
  RowGroup,  // a group of 8/16/32 lanes per row, the row in registers: dims of 8..16 vectors per lane
  BlockRow,  // a thread block per row, the row in registers (up to 4 vectors per thread)
  Generic,   // a thread block per row, re-reading global memory: any dim, stride or alignment
};
NormCudaKernel select_norm_cuda_kernel(const NormParams& p);
const char* norm_cuda_kernel_name(NormCudaKernel k);
// Runs a given kernel (for benchmarks and tests); throws if it cannot take these params.
void norm_cuda_with(const NormParams& p, CudaStream stream, NormCudaKernel kernel);
}  // namespace detail
}  // namespace stavid
