#include "model/text/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/weights/json_file.h"
#include "kernels/core/error.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/rng.h"
#include "kernels/softmax.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/ops.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"

namespace stavid::text {

// ---------------------------------------------------------------------------------------------------
// Token batch
// ---------------------------------------------------------------------------------------------------

int32_t TokenBatch::valid_length(int64_t b) const {
  return valid.empty() ? static_cast<int32_t>(length()) : valid[static_cast<size_t>(b)];
}

void TokenBatch::validate(int64_t vocab_size, int64_t max_length, const char* model) const {
  STAVID_CHECK(!ids.empty(), model, ": empty token batch");
  const int64_t l = length();
  STAVID_CHECK(l >= 1 && l <= max_length, model, ": sequence length ", l, " outside [1, ", max_length, "]");
  for (size_t b = 0; b < ids.size(); ++b) {
    STAVID_CHECK(static_cast<int64_t>(ids[b].size()) == l, model, ": row ", b, " has ", ids[b].size(),
                 " tokens, row 0 has ", l, " (pad every row to one length)");
    for (size_t i = 0; i < ids[b].size(); ++i)
      STAVID_CHECK(ids[b][i] >= 0 && ids[b][i] < vocab_size, model, ": token id ", ids[b][i], " at [", b, ", ", i,
                   "] outside the vocabulary [0, ", vocab_size, ")");
  }
  STAVID_CHECK(valid.empty() || valid.size() == ids.size(), model, ": ", valid.size(), " valid lengths for ",
               ids.size(), " rows");
  for (size_t b = 0; b < valid.size(); ++b)
    STAVID_CHECK(valid[b] >= 1 && valid[b] <= l, model, ": valid length ", valid[b], " of row ", b, " outside [1, ", l,
                 "]");
}

// ---------------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------------

void LlamaConfig::validate() const {
  auto positive = [](int64_t v, const char* name) {
    STAVID_CHECK(v > 0, "Llama config: ", name, " must be positive, got ", v);
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  positive(max_position_embeddings, "max_position_embeddings");
  STAVID_CHECK(num_attention_heads % num_key_value_heads == 0, "Llama config: num_attention_heads ",
               num_attention_heads, " is not a multiple of num_key_value_heads ", num_key_value_heads);
  STAVID_CHECK(head_dim % 2 == 0, "Llama config: head_dim ", head_dim, " must be even (RoPE halves)");
  STAVID_CHECK(rms_norm_eps > 0.f, "Llama config: rms_norm_eps must be positive, got ", rms_norm_eps);
  STAVID_CHECK(rope_theta > 0.0, "Llama config: rope_theta must be positive, got ", rope_theta);
}

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j, const std::string& what) {
  STAVID_CHECK(j.is_object(), what, ": expected a JSON object");
  LlamaConfig c;
  try {
    const JsonFields fields(j, what);
    fields.required("hidden_size", c.hidden_size);
    fields.required("intermediate_size", c.intermediate_size);
    fields.required("num_hidden_layers", c.num_hidden_layers);
    fields.required("num_attention_heads", c.num_attention_heads);
    fields.required("vocab_size", c.vocab_size);
    fields.optional("num_key_value_heads", c.num_key_value_heads, c.num_attention_heads);
    fields.optional("rms_norm_eps", c.rms_norm_eps, 1e-6f);
    fields.optional("rope_theta", c.rope_theta, 10000.0);
    fields.optional("max_position_embeddings", c.max_position_embeddings, int64_t{2048});
    STAVID_CHECK(c.num_attention_heads > 0, what, ": num_attention_heads must be positive");
    fields.optional("head_dim", c.head_dim, c.hidden_size / c.num_attention_heads);
    if (!fields.has("head_dim"))
      STAVID_CHECK(c.hidden_size % c.num_attention_heads == 0, what, ": hidden_size ", c.hidden_size,
                   " is not a multiple of num_attention_heads ", c.num_attention_heads);
    std::string act = "silu";
    fields.optional("hidden_act", act, std::string("silu"));
    STAVID_CHECK_CODE(act == "silu", ErrorCode::Unsupported, what, ": hidden_act \"", act, "\" (only silu)");
    for (const char* k : {"attention_bias", "mlp_bias"}) {
      bool b = false;
      fields.optional(k, b, false);
      STAVID_CHECK_CODE(!b, ErrorCode::Unsupported, what, ": ", k, " = true is not supported");
    }
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      const nlohmann::json& rs = j["rope_scaling"];
      std::string type;
      if (rs.is_object()) {
        if (rs.contains("rope_type"))
          rs["rope_type"].get_to(type);
        else if (rs.contains("type"))
          rs["type"].get_to(type);
      }
      STAVID_CHECK_CODE(type == "default", ErrorCode::Unsupported, what, ": rope_scaling ", rs.dump(),
                        " is not supported (plain RoPE only)");
    }
  } catch (const nlohmann::json::exception& e) {
    STAVID_THROW(ErrorCode::InvalidArgument, what, ": ", e.what());
  }
  validate_in_context(c, what);
  return c;
}

