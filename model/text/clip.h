// The CLIP text transformer (HF CLIPTextModel semantics) as HunyuanVideo's second text encoder
// (shared/spec/hunyuan-video.md section 5: openai/clip-vit-large-patch14's text tower, 77 tokens,
// pooler_output, no text_projection). Config-driven, CPU (fp32) and CUDA (bf16/fp16) through the
// existing ops. Written from the architecture of transformers' models/clip/modeling_clip.py; checked
// against tools/reference/text_encoders.py.
//
// x = token_embedding[ids] + position_embedding[0..L-1]; per layer (pre-LN):
// x += out_proj(attn(layer_norm1(x))), x += fc2(quick_gelu(fc1(layer_norm2(x)))); last_hidden_state =
// final_layer_norm(x).
// - Attention is causal (text_encoders' causal_attention, declared in llama.h); with valid lengths it is
//   also masked to the valid keys (HF's attention_mask, which the original HunyuanVideo passes; diffusers
//   does not). Valid rows and the pooled output do not depend on it.
// - quick_gelu(y) = y sigmoid(1.702 y) = silu(1.702 y) / 1.702, composed with the GEMM's alpha: fc1 runs
//   with alpha 1.702 and its bias scaled by 1.702 at load time, SiLU follows, and fc2 runs with alpha
//   1/1.702 (its bias unscaled), so no elementwise scaling op is needed.
// - Pooling (HF CLIPTextTransformer): when the config's eos_token_id is 2 (the legacy value that
//   openai/clip-vit-large-patch14's config carries, and HunyuanVideo's text_encoder_2 with it), the pooled
//   row is at argmax(ids), the first maximum: <|endoftext|> has the vocabulary's highest id and CLIP-L's
//   tokenizer pads with it too, so the first maximum is the real EOS. Any other eos_token_id: the first
//   position holding it (position 0 when there is none, as HF's argmax of an all-zero row gives).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "model/runtime/tensor.h"
#include "model/text/llama.h"

namespace stavid {
class Checkpoint;
}

namespace stavid::text {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int32_t num_hidden_layers = 12;
  int32_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  float layer_norm_eps = 1e-5f;
  int64_t eos_token_id = 2;  // 2: the legacy argmax pooling rule (see above)

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Throws InvalidArgument naming the field.
  void validate() const;
  // HF CLIPTextConfig fields, or a CLIPConfig whose "text_config" holds them. hidden_size,
  // intermediate_size, num_hidden_layers, num_attention_heads and vocab_size are required; others take
  // HF's defaults when absent (max_position_embeddings 77, layer_norm_eps 1e-5, eos_token_id 49407).
  // hidden_act must be quick_gelu (Unsupported otherwise).
  static ClipTextConfig from_json(const nlohmann::json& j, const std::string& what = "CLIP config");
  static ClipTextConfig from_file(const std::string& path);
  // Parameters of the text tower (CLIPTextModel state dict): 123,060,480 for the default (CLIP-L).
  int64_t parameter_count() const;
  // The pooled position for one row of ids (the rule above).
  int64_t pool_position(const std::vector<int32_t>& ids) const;
};

struct ClipLayer {
  Tensor ln1_w, ln1_b, ln2_w, ln2_b;  // layer_norm1/2 [D]
  Tensor qkv_w, qkv_b;                // self_attn.q_proj|k_proj|v_proj fused: [3D, D], [3D]
  Tensor out_w, out_b;                // self_attn.out_proj
  Tensor fc1_w, fc1_b;                // mlp.fc1 [F, D]; fc1_b holds 1.702 * bias (quick-GELU, above)
  Tensor fc2_w, fc2_b;                // mlp.fc2 [D, F]
};

struct ClipTextOutput {
  Tensor last_hidden_state;  // [B, L, D], final LayerNorm applied
  Tensor pooled;             // [B, D]: last_hidden_state at each row's pool position
};

class ClipTextModel {
 public:
  // Reads HF CLIPTextModel names (text_model.*). Keys of a full CLIPModel that the text tower does not use
  // (vision_model.*, visual_projection, text_projection, logit_scale) and the position_ids buffer are
  // skipped; every missing, mis-shaped, unreadable or other unused key is reported in one DataLoss error.
  ClipTextModel(ClipTextConfig config, const Checkpoint& ckpt, Device device, DType dtype);
  static ClipTextModel load(const std::string& dir, Device device, DType dtype);
  static ClipTextModel random(ClipTextConfig config, uint64_t seed, Device device, DType dtype);

  // batch.valid empty: pure causal attention (diffusers' call); given: also masked to the valid keys
  // (the original HunyuanVideo's call). L <= max_position_embeddings.
  ClipTextOutput forward(const TokenBatch& batch) const;
  // The state after `num_layers` encoder layers, before the final LayerNorm (for tests).
  Tensor encoder_states(const TokenBatch& batch, int32_t num_layers) const;

  const ClipTextConfig& config() const { return config_; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }

  size_t max_score_bytes = size_t(256) << 20;  // as LlamaModel's

 private:
  ClipTextModel(ClipTextConfig config, const Checkpoint* ckpt, Device device, DType dtype, uint64_t seed);
  void layer(const ClipLayer& w, Tensor& x, const Tensor& mask, const std::vector<int32_t>& valid) const;

  ClipTextConfig config_;
  Device device_;
  DType dtype_;
  Tensor token_embedding_;     // [V, D], host memory
  Tensor position_embedding_;  // [P, D], host memory (added during the host gather)
  std::vector<ClipLayer> layers_;
  Tensor final_w_, final_b_;  // final_layer_norm [D]
};

}  // namespace stavid::text
