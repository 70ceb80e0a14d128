#include "model/text/clip.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/weights/json_file.h"
#include "kernels/core/error.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/ops.h"
#include "model/weights/safetensors.h"

namespace stavid::text {
namespace {

constexpr float kQuickGelu = 1.702f;

// y = alpha * (x . w^T) + bias for a contiguous x [..., K] (ops::linear has no alpha).
Tensor linear_scaled(const Tensor& x, const Tensor& w, const Tensor& bias, float alpha) {
  STAVID_CHECK(x.is_contiguous() && w.dim() == 2 && x.size(-1) == w.size(1), "CLIP: linear of ", x.str(), " by ",
               w.str());
  Shape shape = x.shape();
  shape.back() = w.size(0);
  Tensor y = Tensor::empty(shape, x.dtype(), x.device());
  GemmParams p;
  p.a = x.data();
  p.b = w.data();
  p.bias = bias.data();
  p.d = y.data();
  p.k = w.size(1);
  p.n = w.size(0);
  p.m = x.numel() / p.k;
  p.lda = p.ldb = p.k;
  p.ldd = p.n;
  p.alpha = alpha;
  p.epilogue = GemmEpilogue::Bias;
  p.dtype = p.out_dtype = x.dtype();
  p.device = x.device();
  gemm(p, rt::current_stream(x.device()));
  return y;
}

// x = silu(x) in place (contiguous).
void silu_(Tensor& x) {
  UnaryParams p;
  p.op = UnaryOp::Silu;
  p.x = p.y = x.data();
  p.n = x.numel();
  p.dtype = x.dtype();
  p.device = x.device();
  unary(p, rt::current_stream(x.device()));
}

}  // namespace

void ClipTextConfig::validate() const {
  auto positive = [](int64_t v, const char* name) {
    STAVID_CHECK(v > 0, "CLIP config: ", name, " must be positive, got ", v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(max_position_embeddings, "max_position_embeddings");
  STAVID_CHECK(hidden_size % num_attention_heads == 0, "CLIP config: hidden_size ", hidden_size,
               " is not a multiple of num_attention_heads ", num_attention_heads);
  STAVID_CHECK(layer_norm_eps > 0.f, "CLIP config: layer_norm_eps must be positive, got ", layer_norm_eps);
}

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& root, const std::string& what) {
  STAVID_CHECK(root.is_object(), what, ": expected a JSON object");
  const nlohmann::json& j =
      root.contains("text_config") && root["text_config"].is_object() ? root["text_config"] : root;
  ClipTextConfig c;
  try {
    const JsonFields fields(j, what);
    fields.required("vocab_size", c.vocab_size);
    fields.required("hidden_size", c.hidden_size);
    fields.required("intermediate_size", c.intermediate_size);
    fields.required("num_hidden_layers", c.num_hidden_layers);
    fields.required("num_attention_heads", c.num_attention_heads);
    fields.optional("max_position_embeddings", c.max_position_embeddings, int64_t{77});
    fields.optional("layer_norm_eps", c.layer_norm_eps, 1e-5f);
    fields.optional("eos_token_id", c.eos_token_id, int64_t{49407});
    std::string act;
    fields.optional("hidden_act", act, std::string("quick_gelu"));
    STAVID_CHECK_CODE(act == "quick_gelu", ErrorCode::Unsupported, what, ": hidden_act \"", act,
                      "\" (only quick_gelu)");
  } catch (const nlohmann::json::exception& e) {
    STAVID_THROW(ErrorCode::InvalidArgument, what, ": ", e.what());
  }
  validate_in_context(c, what);
  return c;
}

ClipTextConfig ClipTextConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path, "CLIP config"), "CLIP config " + path);
}

int64_t ClipTextConfig::parameter_count() const {
  const int64_t d = hidden_size, f = intermediate_size;
  const int64_t per_layer = 4 * (d * d + d) + 4 * d + (f * d + f) + (d * f + d);
  return vocab_size * d + max_position_embeddings * d + num_hidden_layers * per_layer + 2 * d;
}

int64_t ClipTextConfig::pool_position(const std::vector<int32_t>& ids) const {
  STAVID_CHECK(!ids.empty(), "CLIP: pooling an empty row");
  if (eos_token_id == 2) return std::max_element(ids.begin(), ids.end()) - ids.begin();  // first maximum
  const auto it = std::find(ids.begin(), ids.end(), eos_token_id);
  return it == ids.end() ? 0 : it - ids.begin();
}

ClipTextModel::ClipTextModel(ClipTextConfig config, const Checkpoint& ckpt, Device device, DType dtype)
    : ClipTextModel(std::move(config), &ckpt, device, dtype, 0) {}

ClipTextModel ClipTextModel::random(ClipTextConfig config, uint64_t seed, Device device, DType dtype) {
  return ClipTextModel(std::move(config), nullptr, device, dtype, seed);
}

ClipTextModel ClipTextModel::load(const std::string& dir, Device device, DType dtype) {
  ClipTextConfig c = ClipTextConfig::from_file(dir + "/config.json");
  const Checkpoint ckpt = Checkpoint::open(dir);
  return ClipTextModel(std::move(c), ckpt, device, dtype);
}