LlamaConfig LlamaConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path, "Llama config"), "Llama config " + path);
}

int64_t LlamaConfig::parameter_count() const {
  const int64_t d = hidden_size, f = intermediate_size;
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  const int64_t per_layer = 2 * d + q * d + 2 * kv * d + d * q + 3 * f * d;
  return vocab_size * d + num_hidden_layers * per_layer + d;
}

// ---------------------------------------------------------------------------------------------------
// Weight reader
// ---------------------------------------------------------------------------------------------------

WeightReader::WeightReader(const Checkpoint* ckpt, Device device, DType dtype, uint64_t seed, std::string model)
    : ckpt_(ckpt), device_(device), dtype_(dtype), stream_(seed), model_(std::move(model)) {}

Tensor WeightReader::random(const Shape& shape, ParamKind kind, Device device) {
  if (kind == ParamKind::NormWeight) return Tensor::full(shape, 1.f, dtype_, device);
  if (kind == ParamKind::NormBias) return Tensor::zeros(shape, dtype_, device);
  const float stddev = kind == ParamKind::Bias        ? 0.02f
                       : kind == ParamKind::Embedding ? 1.f
                                                      : 1.f / std::sqrt(static_cast<float>(shape.back()));
  return stream_.next(shape, stddev, dtype_, device);
}

Tensor WeightReader::get(const std::string& name, const Shape& shape, ParamKind kind, Device device, float scale) {
  Tensor t;
  if (ckpt_ == nullptr) {
    t = random(shape, kind, device);
  } else {
    used_.insert(name);
    const TensorRecord* rec = ckpt_->find(name);
    if (rec == nullptr) {
      problems_.push_back("missing: " + name + " " + shape_str(shape));
      return Tensor::zeros(shape, dtype_, device);
    }
    const Shape got(rec->shape.begin(), rec->shape.end());
    if (got != shape) {
      problems_.push_back("shape: " + name + " is " + shape_str(got) + ", expected " + shape_str(shape));
      return Tensor::zeros(shape, dtype_, device);
    }
    try {
      t = load_tensor(*ckpt_, *rec, scale == 1.f ? device : Device::cpu(), scale == 1.f ? dtype_ : DType::F32);
    } catch (const Error& e) {
      problems_.push_back("unreadable: " + name + ": " + e.message());
      return Tensor::zeros(shape, dtype_, device);
    }
  }
  if (scale == 1.f) return t;
  std::vector<float> v = t.to_host_f32();
  for (float& x : v) x *= scale;
  return Tensor::from_host(v, shape, dtype_, device);
}

Tensor WeightReader::fused(const std::vector<std::pair<std::string, int64_t>>& names_rows, int64_t cols,
                           ParamKind kind) {
  int64_t rows = 0;
  for (const auto& [name, r] : names_rows) rows += r;
  Tensor out = Tensor::empty(cols > 0 ? Shape{rows, cols} : Shape{rows}, dtype_, device_);
  int64_t r0 = 0;
  for (const auto& [name, r] : names_rows) {
    out.slice(0, r0, r0 + r).copy_from(get(name, cols > 0 ? Shape{r, cols} : Shape{r}, kind));
    r0 += r;
  }
  return out;
}

