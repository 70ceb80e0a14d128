// Which STA window every head of every layer uses at every denoising step: dense, one fixed window
// with dense first steps, or a calibrated mask strategy in the original's JSON format
// ({"<step>_<layer>_<head>": [wt, wh, ww]}, layers counting dual blocks first; shared/spec/sta.md 6).
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/dit/config.h"
#include "model/dit/dit.h"

namespace stavid::dit {

class StaStrategy {
 public:
  // Full attention everywhere.
  static StaStrategy dense(std::array<int32_t, 3> tile = {6, 8, 8});
  // One window for every head and layer, after `dense_steps` dense steps.
  static StaStrategy fixed(StaWindow window, int dense_steps, std::array<int32_t, 3> tile = {6, 8, 8});
  // A mask-strategy JSON. Every step present must list every (layer, head) of the model; steps
  // absent from the file run dense. Validated against the model and the token grid: a key outside
  // the model's layers or heads, a missing key, or a window entry outside 1..grid is rejected with
  // an error naming the key.
  static StaStrategy from_json(const nlohmann::json& j, const DitConfig& config, std::array<int32_t, 3> tile,
                               std::array<int32_t, 3> token_grid);
  static StaStrategy from_file(const std::string& path, const DitConfig& config, std::array<int32_t, 3> tile,
                               std::array<int32_t, 3> token_grid);

  // The plan for one step (0-based). Steps past the strategy's last listed step run dense.
  AttentionPlan plan(int step, const DitConfig& config) const;
  // Number of steps the strategy lists (0 for dense/fixed).
  int listed_steps() const { return static_cast<int>(steps_.size()); }
  // Kept fraction of image attention over all listed (step, layer, head), dense steps counting 1.
  double kept_fraction(const DitConfig& config, std::array<int32_t, 3> token_grid, int num_steps) const;
  const std::array<int32_t, 3>& tile() const { return tile_; }

 private:
  enum class Kind { Dense, Fixed, Table };
  Kind kind_ = Kind::Dense;
  std::array<int32_t, 3> tile_ = {6, 8, 8};
  StaWindow fixed_{};
  int dense_steps_ = 0;
  std::map<int, std::vector<std::vector<StaWindow>>> steps_;  // step -> [layer][head]
};

}  // namespace stavid::dit