ClipTextModel::ClipTextModel(ClipTextConfig config, const Checkpoint* ckpt, Device device, DType dtype, uint64_t seed)
    : config_(std::move(config)), device_(device), dtype_(dtype) {
  config_.validate();
  const ClipTextConfig& c = config_;
  WeightReader r(ckpt, device, dtype, seed, "CLIP text");
  r.skip_if([](const std::string& n) {
    return n.rfind("vision_model.", 0) == 0 || n.rfind("visual_projection.", 0) == 0 ||
           n.rfind("text_projection.", 0) == 0 || n == "logit_scale" || n == "text_model.embeddings.position_ids";
  });
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const std::string e = "text_model.embeddings.";
  token_embedding_ = r.get(e + "token_embedding.weight", {c.vocab_size, d}, ParamKind::Embedding, Device::cpu());
  position_embedding_ =
      r.get(e + "position_embedding.weight", {c.max_position_embeddings, d}, ParamKind::Embedding, Device::cpu());
  for (int32_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "text_model.encoder.layers." + std::to_string(i) + ".";
    ClipLayer l;
    l.ln1_w = r.get(p + "layer_norm1.weight", {d}, ParamKind::NormWeight);
    l.ln1_b = r.get(p + "layer_norm1.bias", {d}, ParamKind::NormBias);
    l.qkv_w = r.fused(
        {{p + "self_attn.q_proj.weight", d}, {p + "self_attn.k_proj.weight", d}, {p + "self_attn.v_proj.weight", d}}, d,
        ParamKind::Matrix);
    l.qkv_b =
        r.fused({{p + "self_attn.q_proj.bias", d}, {p + "self_attn.k_proj.bias", d}, {p + "self_attn.v_proj.bias", d}},
                0, ParamKind::Bias);
    l.out_w = r.get(p + "self_attn.out_proj.weight", {d, d}, ParamKind::Matrix);
    l.out_b = r.get(p + "self_attn.out_proj.bias", {d}, ParamKind::Bias);
    l.ln2_w = r.get(p + "layer_norm2.weight", {d}, ParamKind::NormWeight);
    l.ln2_b = r.get(p + "layer_norm2.bias", {d}, ParamKind::NormBias);
    l.fc1_w = r.get(p + "mlp.fc1.weight", {f, d}, ParamKind::Matrix);
    l.fc1_b = r.get(p + "mlp.fc1.bias", {f}, ParamKind::Bias, device, kQuickGelu);
    l.fc2_w = r.get(p + "mlp.fc2.weight", {d, f}, ParamKind::Matrix);
    l.fc2_b = r.get(p + "mlp.fc2.bias", {d}, ParamKind::Bias);
    layers_.push_back(std::move(l));
  }
  final_w_ = r.get("text_model.final_layer_norm.weight", {d}, ParamKind::NormWeight);
  final_b_ = r.get("text_model.final_layer_norm.bias", {d}, ParamKind::NormBias);
  r.finish();
}

void ClipTextModel::layer(const ClipLayer& w, Tensor& x, const Tensor& mask, const std::vector<int32_t>& valid) const {
  const ClipTextConfig& c = config_;
  const int64_t d = c.hidden_size;
  const Tensor h = ops::layer_norm(x, w.ln1_w, w.ln1_b, c.layer_norm_eps);  // [B, L, D]
  const Tensor qkv = ops::linear(h, w.qkv_w, w.qkv_b);                      // [B, L, 3D]
  const Tensor o = causal_attention(qkv.slice(2, 0, d), qkv.slice(2, d, 2 * d), qkv.slice(2, 2 * d, 3 * d),
                                    c.num_attention_heads, c.num_attention_heads, valid, mask,
                                    max_score_bytes);  // [B, L, D]
  ops::gated_residual_(x, ops::linear(o, w.out_w, w.out_b), Tensor());
  const Tensor h2 = ops::layer_norm(x, w.ln2_w, w.ln2_b, c.layer_norm_eps);  // [B, L, D]
  Tensor g = linear_scaled(h2, w.fc1_w, w.fc1_b, kQuickGelu);                // [B, L, F]: 1.702 fc1(h2)
  silu_(g);                                                                  // 1.702 quick_gelu(fc1(h2))
  ops::gated_residual_(x, linear_scaled(g, w.fc2_w, w.fc2_b, 1.f / kQuickGelu), Tensor());
}

Tensor ClipTextModel::encoder_states(const TokenBatch& batch, int32_t num_layers) const {
  const ClipTextConfig& c = config_;
  batch.validate(c.vocab_size, c.max_position_embeddings, "CLIP");
  STAVID_CHECK(num_layers >= 0 && num_layers <= c.num_hidden_layers, "CLIP: cannot run ", num_layers, " of ",
               c.num_hidden_layers, " layers");
  const int64_t b = batch.batch(), l = batch.length();
  std::vector<int32_t> valid(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) valid[static_cast<size_t>(i)] = batch.valid_length(i);
  Tensor x = gather_embeddings(token_embedding_, batch, position_embedding_, device_);  // [B, L, D]
  const Tensor mask = causal_mask(l, device_);
  for (int32_t i = 0; i < num_layers; ++i) layer(layers_[static_cast<size_t>(i)], x, mask, valid);
  return x;
}

ClipTextOutput ClipTextModel::forward(const TokenBatch& batch) const {
  const ClipTextConfig& c = config_;
  const Tensor x = encoder_states(batch, c.num_hidden_layers);  // [B, L, D]
  ClipTextOutput out;
  out.last_hidden_state = ops::layer_norm(x, final_w_, final_b_, c.layer_norm_eps);
  out.pooled = Tensor::empty({batch.batch(), c.hidden_size}, dtype_, device_);  // [B, D]
  for (int64_t i = 0; i < batch.batch(); ++i) {
    const int64_t pos = c.pool_position(batch.ids[static_cast<size_t>(i)]);
    out.pooled.select(0, i).copy_from(out.last_hidden_state.select(0, i).select(0, pos));
  }
  return out;
}

}  // namespace stavid::text