void WeightReader::finish() const {
  if (ckpt_ == nullptr) return;
  std::vector<std::string> all = problems_;
  for (const std::string& n : ckpt_->names()) {
    if (used_.count(n)) continue;
    const bool skipped = std::any_of(skips_.begin(), skips_.end(), [&](const auto& pred) { return pred(n); });
    if (!skipped) all.push_back("unused: " + n);
  }
  if (all.empty()) return;
  std::ostringstream os;
  os << model_ << " checkpoint " << ckpt_->path() << " does not match the config (" << all.size() << " problems):";
  const size_t shown = std::min<size_t>(all.size(), 40);
  for (size_t i = 0; i < shown; ++i) os << "\n  " << all[i];
  if (shown < all.size()) os << "\n  ... and " << all.size() - shown << " more";
  STAVID_THROW(ErrorCode::DataLoss, os.str());
}

// ---------------------------------------------------------------------------------------------------
// Shared pieces: embeddings, mask, attention
// ---------------------------------------------------------------------------------------------------

Tensor gather_embeddings(const Tensor& table, const TokenBatch& batch, const Tensor& positions, Device device) {
  STAVID_CHECK(table.device().is_cpu() && table.dim() == 2 && table.is_contiguous(),
               "gather_embeddings: the table must be a contiguous host [V, D], got ", table.str());
  const int64_t b = batch.batch(), l = batch.length(), d = table.size(1), v = table.size(0);
  const DType dt = table.dtype();
  const size_t row_bytes = static_cast<size_t>(d) * dtype_size(dt);
  if (positions.defined())
    STAVID_CHECK(positions.device().is_cpu() && positions.is_contiguous() && positions.dim() == 2 &&
                     positions.size(0) >= l && positions.size(1) == d && positions.dtype() == dt,
                 "gather_embeddings: positions ", positions.str(), " do not cover ", l, " rows of ", d);
  Tensor out = Tensor::empty({b, l, d}, dt, Device::cpu());  // [B, L, D]
  const char* src = static_cast<const char*>(table.data());
  char* dst = static_cast<char*>(out.data());
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t i = 0; i < l; ++i) {
      const int64_t id = batch.ids[static_cast<size_t>(bi)][static_cast<size_t>(i)];
      STAVID_CHECK(id >= 0 && id < v, "gather_embeddings: id ", id, " outside [0, ", v, ")");
      char* row = dst + static_cast<size_t>(bi * l + i) * row_bytes;
      if (!positions.defined()) {
        std::memcpy(row, src + static_cast<size_t>(id) * row_bytes, row_bytes);
        continue;
      }
      const void* pos = static_cast<const char*>(positions.data()) + static_cast<size_t>(i) * row_bytes;
      const void* tok = src + static_cast<size_t>(id) * row_bytes;
      for (int64_t c = 0; c < d; ++c)
        store_from_float(
            row, dt, static_cast<size_t>(c),
            load_as_float(tok, dt, static_cast<size_t>(c)) + load_as_float(pos, dt, static_cast<size_t>(c)));
    }
  return out.to(device);
}

