// Shared helpers for the test suites: random data, error metrics, GPU skip.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/core/dtype.h"
#include "model/runtime/cuda_runtime.h"

namespace stavid::test {

// GPU tests skip without a device. On the GPU machine, scripts/gpu-check.sh sets STAVID_EXPECT_GPU=1
// so that a missing device fails the test instead of skipping it silently.
#define STAVID_REQUIRE_CUDA()                                                              \
  do {                                                                                     \
    if (!::stavid::rt::cuda_available()) {                                                 \
      if (::stavid::test::gpu_expected()) FAIL() << "STAVID_EXPECT_GPU=1 but no CUDA device"; \
      GTEST_SKIP() << "no CUDA device";                                                    \
    }                                                                                      \
  } while (0)

inline bool gpu_expected() {
  const char* e = std::getenv("STAVID_EXPECT_GPU");
  return e != nullptr && e[0] == '1';
}

// Uniform values in [lo, hi), rounded through `dtype` so both sides of a comparison see the same data.
inline std::vector<float> random_values(size_t n, uint32_t seed, DType dtype = DType::F32, float lo = -1.f,
                                        float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = round_to(dtype, dist(gen));
  return v;
}

// Normalized mean squared error: sum (a-b)^2 / sum b^2 (b is the reference).
inline double nmse(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? num / den : num;
}
inline double nmse(const std::vector<float>& a, const std::vector<float>& ref) {
  return nmse(a, std::vector<double>(ref.begin(), ref.end()));
}

inline bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

// Machine epsilon-ish per storage type, for thresholds: NMSE of rounding alone is about eps^2 / 3.
inline double dtype_nmse_tol(DType t) {
  switch (t) {
    case DType::F32: return 1e-10;
    case DType::BF16: return 2e-5;
    case DType::F16: return 1e-6;
  }
  return 0;
}

}  // namespace stavid::test
