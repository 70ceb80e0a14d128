// CPU path of the counter-based normal RNG: the same Philox blocks the GPU computes.
#include "kernels/rng.h"

namespace stavid::detail {

void normal_cpu(const NormalParams& p) {
  const uint64_t first = p.offset;
  const uint64_t last = p.offset + static_cast<uint64_t>(p.n);  // exclusive
  for (uint64_t block = first / 4; block * 4 < last; ++block) {
    float z[4];
    philox_normal4(block, p.seed, z);
    for (int lane = 0; lane < 4; ++lane) {
      const uint64_t e = block * 4 + lane;
      if (e < first || e >= last) continue;
      store_from_float(p.y, p.dtype, static_cast<size_t>(e - first), p.mean + p.stddev * z[lane]);
    }
  }
}

}  // namespace stavid::detail