Tensor causal_mask(int64_t seq_len, Device device) {
  std::vector<float> m(static_cast<size_t>(seq_len * seq_len), 0.f);
  for (int64_t i = 0; i < seq_len; ++i)
    for (int64_t j = i + 1; j < seq_len; ++j)
      m[static_cast<size_t>(i * seq_len + j)] = -std::numeric_limits<float>::infinity();
  return Tensor::from_host(m, {seq_len, seq_len}, DType::F32, device);
}

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int32_t heads, int32_t kv_heads,
                        const std::vector<int32_t>& valid, const Tensor& mask, size_t max_score_bytes) {
  STAVID_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "causal_attention: q, k, v must be [B, L, .]");
  STAVID_CHECK(heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0, "causal_attention: ", heads,
               " heads are not a multiple of ", kv_heads, " KV heads");
  const int64_t b = q.size(0), l = q.size(1), hd = q.size(2) / heads, rep = heads / kv_heads;
  STAVID_CHECK(q.size(2) == heads * hd && k.shape() == (Shape{b, l, kv_heads * hd}) && v.shape() == k.shape(),
               "causal_attention: q ", q.str(), ", k ", k.str(), ", v ", v.str(), " do not match ", heads, " and ",
               kv_heads, " heads");
  STAVID_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1,
               "causal_attention: last dims must be contiguous");
  STAVID_CHECK(static_cast<int64_t>(valid.size()) == b, "causal_attention: ", valid.size(), " valid lengths for ", b,
               " items");
  STAVID_CHECK(mask.dtype() == DType::F32 && mask.shape() == (Shape{l, l}) && mask.is_contiguous(),
               "causal_attention: mask must be a contiguous fp32 [", l, ", ", l, "], got ", mask.str());
  const DType dt = q.dtype();
  const Device dev = q.device();
  STAVID_CHECK(k.dtype() == dt && v.dtype() == dt && k.device() == dev && v.device() == dev && mask.device() == dev,
               "causal_attention: q, k, v and the mask must share a device (and q, k, v a dtype)");
  const int64_t es = static_cast<int64_t>(dtype_size(dt));
  const Stream s = rt::current_stream(dev);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));

  Tensor o = Tensor::empty({b, l, heads * hd}, dt, dev);  // [B, L, H*hd]
  // Score rows are padded to a multiple of 8 keys so every head's block stays 16-byte aligned for cuBLASLt.
  const int64_t max_ld = (l + 7) / 8 * 8;
  const int64_t q_block = std::clamp<int64_t>(static_cast<int64_t>(max_score_bytes) / (heads * max_ld * 4), 1, l);
  Tensor scores = Tensor::empty({heads * q_block * max_ld}, DType::F32, dev);  // [H, rows, ld] per block
  Tensor probs = dt == DType::F32 ? scores : Tensor::empty(scores.shape(), dt, dev);
  // GQA: every query head gets its own copy of its KV head ([H, L, hd]); MHA reads k, v in place.
  Tensor kx, vx;
  if (rep > 1) {
    kx = Tensor::empty({heads, l, hd}, dt, dev);
    vx = Tensor::empty({heads, l, hd}, dt, dev);
  }
  auto expand = [&](const Tensor& src, int64_t bi, Tensor& dst) {
    CopyParams c;
    c.src = static_cast<const char*>(src.data()) + bi * src.stride(0) * es;
    c.dst = dst.data();
    c.ndim = 4;
    const int64_t sizes[4] = {kv_heads, rep, l, hd};
    const int64_t ss[4] = {hd, 0, src.stride(1), 1};
    const int64_t ds[4] = {rep * l * hd, l * hd, hd, 1};
    for (int d = 0; d < 4; ++d) {
      c.sizes[d] = sizes[d];
      c.src_strides[d] = ss[d];
      c.dst_strides[d] = ds[d];
    }
    c.src_dtype = c.dst_dtype = dt;
    c.device = dev;
    strided_copy(c, s);
  };

  for (int64_t bi = 0; bi < b; ++bi) {
    const char* qb = static_cast<const char*>(q.data()) + bi * q.stride(0) * es;
    const void *kp, *vp;
    int64_t k_ld, k_bs, v_ld, v_bs;  // row stride and per-head stride of the key / value operands
    if (rep > 1) {
      expand(k, bi, kx);
      expand(v, bi, vx);
      kp = kx.data();
      vp = vx.data();
      k_ld = v_ld = hd;
      k_bs = v_bs = l * hd;
    } else {
      kp = static_cast<const char*>(k.data()) + bi * k.stride(0) * es;
      vp = static_cast<const char*>(v.data()) + bi * v.stride(0) * es;
      k_ld = l > 1 ? k.stride(1) : hd;
      v_ld = l > 1 ? v.stride(1) : hd;
      k_bs = v_bs = hd;
    }
    const int64_t q_ld = l > 1 ? q.stride(1) : heads * hd;
    const int64_t len = valid[static_cast<size_t>(bi)];
    STAVID_CHECK(len >= 1 && len <= l, "causal_attention: valid length ", len, " outside [1, ", l, "]");
    for (int64_t r0 = 0; r0 < l; r0 += q_block) {
      const int64_t rows = std::min(q_block, l - r0), keys = std::min(r0 + rows, len), ld = (keys + 7) / 8 * 8;
      // scores[h, i, j] = mask[r0 + i, j] for every head (a stride-0 copy)...
      CopyParams mc;
      mc.src = mask.data_as<float>() + r0 * l;
      mc.dst = scores.data();
      mc.ndim = 3;
      mc.sizes[0] = heads;
      mc.sizes[1] = rows;
      mc.sizes[2] = keys;
      mc.src_strides[0] = 0;
      mc.src_strides[1] = l;
      mc.src_strides[2] = 1;
      mc.dst_strides[0] = rows * ld;
      mc.dst_strides[1] = ld;
      mc.dst_strides[2] = 1;
      mc.src_dtype = mc.dst_dtype = DType::F32;
      mc.device = dev;
      strided_copy(mc, s);
      // ...+= scale * Q K^T, one GEMM batched over the heads.
      GemmParams g;
      g.a = qb + r0 * q_ld * es;
      g.lda = q_ld;
      g.stride_a = hd;
      g.b = kp;
      g.ldb = k_ld;
      g.stride_b = k_bs;
      g.b_transposed = true;
      g.d = scores.data();
      g.ldd = ld;
      g.stride_d = rows * ld;
      g.m = rows;
      g.n = keys;
      g.k = hd;
      g.batch = heads;
      g.alpha = scale;
      g.accumulate = true;
      g.dtype = dt;
      g.out_dtype = DType::F32;
      g.device = dev;
      gemm(g, s);
      SoftmaxParams sp;
      sp.x = sp.y = scores.data();
      sp.rows = heads * rows;
      sp.cols = keys;
      sp.x_stride = sp.y_stride = ld;
      sp.dtype = DType::F32;
      sp.device = dev;
      softmax(sp, s);
      if (dt != DType::F32) {
        CopyParams pc;
        pc.src = scores.data();
        pc.dst = probs.data();
        pc.ndim = 2;
        pc.sizes[0] = heads * rows;
        pc.sizes[1] = keys;
        pc.src_strides[0] = pc.dst_strides[0] = ld;
        pc.src_strides[1] = pc.dst_strides[1] = 1;
        pc.src_dtype = DType::F32;
        pc.dst_dtype = dt;
        pc.device = dev;
        strided_copy(pc, s);
      }
      // O[r0 + i, h*hd + c] = sum_j P[h, i, j] V[j, h*hd + c].
      GemmParams pv;
      pv.a = probs.data();
      pv.lda = ld;
      pv.stride_a = rows * ld;
      pv.b = vp;
      pv.ldb = v_ld;
      pv.stride_b = v_bs;
      pv.b_transposed = false;
      pv.d = static_cast<char*>(o.data()) + (bi * l + r0) * heads * hd * es;
      pv.ldd = heads * hd;
      pv.stride_d = hd;
      pv.m = rows;
      pv.n = hd;
      pv.k = keys;
      pv.batch = heads;
      pv.dtype = pv.out_dtype = dt;
      pv.device = dev;
      gemm(pv, s);
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------
// LlamaModel
// ---------------------------------------------------------------------------------------------------

LlamaModel::LlamaModel(LlamaConfig config, const Checkpoint& ckpt, Device device, DType dtype, LlamaLoadOptions options)
    : LlamaModel(std::move(config), &ckpt, device, dtype, options, 0) {}

LlamaModel LlamaModel::random(LlamaConfig config, uint64_t seed, Device device, DType dtype, LlamaLoadOptions options) {
  return LlamaModel(std::move(config), nullptr, device, dtype, options, seed);
}

LlamaModel LlamaModel::load(const std::string& dir, Device device, DType dtype, LlamaLoadOptions options) {
  LlamaConfig c = LlamaConfig::from_file(dir + "/config.json");
  const Checkpoint ckpt = Checkpoint::open(dir);
  return LlamaModel(std::move(c), ckpt, device, dtype, options);
}

LlamaModel::LlamaModel(LlamaConfig config, const Checkpoint* ckpt, Device device, DType dtype, LlamaLoadOptions options,
                       uint64_t seed)
    : config_(std::move(config)), device_(device), dtype_(dtype) {
  config_.validate();
  const LlamaConfig& c = config_;
  const int32_t n_load = options.num_layers < 0 ? c.num_hidden_layers : options.num_layers;
  STAVID_CHECK(n_load <= c.num_hidden_layers, "Llama: cannot load ", n_load, " layers of ", c.num_hidden_layers);
  // HF names: LlamaForCausalLM (and a LlamaModel saved inside one) prefixes "model."; a LlamaModel saved
  // on its own does not.
  std::string prefix = "model.";
  if (ckpt != nullptr && ckpt->find("model.embed_tokens.weight") == nullptr &&
      ckpt->find("embed_tokens.weight") != nullptr)
    prefix = "";
  WeightReader r(ckpt, device, dtype, seed, "Llama");
  const std::string layers_prefix = prefix + "layers.";
  r.skip_if(
      [](const std::string& n) { return n == "lm_head.weight" || n.find("rotary_emb.inv_freq") != std::string::npos; });
  r.skip_if([layers_prefix, n_load](const std::string& n) {
    if (n.rfind(layers_prefix, 0) != 0) return false;
    const size_t dot = n.find('.', layers_prefix.size());
    if (dot == std::string::npos) return false;
    try {
      return std::stoi(n.substr(layers_prefix.size(), dot - layers_prefix.size())) >= n_load;
    } catch (const std::exception&) {
      return false;
    }
  });
  if (!options.final_norm) r.skip_if([name = prefix + "norm.weight"](const std::string& n) { return n == name; });

  const int64_t d = c.hidden_size, f = c.intermediate_size, hd = c.head_dim;
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  embed_ = r.get(prefix + "embed_tokens.weight", {c.vocab_size, d}, ParamKind::Embedding, Device::cpu());
  for (int32_t i = 0; i < n_load; ++i) {
    const std::string p = layers_prefix + std::to_string(i) + ".";
    LlamaLayer l;
    l.input_norm = r.get(p + "input_layernorm.weight", {d}, ParamKind::NormWeight);
    l.qkv = r.fused({{p + "self_attn.q_proj.weight", qd},
                     {p + "self_attn.k_proj.weight", kvd},
                     {p + "self_attn.v_proj.weight", kvd}},
                    d, ParamKind::Matrix);
    l.o = r.get(p + "self_attn.o_proj.weight", {d, qd}, ParamKind::Matrix);
    l.post_norm = r.get(p + "post_attention_layernorm.weight", {d}, ParamKind::NormWeight);
    l.gate_up = r.fused({{p + "mlp.gate_proj.weight", f}, {p + "mlp.up_proj.weight", f}}, d, ParamKind::Matrix);
    l.down = r.get(p + "mlp.down_proj.weight", {d, f}, ParamKind::Matrix);
    layers_.push_back(std::move(l));
  }
  if (options.final_norm) norm_ = r.get(prefix + "norm.weight", {d}, ParamKind::NormWeight);
  r.finish();
}

Tensor LlamaModel::rope(const Tensor& qkv, const Tensor& cos, const Tensor& sin) const {
  const int64_t b = qkv.size(0), l = qkv.size(1), hd = config_.head_dim, half = hd / 2;
  const int64_t heads = config_.num_attention_heads, kv = config_.num_key_value_heads, qk_heads = heads + kv;
  Tensor qk = Tensor::empty({b, l, qk_heads, hd}, dtype_, device_);  // q and k heads, [B, L, H + KV, hd]
  qk.copy_from(qkv.view({b, l, heads + 2 * kv, hd}).slice(2, 0, qk_heads));
  Tensor swapped = Tensor::empty(qk.shape(), dtype_, device_);  // [q2, q1] per head
  swapped.slice(3, 0, half).copy_from(qk.slice(3, half, hd));
  swapped.slice(3, half, hd).copy_from(qk.slice(3, 0, half));
  // Rows (b, l, head) of hd values; the tables have one row per (b, l): a broadcast over the heads.
  const Stream s = rt::current_stream(device_);
  auto apply = [&](BinaryOp op, Tensor& a, const Tensor& t, int64_t rows_per_group) {
    BinaryParams p;
    p.op = op;
    p.a = a.data();
    p.b = t.data();
    p.y = a.data();
    p.rows = b * l * qk_heads;
    p.cols = hd;
    p.a_stride = p.y_stride = hd;
    p.b_rows_per_group = rows_per_group;
    p.b_stride = hd;
    p.dtype = dtype_;
    p.device = device_;
    binary(p, s);
  };
  apply(BinaryOp::Mul, qk, cos, qk_heads);       // q cos
  apply(BinaryOp::Mul, swapped, sin, qk_heads);  // rotate_half(q) sin = [q2, q1] [-sin, sin]
  apply(BinaryOp::Add, qk, swapped, 1);
  return qk.view({b, l, qk_heads * hd});
}

void LlamaModel::layer(const LlamaLayer& w, Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& mask,
                       const std::vector<int32_t>& valid) const {
  const LlamaConfig& c = config_;
  const int64_t hd = c.head_dim, f = c.intermediate_size;
  const int64_t qd = c.num_attention_heads * hd, kvd = c.num_key_value_heads * hd;
  const Tensor h = ops::rms_norm(x, w.input_norm, c.rms_norm_eps);  // [B, L, D]
  const Tensor qkv = ops::linear(h, w.qkv);                         // [B, L, (H + 2KV) hd]
  const Tensor qk = rope(qkv, cos, sin);                            // [B, L, (H + KV) hd]
  const Tensor o = causal_attention(qk.slice(2, 0, qd), qk.slice(2, qd, qd + kvd), qkv.slice(2, qd + kvd, qd + 2 * kvd),
                                    c.num_attention_heads, c.num_key_value_heads, valid, mask,
                                    max_score_bytes);  // [B, L, H hd]
  ops::gated_residual_(x, ops::linear(o, w.o), Tensor());
  const Tensor h2 = ops::rms_norm(x, w.post_norm, c.rms_norm_eps);                 // [B, L, D]
  const Tensor gu = ops::linear(h2, w.gate_up);                                    // [B, L, 2F]
  const Tensor m = ops::mul(ops::silu(gu.slice(2, 0, f)), gu.slice(2, f, 2 * f));  // [B, L, F]
  ops::gated_residual_(x, ops::linear(m, w.down), Tensor());
}

Tensor LlamaModel::hidden_states(const TokenBatch& batch, int32_t num_layers, bool final_norm) const {
  const LlamaConfig& c = config_;
  batch.validate(c.vocab_size, c.max_position_embeddings, "Llama");
  STAVID_CHECK(num_layers >= 0 && num_layers <= loaded_layers(), "Llama: cannot run ", num_layers, " layers (",
               loaded_layers(), " loaded of ", c.num_hidden_layers, ")");
  STAVID_CHECK(!final_norm || norm_.defined(), "Llama: the final norm was not loaded (LlamaLoadOptions.final_norm)");
  const int64_t b = batch.batch(), l = batch.length(), hd = c.head_dim, half = hd / 2;
  std::vector<int32_t> valid(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) valid[static_cast<size_t>(i)] = batch.valid_length(i);

  Tensor x = gather_embeddings(embed_, batch, Tensor(), device_);  // [B, L, D]
  if (num_layers > 0) {
    // RoPE tables, one row per (b, l): cos and sin' = [-sin, sin] of position * inv_freq, the angle in
    // fp32 as HF computes it.
    std::vector<float> cos_t(static_cast<size_t>(b * l * hd)), sin_t(cos_t.size());
    for (int64_t j = 0; j < half; ++j) {
      const float expo = static_cast<float>(2 * j) / static_cast<float>(hd);
      const float inv_freq = 1.f / std::pow(static_cast<float>(c.rope_theta), expo);
      for (int64_t p = 0; p < l; ++p) {
        const double ang = static_cast<double>(static_cast<float>(p) * inv_freq);
        const float cv = static_cast<float>(std::cos(ang)), sv = static_cast<float>(std::sin(ang));
        for (int64_t bi = 0; bi < b; ++bi) {
          const size_t row = static_cast<size_t>((bi * l + p) * hd);
          cos_t[row + j] = cos_t[row + half + j] = cv;
          sin_t[row + j] = -sv;
          sin_t[row + half + j] = sv;
        }
      }
    }
    const Tensor cos = Tensor::from_host(cos_t, {b * l, hd}, dtype_, device_);
    const Tensor sin = Tensor::from_host(sin_t, {b * l, hd}, dtype_, device_);
    const Tensor mask = causal_mask(l, device_);
    for (int32_t i = 0; i < num_layers; ++i) layer(layers_[static_cast<size_t>(i)], x, cos, sin, mask, valid);
  }
  if (final_norm) x = ops::rms_norm(x, norm_, c.rms_norm_eps);
  return x;
}

}  // namespace stavid::text
