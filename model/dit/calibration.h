// Training-free STA window calibration (shared/spec/sta.md section 6): per (step, layer, head), pick
// the candidate window whose attention output is closest (mean squared error over image queries)
// to full attention, averaged over prompts. The full-attention output is what propagates, so the
// search does not perturb the trajectory; the first `dense_steps` steps stay dense.
#pragma once

#include <array>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/dit/dit.h"

namespace stavid::dit {

struct CalibrationOptions {
  // The paper's HunyuanVideo candidates on its 5x6x10 tile grid (full = 5,6,10 is not a candidate).
  std::vector<StaWindow> candidates = {{5, 3, 3}, {3, 3, 5}, {1, 6, 10}, {5, 6, 1}, {5, 1, 10}};
  int dense_steps = 15;
  std::array<int32_t, 3> tile = {6, 8, 8};
};

class StaCalibration {
 public:
  StaCalibration(const DitConfig& config, CalibrationOptions options, int num_steps);

  const CalibrationOptions& options() const { return opt_; }
  // Whether `step` is searched (false for the dense steps).
  bool searches(int step) const { return step >= opt_.dense_steps && step < num_steps_; }
  // Adds one probed forward's sums for `step` (read from the probe's device buffer), then clears
  // the probe's sums for the next forward.
  void accumulate(int step, HunyuanDit& model, AttentionProbe& probe);
  // Mean squared error of a candidate at (step, layer, head), averaged over accumulated forwards.
  double mse(int step, int layer, int candidate, int head) const;
  // The chosen candidate index for (step, layer, head); -1 for dense or unmeasured steps.
  int choice(int step, int layer, int head) const;
  // The mask strategy in the original's format: every (step, layer, head) key; dense steps and
  // unmeasured steps get the full grid window.
  nlohmann::json strategy_json(const std::array<int32_t, 3>& token_grid) const;

 private:
  size_t index(int step, int layer, int cand, int head) const;

  DitConfig config_;
  CalibrationOptions opt_;
  int num_steps_;
  std::vector<double> sum_;         // [steps][layers][candidates][heads]
  std::vector<double> elements_;    // [steps]: elements per head accumulated
};

}  // namespace stavid::dit
