#include "model/dit/calibration.h"

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "model/runtime/cuda_runtime.h"

namespace stavid::dit {

StaCalibration::StaCalibration(const DitConfig& config, CalibrationOptions options, int num_steps)
    : config_(config), opt_(std::move(options)), num_steps_(num_steps) {
  STAVID_CHECK(num_steps >= 1, "calibration: num_steps must be >= 1");
  STAVID_CHECK(!opt_.candidates.empty(), "calibration: no candidate windows");
  STAVID_CHECK(opt_.dense_steps >= 0, "calibration: dense_steps must be >= 0");
  sum_.assign(static_cast<size_t>(num_steps) * config.total_layers() * opt_.candidates.size() *
                  config.num_attention_heads,
              0.0);
  elements_.assign(static_cast<size_t>(num_steps), 0.0);
}

size_t StaCalibration::index(int step, int layer, int cand, int head) const {
  const size_t nc = opt_.candidates.size(), nh = static_cast<size_t>(config_.num_attention_heads);
  return ((static_cast<size_t>(step) * config_.total_layers() + layer) * nc + cand) * nh + head;
}

void StaCalibration::accumulate(int step, HunyuanDit& model, AttentionProbe& probe) {
  STAVID_CHECK(step >= 0 && step < num_steps_, "calibration: step ", step, " out of range");
  const size_t per_step = static_cast<size_t>(config_.total_layers()) * opt_.candidates.size() *
                          config_.num_attention_heads;
  std::vector<double> host(per_step, 0.0);
  const Device dev = model.device();
  rt::copy_bytes(host.data(), Device::cpu(), probe.sums.as<double>(), dev, per_step * sizeof(double),
                 rt::current_stream(dev));
  for (size_t i = 0; i < per_step; ++i) sum_[static_cast<size_t>(step) * per_step + i] += host[i];
  elements_[step] += static_cast<double>(probe.elements_per_head);
  const std::vector<double> zeros(per_step, 0.0);
  rt::copy_bytes(probe.sums.as<double>(), dev, zeros.data(), Device::cpu(), per_step * sizeof(double),
                 rt::current_stream(dev));
  rt::synchronize(rt::current_stream(dev));
}

double StaCalibration::mse(int step, int layer, int candidate, int head) const {
  return elements_[step] > 0 ? sum_[index(step, layer, candidate, head)] / elements_[step] : 0.0;
}

int StaCalibration::choice(int step, int layer, int head) const {
  if (!searches(step) || elements_[step] <= 0) return -1;
  int best = 0;
  for (int c = 1; c < static_cast<int>(opt_.candidates.size()); ++c)
    if (mse(step, layer, c, head) < mse(step, layer, best, head)) best = c;
  return best;
}

nlohmann::json StaCalibration::strategy_json(const std::array<int32_t, 3>& token_grid) const {
  int32_t grid[3];
  for (int d = 0; d < 3; ++d) grid[d] = (token_grid[d] + opt_.tile[d] - 1) / opt_.tile[d];
  nlohmann::json j = nlohmann::json::object();
  for (int step = 0; step < num_steps_; ++step)
    for (int l = 0; l < config_.total_layers(); ++l)
      for (int h = 0; h < config_.num_attention_heads; ++h) {
        const int c = choice(step, l, h);
        StaWindow w{grid[0], grid[1], grid[2]};
        if (c >= 0) w = opt_.candidates[c];
        // Clip candidates to the grid so the file validates on this canvas.
        w = StaWindow{std::min(w.t, grid[0]), std::min(w.h, grid[1]), std::min(w.w, grid[2])};
        j[std::to_string(step) + "_" + std::to_string(l) + "_" + std::to_string(h)] = {w.t, w.h, w.w};
      }
  return j;
}

}  // namespace stavid::dit
