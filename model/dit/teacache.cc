#include "model/dit/teacache.h"

#include <cmath>
#include <limits>

#include "kernels/core/error.h"
#include "model/runtime/ops.h"

namespace stavid::dit {

TeaCache::TeaCache(TeaCacheOptions options, int num_steps) : opt_(options), num_steps_(num_steps) {
  STAVID_CHECK(num_steps >= 1, "TeaCache: num_steps must be >= 1");
  STAVID_CHECK(options.threshold >= 0.f, "TeaCache: threshold must be >= 0, got ", options.threshold);
}

double TeaCache::poly(double x) const {
  double y = 0;
  for (double c : opt_.coefficients) y = y * x + c;
  return y;
}

bool TeaCache::run_blocks(HunyuanDit& model, HunyuanDit::State& s) {
  const Tensor m = model.block0_modulated_input(s);
  bool compute = true;
  double rel = std::numeric_limits<double>::quiet_NaN();
  if (prev_modulated_.defined()) {
    auto [diff, mag] = ops::abs_sums(m, prev_modulated_);
    if (parallel::Communicator* comm = model.communicator(); comm && comm->size() > 1) {
      // Each rank holds its own image rows: sum the statistic over the group (added in rank order,
      // the same bits everywhere), so every rank makes the same decision.
      const std::vector<double> sums = comm->all_reduce_sum({diff, mag});
      diff = sums[0];
      mag = sums[1];
    }
    rel = mag > 0 ? diff / mag : std::numeric_limits<double>::infinity();
  }
  if (counter_ == 0 || counter_ == num_steps_ - 1 || !residual_.defined() || opt_.threshold <= 0.f) {
    acc_ = 0;
    acc_hist_.push_back(acc_);
  } else {
    acc_ += poly(rel);
    acc_hist_.push_back(acc_);  // the value the decision saw
    if (acc_ < opt_.threshold) {
      compute = false;
    } else {
      acc_ = 0;
    }
  }
  rel_.push_back(rel);
  prev_modulated_ = m.clone();
  counter_ = (counter_ + 1) % num_steps_;

  if (compute) {
    const Tensor before = s.img.clone();
    model.blocks(s);
    residual_ = s.img.clone();
    ops::axpy_(residual_, before, -1.f);
    ++computed_;
  } else {
    ops::axpy_(s.img, residual_, 1.f);
    s.block0_modulated = Tensor();
    ++skipped_;
  }
  return compute;
}

}  // namespace stavid::dit
