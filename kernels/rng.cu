// Normal RNG on CUDA: one thread per Philox block of four samples, exactly the blocks the CPU path
// computes (kernels/rng.h), so both give the same numbers for the same (seed, offset).
#include "kernels/cuda_utils.cuh"
#include "kernels/rng.h"

namespace stavid::detail {
namespace {

template <typename T>
__global__ void normal_kernel(T* y, uint64_t first, uint64_t last, uint64_t seed, float mean, float stddev) {
  const uint64_t block0 = first / 4;
  const uint64_t nblocks = (last + 3) / 4 - block0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < nblocks; i += stride) {
    const uint64_t block = block0 + i;
    float z[4];
    philox_normal4(block, seed, z);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const uint64_t e = block * 4 + lane;
      if (e >= first && e < last) cuda::st(y, static_cast<int64_t>(e - first), mean + stddev * z[lane]);
    }
  }
}
}  // namespace

void normal_cuda(const NormalParams& p, CudaStream s) {
  const uint64_t first = p.offset, last = p.offset + static_cast<uint64_t>(p.n);
  const int64_t nblocks = static_cast<int64_t>((last + 3) / 4 - first / 4);
  STAVID_DISPATCH_DTYPE(p.dtype, {
    normal_kernel<T><<<cuda::grid_for(nblocks, 256), 256, 0, s>>>(static_cast<T*>(p.y), first, last,
                                                                p.seed, p.mean, p.stddev);
  });
  STAVID_CUDA_CHECK_LAUNCH();
}

}  // namespace stavid::detail
