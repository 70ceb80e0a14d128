// Row softmax on CUDA. Policy: one block per row, three passes over the row in global memory (max,
// sum of exponentials, write); the row is re-read from L2/L1. Not on a hot path: attention has its
// own fused kernels, and this serves small shapes and tests.
#include "kernels/cuda_utils.cuh"
#include "kernels/softmax.h"

namespace stavid::detail {
namespace {

template <typename T>
__global__ void softmax_kernel(const T* x, T* y, int64_t cols, int64_t x_stride, int64_t y_stride,
                               float scale) {
  __shared__ float scratch[32];
  const T* xr = x + blockIdx.x * x_stride;
  T* yr = y + blockIdx.x * y_stride;
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, scale * cuda::ld(xr, c));
  mx = cuda::block_max(mx, scratch);
  const bool empty = mx == -INFINITY;
  float sum = 0.f;
  if (!empty)
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += __expf(scale * cuda::ld(xr, c) - mx);
  sum = cuda::block_sum(sum, scratch);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    cuda::st(yr, c, empty ? 0.f : __expf(scale * cuda::ld(xr, c) - mx) * inv);
}
}  // namespace

void softmax_cuda(const SoftmaxParams& p, CudaStream s) {
  STAVID_CHECK(p.rows <= 0x7fffffffLL, "softmax: too many rows for one launch: ", p.rows);
  const unsigned threads = p.cols >= 1024 ? 512 : (p.cols >= 256 ? 256 : 64);
  STAVID_DISPATCH_DTYPE(p.dtype, {
    softmax_kernel<T><<<static_cast<unsigned>(p.rows), threads, 0, s>>>(
        static_cast<const T*>(p.x), static_cast<T*>(p.y), p.cols, p.x_stride, p.y_stride, p.scale);
  });
  STAVID_CUDA_CHECK_LAUNCH();
}

}  // namespace stavid::detail
