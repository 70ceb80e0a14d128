// Element-wise families: activations, binary ops with per-group broadcast, the gated residual, and
// the strided copy that also casts (views made contiguous, dtype conversion, permutations).
#pragma once

#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

enum class UnaryOp : uint8_t {
  GeluTanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  Silu,      // x / (1 + exp(-x))
};

// y[i] = op(x[i]) over n contiguous elements; y may alias x.
struct UnaryParams {
  UnaryOp op = UnaryOp::Silu;
  const void* x = nullptr;
  void* y = nullptr;
  int64_t n = 0;
  DType dtype = DType::F32;
  Device device;
};
void unary(const UnaryParams& p, const Stream& stream);

enum class BinaryOp : uint8_t { Add, Mul };

// Over a [rows, cols] grid:
//   y[r, c] = a[r*a_stride + c]  op  b[(r / b_rows_per_group) * b_stride + c * b_col_stride]
// b_rows_per_group = 1 with b_stride = cols is the same shape; rows_per_group = rows with
// b_stride = 0 broadcasts one row vector; rows_per_group = N_tokens broadcasts a per-batch vector;
// b_stride = 1 with b_col_stride = 0 broadcasts one value per row (a per-channel bias in NCTHW).
struct BinaryParams {
  BinaryOp op = BinaryOp::Add;
  const void* a = nullptr;
  const void* b = nullptr;
  void* y = nullptr;  // may alias a
  int64_t rows = 0, cols = 0;
  int64_t a_stride = 0, y_stride = 0;
  int64_t b_rows_per_group = 1, b_stride = 0;
  int64_t b_col_stride = 1;
  DType dtype = DType::F32;
  Device device;
};
void binary(const BinaryParams& p, const Stream& stream);

// Gated residual add, the adaLN-Zero update:
//   x[r, c] += scale * gate[(r / rows_per_group) * gate_stride + c] * y[r*y_stride + c]
// gate == nullptr means a gate of 1 (plain residual add; with `scale`, an axpy).
struct GatedResidualParams {
  void* x = nullptr;  // updated in place
  const void* y = nullptr;
  const void* gate = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t x_stride = 0, y_stride = 0;
  int64_t rows_per_group = 1, gate_stride = 0;
  float scale = 1.f;
  DType dtype = DType::F32;
  Device device;
};
void gated_residual(const GatedResidualParams& p, const Stream& stream);

// dst[idx] = cast(src[idx]) over an up-to-6-D index space with arbitrary element strides on each
// side. Covers contiguous(), permute/transpose materialization and dtype conversion.
constexpr int kMaxCopyDims = 6;
struct CopyParams {
  const void* src = nullptr;
  void* dst = nullptr;
  int ndim = 0;
  int64_t sizes[kMaxCopyDims] = {};
  int64_t src_strides[kMaxCopyDims] = {};
  int64_t dst_strides[kMaxCopyDims] = {};
  DType src_dtype = DType::F32;
  DType dst_dtype = DType::F32;
  Device device;  // both sides live here; cross-device transfers are the runtime's memcpy
};
void strided_copy(const CopyParams& p, const Stream& stream);

// Fills n contiguous elements with one value.
struct FillParams {
  void* y = nullptr;
  int64_t n = 0;
  float value = 0.f;
  DType dtype = DType::F32;
  Device device;
};
void fill(const FillParams& p, const Stream& stream);

// Two sums over n contiguous elements, in double: sum |a - b| and sum |b| (b may be null: then
// sum |a| and 0). TeaCache's relative L1 indicator is their ratio. `out` receives the two sums:
// host memory for the CPU, device memory for CUDA (the caller copies it back).
struct AbsSumsParams {
  const void* a = nullptr;
  const void* b = nullptr;
  int64_t n = 0;
  double* out = nullptr;  // [2]
  DType dtype = DType::F32;
  Device device;
};
void abs_sums(const AbsSumsParams& p, const Stream& stream);

// Per column group, the sum of squared differences over a [rows, cols] grid (double):
//   out[g] += sum_{r, c in group g} (a[r*a_stride + c] - b[r*b_stride + c])^2, g = c / group.
// `out` (cols / group doubles) is accumulated into, not cleared: host memory for the CPU, device
// memory for CUDA. Used by STA calibration (per-head error of a candidate window).
struct GroupSqDiffParams {
  const void* a = nullptr;
  const void* b = nullptr;
  int64_t rows = 0, cols = 0, group = 1;
  int64_t a_stride = 0, b_stride = 0;
  double* out = nullptr;
  DType dtype = DType::F32;
  Device device;
};
void group_sq_diff(const GroupSqDiffParams& p, const Stream& stream);

namespace detail {
void group_sq_diff_cpu(const GroupSqDiffParams& p);
void group_sq_diff_cuda(const GroupSqDiffParams& p, CudaStream s);
void abs_sums_cpu(const AbsSumsParams& p);
void abs_sums_cuda(const AbsSumsParams& p, CudaStream s);
void unary_cpu(const UnaryParams& p);
void binary_cpu(const BinaryParams& p);
void gated_residual_cpu(const GatedResidualParams& p);
void strided_copy_cpu(const CopyParams& p);
void fill_cpu(const FillParams& p);
void unary_cuda(const UnaryParams& p, CudaStream s);
void binary_cuda(const BinaryParams& p, CudaStream s);
void gated_residual_cuda(const GatedResidualParams& p, CudaStream s);
void strided_copy_cuda(const CopyParams& p, CudaStream s);
void fill_cuda(const FillParams& p, CudaStream s);
}  // namespace detail

// Scalar definitions shared by the CPU reference and the CUDA kernels.
#if defined(__CUDACC__)
#define STAVID_HD __host__ __device__ __forceinline__
#else
#define STAVID_HD inline
#endif
}  // namespace stavid

#include <cmath>
namespace stavid {
STAVID_HD float gelu_tanh_f(float x) {
  const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
  const float k1 = 0.044715f;
  return 0.5f * x * (1.f + tanhf(k0 * (x + k1 * x * x * x)));
}
STAVID_HD float silu_f(float x) { return x / (1.f + expf(-x)); }
}  // namespace stavid
