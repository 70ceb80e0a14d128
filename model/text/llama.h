// The Llama decoder stack as HunyuanVideo's LLM text encoder (shared/spec/hunyuan-video.md section 5):
// HF LlamaModel semantics (no LM head), config-driven from the HF config.json, CPU (fp32) and CUDA
// (bf16/fp16) through the existing ops. Written from the architecture of transformers'
// models/llama/modeling_llama.py; checked against tools/reference/text_encoders.py.
//
// Per decoder layer: x += o_proj(attn(rope(q), rope(k), v)) on RMSNorm(x), then
// x += down_proj(silu(gate_proj(h)) * up_proj(h)) on RMSNorm(x).
// - Grouped-query attention: query head h reads key/value head h / (H / KV) (HF repeat_kv).
// - RoPE is rotate-half (NeoX): q' = q cos + rotate_half(q) sin, rotate_half(q) = [-q2, q1], with
//   cos/sin of position * inv_freq (inv_freq = 1 / theta^(2j / head_dim), both in fp32 as HF computes
//   them; cos/sin rounded to the model dtype). Composed from existing ops: q|k copied out of the fused
//   qkv projection, a half-swapped copy (two strided copies), then q*cos, swapped*sin' (sin' = [-sin, sin]
//   folds the sign in) and their sum, each a broadcast binary op over per-position tables.
// - Attention is causal with right padding: query i of item b sees keys [0, min(i + 1, valid[b])),
//   i.e. HF's causal mask combined with the attention mask, so every row (padding rows included) is
//   exact. See causal_attention below.
// - hidden_states(batch, n) is HF's hidden_states[n]: the state after n decoder layers without the
//   final norm; only those n layers run. HunyuanVideo takes hidden_states[-3] of 32 layers = n = 30.
//
// Both text encoders take a TokenBatch (below); the other pieces they share (clip.cc uses them) are
// declared at the end: the embedding gather, the causal mask and attention, the checkpoint reader.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <set>
#include <string>
#include <vector>

#include "model/runtime/tensor.h"

namespace stavid {
class Checkpoint;
}

namespace stavid::text {

// A right-padded batch of token ids: B rows of the same length L. Row b's first valid[b] tokens are real
// (the attention mask); the rest is padding. An empty `valid` means every token is real.
struct TokenBatch {
  std::vector<std::vector<int32_t>> ids;
  std::vector<int32_t> valid;

  int64_t batch() const { return static_cast<int64_t>(ids.size()); }
  int64_t length() const { return ids.empty() ? 0 : static_cast<int64_t>(ids[0].size()); }
  // valid[b], or L when `valid` is empty.
  int32_t valid_length(int64_t b) const;
  // Throws InvalidArgument: no rows, ragged rows, L outside [1, max_length], an id outside
  // [0, vocab_size), valid of the wrong size or a length outside [1, L]. `model` prefixes the message.
  void validate(int64_t vocab_size, int64_t max_length, const char* model) const;
};

struct LlamaConfig {
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 14336;
  int32_t num_hidden_layers = 32;
  int32_t num_attention_heads = 32;
  int32_t num_key_value_heads = 8;
  int64_t head_dim = 128;  // HF: hidden_size / num_attention_heads unless the config names it
  float rms_norm_eps = 1e-5f;
  double rope_theta = 500000.0;
  int64_t vocab_size = 128320;
  int64_t max_position_embeddings = 8192;

  // Throws InvalidArgument naming the field: non-positive sizes, heads not a multiple of kv heads, odd
  // head_dim, eps or theta not positive.
  void validate() const;
  // HF config.json fields. hidden_size, intermediate_size, num_hidden_layers, num_attention_heads and
  // vocab_size are required; the others take HF's defaults when absent (num_key_value_heads =
  // num_attention_heads, rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 2048, head_dim =
  // hidden / heads). Unsupported variants (hidden_act other than silu, attention or MLP biases,
  // rope_scaling) throw Unsupported.
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& what = "Llama config");
  // Throws NotFound (missing file), DataLoss (not JSON) or the errors above, naming the path.
  static LlamaConfig from_file(const std::string& path);
  // Parameters of the HF LlamaModel state dict (no lm_head): 7,505,186,816 for the default config.
  int64_t parameter_count() const;
};

struct LlamaLayer {
  Tensor input_norm;  // input_layernorm [D]
  Tensor qkv;         // self_attn.q_proj|k_proj|v_proj fused: [(H + 2 KV) hd, D]
  Tensor o;           // self_attn.o_proj [D, H hd]
  Tensor post_norm;   // post_attention_layernorm [D]
  Tensor gate_up;     // mlp.gate_proj|up_proj fused: [2F, D]
  Tensor down;        // mlp.down_proj [D, F]
};

struct LlamaLoadOptions {
  // Load only the first n decoder layers (-1: all). Keys of later layers are skipped, not reported;
  // hidden_states can then run at most n layers. HunyuanVideo needs 30 of 32.
  int32_t num_layers = -1;
  // Load model.norm.weight (only hidden_states(..., final_norm = true) uses it).
  bool final_norm = true;
};

