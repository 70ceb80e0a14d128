// HunyuanVideo transformer configuration: the fields of the diffusers config.json
// (HunyuanVideoTransformer3DModel). Defaults are the released 13B T2V model (spec section 1).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace stavid::dit {

struct DitConfig {
  int32_t in_channels = 16;
  int32_t out_channels = 16;
  int32_t num_attention_heads = 24;
  int32_t attention_head_dim = 128;
  int32_t num_layers = 20;         // dual-stream blocks
  int32_t num_single_layers = 40;  // single-stream blocks
  int32_t num_refiner_layers = 2;
  float mlp_ratio = 4.0f;
  int32_t patch_size = 2;    // spatial
  int32_t patch_size_t = 1;  // temporal
  bool guidance_embeds = true;
  int32_t text_embed_dim = 4096;
  int32_t pooled_projection_dim = 768;
  float rope_theta = 256.0f;
  std::array<int32_t, 3> rope_axes_dim = {16, 56, 56};

  int64_t hidden() const { return static_cast<int64_t>(num_attention_heads) * attention_head_dim; }
  int64_t mlp_hidden() const { return static_cast<int64_t>(static_cast<double>(hidden()) * mlp_ratio); }
  int64_t patch_features() const { return static_cast<int64_t>(in_channels) * patch_size_t * patch_size * patch_size; }
  int32_t total_layers() const { return num_layers + num_single_layers; }

  // Throws stavid::Error naming the field on inconsistent values (e.g. rope axes not summing to
  // the head dim, odd head dim).
  void validate() const;
  // Reads the diffusers config.json fields; unknown fields are ignored, missing ones keep defaults.
  static DitConfig from_json(const nlohmann::json& j);
  static DitConfig from_file(const std::string& path);
  // The parameter count of the diffusers state dict for this config (12,821,012,544 for the default).
  int64_t parameter_count() const;
};

}  // namespace stavid::dit
