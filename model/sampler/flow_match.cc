#include "model/sampler/flow_match.h"

#include "kernels/core/error.h"
#include "model/runtime/ops.h"

namespace stavid::sampler {

std::vector<float> flow_sigmas(int steps, float shift) {
  STAVID_CHECK(steps >= 1, "sampler: steps must be >= 1, got ", steps);
  STAVID_CHECK(shift > 0.f, "sampler: flow shift must be positive, got ", shift);
  std::vector<float> s(static_cast<size_t>(steps) + 1, 0.f);
  for (int i = 0; i < steps; ++i) {
    const double u = 1.0 - static_cast<double>(i) / steps;
    s[i] = static_cast<float>(shift * u / (1.0 + (shift - 1.0) * u));
  }
  return s;
}

Tensor sample_euler(const Tensor& noise, const std::vector<float>& sigmas, const VelocityFn& velocity,
                    const StepCallback& on_step) {
  STAVID_CHECK(sigmas.size() >= 2, "sampler: need at least one step");
  Tensor x = noise.to(DType::F32).clone();
  const int steps = static_cast<int>(sigmas.size()) - 1;
  for (int i = 0; i < steps; ++i) {
    const StepInfo info{i, steps, sigmas[i], sigmas[i + 1]};
    const Tensor v = velocity(x, info).to(DType::F32).contiguous();
    STAVID_CHECK(v.shape() == x.shape(), "sampler: velocity ", v.str(), " does not match latents ", x.str());
    ops::axpy_(x, v, sigmas[i + 1] - sigmas[i]);
    if (on_step && !on_step(x, info)) break;
  }
  return x;
}

Tensor cfg_combine(const Tensor& v_cond, const Tensor& v_uncond, float scale) {
  // v_u + s * (v_c - v_u) = v_u * (1 - s) + s * v_c
  Tensor out = v_uncond.to(DType::F32).clone();
  Tensor diff = v_cond.to(DType::F32).clone();
  ops::axpy_(diff, v_uncond.to(DType::F32).contiguous(), -1.f);
  ops::axpy_(out, diff, scale);
  return out;
}

}  // namespace stavid::sampler