class LlamaModel {
 public:
  // Reads HF LlamaModel / LlamaForCausalLM safetensors names, with or without the "model." prefix
  // (a LlamaModel saved on its own has none; the prefix is detected from the embedding key). Present but
  // unneeded keys are skipped: lm_head.weight, rotary_emb.inv_freq buffers, layers beyond
  // options.num_layers, model.norm.weight without options.final_norm. Every missing, mis-shaped,
  // unreadable and unused key is reported together in one DataLoss error.
  LlamaModel(LlamaConfig config, const Checkpoint& ckpt, Device device, DType dtype, LlamaLoadOptions options = {});
  // config.json + the safetensors (one file, a sharded index, or a directory holding them) in `dir`.
  static LlamaModel load(const std::string& dir, Device device, DType dtype, LlamaLoadOptions options = {});
  // Seeded random weights of the config's shapes (benchmarks): matrices N(0, 1/fan_in), norm weights 1,
  // the embedding table N(0, 1).
  static LlamaModel random(LlamaConfig config, uint64_t seed, Device device, DType dtype,
                           LlamaLoadOptions options = {});

  // HF hidden_states[num_layers] for the batch: [B, L, hidden_size] in the model dtype on the model device,
  // the state after `num_layers` decoder layers (0: the embeddings), computing only those layers.
  // final_norm additionally applies model.norm (with num_layers = all: HF last_hidden_state).
  // Positions are 0..L-1 for every row (right padding does not shift them).
  Tensor hidden_states(const TokenBatch& batch, int32_t num_layers, bool final_norm = false) const;

  const LlamaConfig& config() const { return config_; }
  int32_t loaded_layers() const { return static_cast<int32_t>(layers_.size()); }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }

  // Bounds the fp32 attention-score buffer of one query block (all heads); longer sequences run in
  // blocks of query rows.
  size_t max_score_bytes = size_t(256) << 20;

 private:
  LlamaModel(LlamaConfig config, const Checkpoint* ckpt, Device device, DType dtype, LlamaLoadOptions options,
             uint64_t seed);
  void layer(const LlamaLayer& w, Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& mask,
             const std::vector<int32_t>& valid) const;
  Tensor rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin) const;

  LlamaConfig config_;
  Device device_;
  DType dtype_;
  Tensor embed_;  // embed_tokens [V, D], in host memory (rows are gathered on the host, then uploaded)
  std::vector<LlamaLayer> layers_;
  Tensor norm_;  // model.norm [D]; undefined unless loaded
};

// ---------------------------------------------------------------------------------------------------
// Shared by the text encoders.
// ---------------------------------------------------------------------------------------------------

// table [V, D] (host) rows for the batch's ids, plus positions [P, D] (host, rows 0..L-1) when defined,
// summed in fp32 and rounded once to the table's dtype: [B, L, D] on `device`.
Tensor gather_embeddings(const Tensor& table, const TokenBatch& batch, const Tensor& positions, Device device);

// The additive causal mask [L, L] fp32 on `device`: 0 where key j <= query i, -inf above the diagonal.
Tensor causal_mask(int64_t seq_len, Device device);

// Exact causal self-attention with right padding, built from GEMMs (no attention kernel: the STA kernel
// has no causal mask). Query i of item b sees keys [0, min(i + 1, valid[b])): per block of query rows
// [r0, r1) the keys run to min(r1, valid[b]) and the causal mask is added to the scores (the score
// buffer is filled with the mask, then the Q.K^T GEMM accumulates onto it), which masks both the future
// and the padding. Scores and softmax in fp32, probabilities rounded to the input dtype before P.V.
// GQA: the KV heads are repeated to the query heads by one stride-0 copy per item. Scale 1/sqrt(hd).
//   q [B, L, H*hd], k and v [B, L, KV*hd]: last dim contiguous, rows and batch items any stride (views of a
//   fused projection work). mask: causal_mask(L). Returns [B, L, H*hd], contiguous.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int32_t heads, int32_t kv_heads,
                        const std::vector<int32_t>& valid, const Tensor& mask, size_t max_score_bytes);

enum class ParamKind { Matrix, Bias, NormWeight, NormBias, Embedding };

// Reads named parameters from a checkpoint, collecting every problem, or makes seeded random ones when
// the checkpoint is null. Loading is a walk over the names a model expects; finish() then reports
// missing, mis-shaped, unreadable and unused keys together.
class WeightReader {
 public:
  WeightReader(const Checkpoint* ckpt, Device device, DType dtype, uint64_t seed, std::string model);
  // The tensor `name` of `shape` in the reader's dtype on `device`, multiplied by `scale` (in fp32, before
  // rounding to the dtype). A problem is recorded and zeros are returned.
  Tensor get(const std::string& name, const Shape& shape, ParamKind kind, Device device, float scale = 1.f);
  Tensor get(const std::string& name, const Shape& shape, ParamKind kind) { return get(name, shape, kind, device_); }
  // Several [rows_i, cols] tensors stacked into one [sum rows_i, cols] (fused projections); cols 0 stacks
  // vectors [rows_i] into [sum rows_i] (fused biases).
  Tensor fused(const std::vector<std::pair<std::string, int64_t>>& names_rows, int64_t cols, ParamKind kind);
  // Keys the model does not need: not reported as unused when present.
  void skip_if(std::function<bool(const std::string&)> pred) { skips_.push_back(std::move(pred)); }
  // Throws DataLoss listing every problem (no-op for random weights).
  void finish() const;

 private:
  Tensor random(const Shape& shape, ParamKind kind, Device device);

  const Checkpoint* ckpt_;
  Device device_;
  DType dtype_;
  NormalStream stream_;
  std::string model_;
  std::set<std::string> used_;
  std::vector<std::string> problems_;
  std::vector<std::function<bool(const std::string&)>> skips_;
};

}  // namespace stavid::text
