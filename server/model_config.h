// The serving config: which models the server loads and their per-model settings, read from one JSON
// file (format: docs/serving-config.md). Parsing checks the structure, types, ranges and that every
// referenced file or directory exists; weights and model configs are read later, by
// ModelPipeline::load(). Relative paths resolve against the config file's directory.
//
// Errors are stavid::Error naming the config file and the key ("demo.json: models[0].dit.dir: ..."):
// NotFound for a missing config or referenced path, DataLoss for a file that is not JSON,
// InvalidArgument for an unknown key, a wrong type, a value out of range or a duplicate model name.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "stavid/v1/video.pb.h"

namespace stavid::server {

// A diffusers-style model folder: config.json inside `dir`; weights in `weights` (a .safetensors
// file or a sharded index) or, when that is empty, found in `dir`.
struct ModelFiles {
  std::string dir;
  std::string weights;
  std::string checkpoint() const { return weights.empty() ? dir : weights; }
};

// The HunyuanVideo prompt path (model/text/prompt_encoder.h): a Llama-style LLM and CLIP-L, each a
// folder with config.json + safetensors, and their tokenizer.json files.
struct TextEncoderConfig {
  std::string llama_dir, llama_tokenizer;
  std::string clip_dir, clip_tokenizer;
  std::optional<std::string> prompt_template;  // with one "{}"; empty optional: HunyuanVideo's
  int32_t crop_start = 95;                     // template tokens cut from the LLM states
  int32_t max_length = 256;                    // text slots reaching the DiT
  int32_t skip_layers = 2;                     // hidden_states[-(skip_layers + 1)]
  int32_t clip_length = 77;
  uint32_t cache_capacity = 64;                // prompts kept by the encoder's LRU cache
};

struct ModelConfig {
  std::string name;
  std::string description;
  ModelFiles dit;
  ModelFiles vae;
  std::optional<TextEncoderConfig> text_encoder;  // exactly one of text_encoder and embeddings
  std::string embeddings;  // safetensors with "text" [1, L, D], "text_mask" [1, L], "pooled" [1, P]
  std::array<int32_t, 3> tile = {6, 8, 8};  // STA tile in latent tokens (t, h, w)
  // Request defaults (a request field left 0 takes these). frames/height/width 0: the request must
  // set them.
  uint32_t default_frames = 0, default_height = 0, default_width = 0;
  uint32_t default_steps = 50;
  float default_guidance = 6.0f;
  float default_flow_shift = 7.0f;
  uint32_t default_fps = 24;
  stavid::v1::StaMode default_sta;  // kind DENSE unless the config says otherwise
  // Limits of this model (the server's RequestLimits may be stricter).
  uint32_t max_frames = 129;
  uint64_t max_pixels = 720ull * 1280ull;
  std::map<std::string, std::string> strategies;  // name -> mask-strategy JSON file
  size_t vae_memory_budget_bytes = 0;  // 0: decode the whole clip at once
  // GPU group size (devices per worker) this model's jobs run on when a request leaves
  // gpu_group_size 0; 0: any worker. Checked at load against the server's groups and the heads.
  uint32_t group_size = 0;
};

struct ServingConfig {
  std::string path;  // the file it came from ("" when parsed from memory)
  std::vector<ModelConfig> models;

  static ServingConfig from_file(const std::string& path);
  // `source` names the document in errors; relative paths resolve against `base_dir`.
  static ServingConfig from_json(const nlohmann::json& j, const std::string& source, const std::string& base_dir);
  const ModelConfig* find(const std::string& name) const;
};

}  // namespace stavid::server
