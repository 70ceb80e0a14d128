// Flow-matching Euler sampler (spec section 6), separate from the network: a sigma schedule, and a
// stepper over a `velocity(x, sigma, step)` callback, so any network (or a stub) can drive it.
#pragma once

#include <functional>
#include <vector>

#include "model/runtime/tensor.h"

namespace stavid::sampler {

// sigma_i = shift*s/(1 + (shift-1)*s), s = 1 - i/N, i = 0..N-1, then a terminal 0 (N+1 values).
std::vector<float> flow_sigmas(int steps, float shift);

// The timestep fed to the DiT for a sigma: sigma * 1000.
inline float timestep_of(float sigma) { return sigma * 1000.f; }

struct StepInfo {
  int step = 0;       // 0-based
  int steps = 0;
  float sigma = 0.f;  // sigma_i
  float sigma_next = 0.f;
};

// Returns the velocity [same shape as x, fp32] at (x, sigma_i).
using VelocityFn = std::function<Tensor(const Tensor& x, const StepInfo& info)>;
// Called after each step with the updated latents (progress, previews); return false to stop early.
using StepCallback = std::function<bool(const Tensor& x, const StepInfo& info)>;

// Runs Euler steps x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i in fp32 from the initial noise
// (copied, not modified). Returns the final latents (or those at the step where `on_step` stopped).
Tensor sample_euler(const Tensor& noise, const std::vector<float>& sigmas, const VelocityFn& velocity,
                    const StepCallback& on_step = nullptr);

// True classifier-free guidance: v = v_uncond + scale * (v_cond - v_uncond).
Tensor cfg_combine(const Tensor& v_cond, const Tensor& v_uncond, float scale);

}  // namespace stavid::sampler
