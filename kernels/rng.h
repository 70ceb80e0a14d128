// Counter-based normal samples (Philox-4x32-10 + Box-Muller), identical on CPU and GPU.
// Element i of a draw with (seed, offset) comes from Philox block (offset + i) / 4, lane i % 4, so a
// sample depends only on (seed, offset, i): not on the device, the launch shape or the thread count.
// The Box-Muller transform runs in double on both sides, so the float results agree to rounding.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

#if defined(__CUDACC__)
#define STAVID_RNG_HD __host__ __device__ __forceinline__
#else
#define STAVID_RNG_HD inline
#endif

namespace stavid {

struct NormalParams {
  void* y = nullptr;  // n contiguous elements
  int64_t n = 0;
  uint64_t seed = 0;
  uint64_t offset = 0;  // element offset into the stream: continues an earlier draw
  float mean = 0.f, stddev = 1.f;
  DType dtype = DType::F32;
  Device device;
};

void normal(const NormalParams& p, const Stream& stream);

namespace detail {
void normal_cpu(const NormalParams& p);
void normal_cuda(const NormalParams& p, CudaStream s);
}  // namespace detail

struct Philox4 {
  uint32_t v[4];
};

STAVID_RNG_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t prod = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(prod >> 32);
  return static_cast<uint32_t>(prod);
}

// Philox-4x32 with 10 rounds (Salmon et al., SC'11), counter = block index, key = seed.
STAVID_RNG_HD Philox4 philox4x32(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Four standard normals from one Philox block: two Box-Muller pairs, in double.
STAVID_RNG_HD void philox_normal4(uint64_t block, uint64_t seed, float out[4]) {
  const Philox4 r = philox4x32(block, seed);
  const double two_pi = 6.283185307179586476925286766559;
  const double inv32 = 2.3283064365386962890625e-10;  // 2^-32
  for (int pair = 0; pair < 2; ++pair) {
    const double u1 = (static_cast<double>(r.v[2 * pair]) + 1.0) * inv32;  // (0, 1]
    const double u2 = static_cast<double>(r.v[2 * pair + 1]) * inv32;      // [0, 1)
    const double radius = sqrt(-2.0 * log(u1));
    out[2 * pair] = static_cast<float>(radius * cos(two_pi * u2));
    out[2 * pair + 1] = static_cast<float>(radius * sin(two_pi * u2));
  }
}

}  // namespace stavid
