#include "model/dit/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/weights/json_file.h"
#include "kernels/core/error.h"

namespace stavid::dit {

void DitConfig::validate() const {
  STAVID_CHECK(in_channels > 0 && out_channels > 0, "config: in/out channels must be positive");
  STAVID_CHECK(num_attention_heads > 0 && attention_head_dim > 0, "config: heads and head dim must be positive");
  STAVID_CHECK(attention_head_dim % 2 == 0, "config: attention_head_dim must be even (RoPE pairs), got ",
               attention_head_dim);
  STAVID_CHECK(rope_axes_dim[0] + rope_axes_dim[1] + rope_axes_dim[2] == attention_head_dim,
               "config: rope_axes_dim (", rope_axes_dim[0], ", ", rope_axes_dim[1], ", ", rope_axes_dim[2],
               ") must sum to attention_head_dim ", attention_head_dim);
  for (int32_t d : rope_axes_dim) STAVID_CHECK(d >= 0 && d % 2 == 0, "config: rope_axes_dim entries must be even");
  STAVID_CHECK(num_layers >= 0 && num_single_layers >= 0 && num_refiner_layers >= 0, "config: negative layer count");
  STAVID_CHECK(patch_size >= 1 && patch_size_t >= 1, "config: patch sizes must be >= 1");
  STAVID_CHECK(mlp_ratio > 0.f, "config: mlp_ratio must be positive");
  STAVID_CHECK(text_embed_dim > 0 && pooled_projection_dim > 0, "config: text dims must be positive");
  STAVID_CHECK(rope_theta > 0.f, "config: rope_theta must be positive");
}

DitConfig DitConfig::from_json(const nlohmann::json& j) {
  DitConfig c;
  auto get = [&](const char* key, auto& field) {
    if (!j.contains(key) || j[key].is_null()) return;
    try {
      j.at(key).get_to(field);
    } catch (const nlohmann::json::exception& e) {
      STAVID_THROW(ErrorCode::InvalidArgument, "config: field '", key, "' has the wrong type: ", e.what());
    }
  };
  get("in_channels", c.in_channels);
  get("out_channels", c.out_channels);
  get("num_attention_heads", c.num_attention_heads);
  get("attention_head_dim", c.attention_head_dim);
  get("num_layers", c.num_layers);
  get("num_single_layers", c.num_single_layers);
  get("num_refiner_layers", c.num_refiner_layers);
  get("mlp_ratio", c.mlp_ratio);
  get("patch_size", c.patch_size);
  get("patch_size_t", c.patch_size_t);
  get("guidance_embeds", c.guidance_embeds);
  get("text_embed_dim", c.text_embed_dim);
  get("pooled_projection_dim", c.pooled_projection_dim);
  get("rope_theta", c.rope_theta);
  if (j.contains("rope_axes_dim")) {
    const auto& r = j["rope_axes_dim"];
    STAVID_CHECK(r.is_array() && r.size() == 3, "config: rope_axes_dim must be a list of 3 integers");
    for (int i = 0; i < 3; ++i) c.rope_axes_dim[i] = r[i].get<int32_t>();
  }
  if (j.contains("qk_norm") && j["qk_norm"].is_string())
    STAVID_CHECK(j["qk_norm"] == "rms_norm", "config: only qk_norm 'rms_norm' is supported");
  if (j.contains("image_condition_type") && !j["image_condition_type"].is_null())
    STAVID_THROW(ErrorCode::Unsupported, "config: image_condition_type is for I2V models; only T2V is supported");
  c.validate();
  return c;
}

DitConfig DitConfig::from_file(const std::string& path) {
  const nlohmann::json j = read_json_file(path, "config");
  try {
    return from_json(j);
  } catch (const Error& e) {
    STAVID_THROW(e.code(), path, ": ", e.message());
  }
}

int64_t DitConfig::parameter_count() const {
  const int64_t d = hidden(), f = mlp_hidden(), hd = attention_head_dim;
  auto lin = [](int64_t in, int64_t out) { return in * out + out; };
  int64_t n = 0;
  // x_embedder, time/guidance/pooled embedders
  n += patch_features() * d + d;
  n += lin(256, d) + lin(d, d);
  if (guidance_embeds) n += lin(256, d) + lin(d, d);
  n += lin(pooled_projection_dim, d) + lin(d, d);
  // context_embedder: refiner time + text embedders, proj_in, refiner blocks
  n += lin(256, d) + lin(d, d) + lin(text_embed_dim, d) + lin(d, d) + lin(text_embed_dim, d);
  const int64_t refiner = 2 * d /*norm1*/ + 4 * lin(d, d) + 2 * d /*norm2*/ + lin(d, f) + lin(f, d) + lin(d, 2 * d);
  n += num_refiner_layers * refiner;
  const int64_t dual = 2 * lin(d, 6 * d) + 6 * lin(d, d) + 4 * hd + 2 * lin(d, d) + 2 * (lin(d, f) + lin(f, d));
  n += num_layers * dual;
  const int64_t single = lin(d, 3 * d) + 3 * lin(d, d) + 2 * hd + lin(d, f) + lin(d + f, d);
  n += num_single_layers * single;
  n += lin(d, 2 * d);                                                   // norm_out.linear
  n += lin(d, static_cast<int64_t>(patch_size_t) * patch_size * patch_size * out_channels);  // proj_out
  return n;
}

}  // namespace stavid::dit
