// Branch-free float math for CPU loops that GCC vectorizes (baseline x86-64 SSE2 included): exp,
// sigmoid-form GELU-tanh and SiLU. libm's expf / tanhf are scalar calls and were the GELU and
// softmax cost of a CPU DiT step (docs/perf-notes.md, "CPU pipeline").
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace stavid::cpu {

// e^x with relative error below 2e-7 for x in [-87.3, 88]; inputs outside are clamped (the results
// stay finite and normal: about 1.2e-38 and 1.65e38). exp(x) = 2^n e^r, n = round(x / ln 2),
// |r| <= ln 2 / 2 (Cody-Waite split of ln 2), e^r by its degree-7 Taylor polynomial.
inline float exp_fast(float x) {
  x = x < -87.3f ? -87.3f : x;  // value selects (not std::min / max, which return references) if-convert
  x = x > 88.0f ? 88.0f : x;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}

// GELU with the tanh approximation, in its sigmoid form: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)),
// u = sqrt(2 / pi) (x + 0.044715 x^3); no cancellation near 0.
inline float gelu_tanh_fast(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.f + exp_fast(-2.f * u));
}

inline float silu_fast(float x) { return x / (1.f + exp_fast(-x)); }

}  // namespace stavid::cpu
