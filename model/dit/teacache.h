// TeaCache for HunyuanVideo (spec section 7): skip the transformer blocks on steps whose input has
// changed little, reusing the cached residual of the last computed step.
//
// Per forward call i of a generation (counter wraps at num_steps):
//   m = dual block 0's modulated image input; rel = mean|m - m_prev| / mean|m_prev|
//   i == 0 or i == num_steps - 1: compute, acc = 0
//   else acc += poly(rel); acc < threshold: skip; else compute, acc = 0
//   m_prev = m on every call. Computed steps store residual = img_after_blocks - img_before_blocks;
//   skipped steps use img + residual. The final layer always runs.
// In a sequence-parallel group (HunyuanDit::set_communicator) each rank holds its own image rows,
// so the two sums of rel are all-reduced over the group first: every rank takes the same decision.
#pragma once

#include <array>
#include <vector>

#include "model/dit/dit.h"

namespace stavid::dit {

struct TeaCacheOptions {
  float threshold = 0.f;  // 0 disables skipping (every step computes)
  // poly1d coefficients, highest power first (HunyuanVideo's, from the TeaCache repository).
  std::array<double, 5> coefficients = {733.226126, -401.131952, 67.5869174, -3.14987800, 0.0961237896};
};

class TeaCache {
 public:
  TeaCache(TeaCacheOptions options, int num_steps);

  // Runs the blocks of one forward, or skips them; leaves s.img ready for the final layer.
  // Returns true when the blocks were computed.
  bool run_blocks(HunyuanDit& model, HunyuanDit::State& s);

  int computed() const { return computed_; }
  int skipped() const { return skipped_; }
  // Per call: the relative L1 change (NaN for the first call) and the accumulator after the call.
  const std::vector<double>& rel_history() const { return rel_; }
  const std::vector<double>& acc_history() const { return acc_hist_; }

 private:
  double poly(double x) const;

  TeaCacheOptions opt_;
  int num_steps_;
  int counter_ = 0;
  double acc_ = 0;
  Tensor prev_modulated_;
  Tensor residual_;
  int computed_ = 0, skipped_ = 0;
  std::vector<double> rel_, acc_hist_;
};

}  // namespace stavid::dit
