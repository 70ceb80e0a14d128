#include "model/dit/sta_strategy.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/weights/json_file.h"
#include "kernels/core/error.h"

namespace stavid::dit {

StaStrategy StaStrategy::dense(std::array<int32_t, 3> tile) {
  StaStrategy s;
  s.tile_ = tile;
  return s;
}

StaStrategy StaStrategy::fixed(StaWindow window, int dense_steps, std::array<int32_t, 3> tile) {
  STAVID_CHECK(window.t >= 1 && window.h >= 1 && window.w >= 1, "STA window (", window.t, ", ", window.h, ", ",
               window.w, ") must be >= 1 on every axis");
  STAVID_CHECK(dense_steps >= 0, "STA: dense_steps must be >= 0");
  StaStrategy s;
  s.kind_ = Kind::Fixed;
  s.tile_ = tile;
  s.fixed_ = window;
  s.dense_steps_ = dense_steps;
  return s;
}

StaStrategy StaStrategy::from_json(const nlohmann::json& j, const DitConfig& config, std::array<int32_t, 3> tile,
                                   std::array<int32_t, 3> token_grid) {
  STAVID_CHECK(j.is_object(), "mask strategy: expected a JSON object of \"step_layer_head\": [wt, wh, ww]");
  const int32_t layers = config.total_layers(), heads = config.num_attention_heads;
  int32_t grid[3];
  for (int d = 0; d < 3; ++d) grid[d] = (token_grid[d] + tile[d] - 1) / tile[d];
  StaStrategy s;
  s.kind_ = Kind::Table;
  s.tile_ = tile;
  std::map<int, std::vector<std::vector<int>>> seen;  // step -> [layer][head] set flags
  for (const auto& [key, value] : j.items()) {
    int step = -1, layer = -1, head = -1;
    char tail = 0;
    STAVID_CHECK(std::sscanf(key.c_str(), "%d_%d_%d%c", &step, &layer, &head, &tail) == 3,
                 "mask strategy: key \"", key, "\" is not \"<step>_<layer>_<head>\"");
    STAVID_CHECK(step >= 0 && step < 10000, "mask strategy: key \"", key, "\": step out of range");
    STAVID_CHECK(layer >= 0 && layer < layers, "mask strategy: key \"", key, "\": layer ", layer,
                 " but the model has ", layers, " layers (", config.num_layers, " dual + ", config.num_single_layers,
                 " single)");
    STAVID_CHECK(head >= 0 && head < heads, "mask strategy: key \"", key, "\": head ", head, " but the model has ",
                 heads, " heads");
    STAVID_CHECK(value.is_array() && value.size() == 3 && value[0].is_number_integer() &&
                     value[1].is_number_integer() && value[2].is_number_integer(),
                 "mask strategy: key \"", key, "\": value must be [wt, wh, ww] integers");
    const int32_t w[3] = {value[0].get<int32_t>(), value[1].get<int32_t>(), value[2].get<int32_t>()};
    for (int d = 0; d < 3; ++d)
      STAVID_CHECK(w[d] >= 1 && w[d] <= grid[d], "mask strategy: key \"", key, "\": window [", w[0], ", ", w[1], ", ",
                   w[2], "] does not fit the ", grid[0], "x", grid[1], "x", grid[2], " tile grid (axis ", d, ")");
    auto& table = s.steps_[step];
    if (table.empty()) table.assign(layers, std::vector<StaWindow>(heads));
    auto& flags = seen[step];
    if (flags.empty()) flags.assign(layers, std::vector<int>(heads, 0));
    table[layer][head] = StaWindow{w[0], w[1], w[2]};
    flags[layer][head] = 1;
  }
  for (const auto& [step, flags] : seen)
    for (int32_t l = 0; l < layers; ++l)
      for (int32_t h = 0; h < heads; ++h)
        STAVID_CHECK(flags[l][h], "mask strategy: step ", step, " lacks key \"", step, "_", l, "_", h, "\"");
  return s;
}

StaStrategy StaStrategy::from_file(const std::string& path, const DitConfig& config, std::array<int32_t, 3> tile,
                                   std::array<int32_t, 3> token_grid) {
  const nlohmann::json j = read_json_file(path, "mask strategy", ErrorCode::InvalidArgument);
  try {
    return from_json(j, config, tile, token_grid);
  } catch (const Error& e) {
    STAVID_THROW(e.code(), path, ": ", e.message());
  }
}

AttentionPlan StaStrategy::plan(int step, const DitConfig& config) const {
  AttentionPlan p;
  p.tile = tile_;
  switch (kind_) {
    case Kind::Dense:
      break;
    case Kind::Fixed:
      if (step >= dense_steps_)
        p.windows.assign(config.total_layers(), std::vector<StaWindow>(config.num_attention_heads, fixed_));
      break;
    case Kind::Table:
      if (auto it = steps_.find(step); it != steps_.end()) p.windows = it->second;
      break;
  }
  return p;
}

double StaStrategy::kept_fraction(const DitConfig& config, std::array<int32_t, 3> token_grid, int num_steps) const {
  const StaGeometry g = make_sta_geometry(token_grid.data(), tile_.data(), 0, 0);
  double kept = 0;
  int64_t count = 0;
  for (int step = 0; step < num_steps; ++step) {
    const AttentionPlan p = plan(step, config);
    for (int32_t l = 0; l < config.total_layers(); ++l)
      for (int32_t h = 0; h < config.num_attention_heads; ++h, ++count)
        kept += p.dense() ? 1.0 : sta_kept_fraction(g, p.windows[l][h]);
  }
  return count ? kept / static_cast<double>(count) : 1.0;
}

}  // namespace stavid::dit
