#include "model/dit/weights.h"

#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "kernels/core/error.h"
#include "kernels/rng.h"
#include "model/runtime/cuda_runtime.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"

namespace stavid::dit {
namespace {

enum class Kind { Weight, Bias, NormWeight, NormBias };

// Where parameters come from: a checkpoint (with error collection) or a seeded generator.
class Source {
 public:
  virtual ~Source() = default;
  virtual Tensor get(const std::string& name, const Shape& shape, Kind kind) = 0;
};

class CheckpointSource final : public Source {
 public:
  CheckpointSource(const Checkpoint& ckpt, Device device, DType dtype) : ckpt_(ckpt), device_(device), dtype_(dtype) {}

  Tensor get(const std::string& name, const Shape& shape, Kind) override {
    used_.insert(name);
    const TensorRecord* rec = ckpt_.find(name);
    if (rec == nullptr) {
      problems_.push_back("missing: " + name + " " + shape_str(shape));
      return Tensor::zeros(shape, dtype_, device_);
    }
    const Shape got(rec->shape.begin(), rec->shape.end());
    if (shape_numel(got) != shape_numel(shape) || (got != shape && !(got.size() == 5 && shape.size() == 2))) {
      problems_.push_back("shape: " + name + " is " + shape_str(got) + ", expected " + shape_str(shape));
      return Tensor::zeros(shape, dtype_, device_);
    }
    try {
      return load_tensor(ckpt_, *rec, device_, dtype_).reshape(shape);
    } catch (const Error& e) {
      problems_.push_back("unreadable: " + name + ": " + e.message());
      return Tensor::zeros(shape, dtype_, device_);
    }
  }

  // Throws one error listing every problem and every key the model did not use.
  void finish() const {
    std::vector<std::string> all = problems_;
    for (const std::string& n : ckpt_.names())
      if (!used_.count(n)) all.push_back("unused: " + n);
    if (all.empty()) return;
    std::ostringstream os;
    os << "checkpoint " << ckpt_.path() << " does not match the transformer config (" << all.size() << " problems):";
    const size_t shown = std::min<size_t>(all.size(), 40);
    for (size_t i = 0; i < shown; ++i) os << "\n  " << all[i];
    if (shown < all.size()) os << "\n  ... and " << all.size() - shown << " more";
    STAVID_THROW(ErrorCode::DataLoss, os.str());
  }

 private:
  const Checkpoint& ckpt_;
  Device device_;
  DType dtype_;
  std::set<std::string> used_;
  std::vector<std::string> problems_;
};

class RandomSource final : public Source {
 public:
  RandomSource(uint64_t seed, Device device, DType dtype) : stream_(seed), device_(device), dtype_(dtype) {}
  Tensor get(const std::string&, const Shape& shape, Kind kind) override {
    if (kind == Kind::NormWeight) return Tensor::full(shape, 1.f, dtype_, device_);
    if (kind == Kind::NormBias) return Tensor::zeros(shape, dtype_, device_);
    const float stddev = kind == Kind::Bias ? 0.02f : 1.f / std::sqrt(static_cast<float>(shape.back()));
    return stream_.next(shape, stddev, dtype_, device_);
  }

 private:
  NormalStream stream_;
  Device device_;
  DType dtype_;
};

// Rows of several [r_i, cols] tensors stacked into one [sum r_i, cols] tensor (fused projections).
Tensor cat_rows(const std::vector<Tensor>& parts) {
  int64_t rows = 0;
  for (const Tensor& t : parts) rows += t.size(0);
  Shape shape = parts[0].shape();
  shape[0] = rows;
  Tensor out = Tensor::empty(shape, parts[0].dtype(), parts[0].device());
  int64_t r = 0;
  for (const Tensor& t : parts) {
    out.slice(0, r, r + t.size(0)).copy_from(t);
    r += t.size(0);
  }
  return out;
}

// Walks the diffusers names for a config. `visit(name, shape, kind)` returns the tensor.
struct Walker {
  const DitConfig& c;
  std::function<Tensor(const std::string&, const Shape&, Kind)> visit;

  Linear linear(const std::string& prefix, int64_t in, int64_t out) {
    return {visit(prefix + ".weight", {out, in}, Kind::Weight), visit(prefix + ".bias", {out}, Kind::Bias)};
  }
  Linear fused(const std::vector<std::string>& prefixes, int64_t in, int64_t out_each) {
    std::vector<Tensor> w, b;
    for (const std::string& p : prefixes) {
      Linear l = linear(p, in, out_each);
      w.push_back(l.w);
      b.push_back(l.b);
    }
    return {cat_rows(w), cat_rows(b)};
  }
  Tensor norm(const std::string& name, int64_t n) { return visit(name, {n}, Kind::NormWeight); }

  DitWeights walk() {
    const int64_t d = c.hidden(), f = c.mlp_hidden(), hd = c.attention_head_dim;
    DitWeights w;
    const int64_t pf = c.patch_features();
    // x_embedder.proj.weight is [D, C, pt, ph, pw]: a linear over (c, kt, kh, kw) patches.
    w.x_embed.w = visit("x_embedder.proj.weight", {d, pf}, Kind::Weight);
    w.x_embed.b = visit("x_embedder.proj.bias", {d}, Kind::Bias);
    w.time1 = linear("time_text_embed.timestep_embedder.linear_1", 256, d);
    w.time2 = linear("time_text_embed.timestep_embedder.linear_2", d, d);
    if (c.guidance_embeds) {
      w.guid1 = linear("time_text_embed.guidance_embedder.linear_1", 256, d);
      w.guid2 = linear("time_text_embed.guidance_embedder.linear_2", d, d);
    }
    w.text1 = linear("time_text_embed.text_embedder.linear_1", c.pooled_projection_dim, d);
    w.text2 = linear("time_text_embed.text_embedder.linear_2", d, d);
    const std::string ce = "context_embedder.";
    w.ref_time1 = linear(ce + "time_text_embed.timestep_embedder.linear_1", 256, d);
    w.ref_time2 = linear(ce + "time_text_embed.timestep_embedder.linear_2", d, d);
    w.ref_text1 = linear(ce + "time_text_embed.text_embedder.linear_1", c.text_embed_dim, d);
    w.ref_text2 = linear(ce + "time_text_embed.text_embedder.linear_2", d, d);
    w.ref_proj_in = linear(ce + "proj_in", c.text_embed_dim, d);
    for (int i = 0; i < c.num_refiner_layers; ++i) {
      const std::string p = ce + "token_refiner.refiner_blocks." + std::to_string(i) + ".";
      RefinerBlock r;
      r.norm1_w = visit(p + "norm1.weight", {d}, Kind::NormWeight);
      r.norm1_b = visit(p + "norm1.bias", {d}, Kind::NormBias);
      r.qkv = fused({p + "attn.to_q", p + "attn.to_k", p + "attn.to_v"}, d, d);
      r.out = linear(p + "attn.to_out.0", d, d);
      r.norm2_w = visit(p + "norm2.weight", {d}, Kind::NormWeight);
      r.norm2_b = visit(p + "norm2.bias", {d}, Kind::NormBias);
      r.ff1 = linear(p + "ff.net.0.proj", d, f);
      r.ff2 = linear(p + "ff.net.2", f, d);
      r.mod = linear(p + "norm_out.linear", d, 2 * d);
      w.refiner.push_back(std::move(r));
    }
    for (int i = 0; i < c.num_layers; ++i) {
      const std::string p = "transformer_blocks." + std::to_string(i) + ".";
      DualBlock b;
      b.img_mod = linear(p + "norm1.linear", d, 6 * d);
      b.txt_mod = linear(p + "norm1_context.linear", d, 6 * d);
      b.img_qkv = fused({p + "attn.to_q", p + "attn.to_k", p + "attn.to_v"}, d, d);
      b.txt_qkv = fused({p + "attn.add_q_proj", p + "attn.add_k_proj", p + "attn.add_v_proj"}, d, d);
      b.img_q_norm = norm(p + "attn.norm_q.weight", hd);
      b.img_k_norm = norm(p + "attn.norm_k.weight", hd);
      b.txt_q_norm = norm(p + "attn.norm_added_q.weight", hd);
      b.txt_k_norm = norm(p + "attn.norm_added_k.weight", hd);
      b.img_out = linear(p + "attn.to_out.0", d, d);
      b.txt_out = linear(p + "attn.to_add_out", d, d);
      b.img_ff1 = linear(p + "ff.net.0.proj", d, f);
      b.img_ff2 = linear(p + "ff.net.2", f, d);
      b.txt_ff1 = linear(p + "ff_context.net.0.proj", d, f);
      b.txt_ff2 = linear(p + "ff_context.net.2", f, d);
      w.dual.push_back(std::move(b));
    }
    for (int i = 0; i < c.num_single_layers; ++i) {
      const std::string p = "single_transformer_blocks." + std::to_string(i) + ".";
      SingleBlock b;
      b.mod = linear(p + "norm.linear", d, 3 * d);
      b.qkv = fused({p + "attn.to_q", p + "attn.to_k", p + "attn.to_v"}, d, d);
      b.q_norm = norm(p + "attn.norm_q.weight", hd);
      b.k_norm = norm(p + "attn.norm_k.weight", hd);
      b.mlp_in = linear(p + "proj_mlp", d, f);
      b.out = linear(p + "proj_out", d + f, d);
      w.single.push_back(std::move(b));
    }
    w.norm_out = linear("norm_out.linear", d, 2 * d);
    w.proj_out = linear("proj_out", d, static_cast<int64_t>(c.patch_size_t) * c.patch_size * c.patch_size * c.out_channels);
    return w;
  }
};
}  // namespace

DitWeights DitWeights::load(const DitConfig& c, const Checkpoint& ckpt, Device device, DType dtype) {
  c.validate();
  CheckpointSource src(ckpt, device, dtype);
  Walker walker{c, [&](const std::string& n, const Shape& s, Kind k) { return src.get(n, s, k); }};
  DitWeights w = walker.walk();
  src.finish();
  return w;
}

DitWeights DitWeights::random(const DitConfig& c, uint64_t seed, Device device, DType dtype) {
  c.validate();
  RandomSource src(seed, device, dtype);
  Walker walker{c, [&](const std::string& n, const Shape& s, Kind k) { return src.get(n, s, k); }};
  return walker.walk();
}

std::vector<std::pair<std::string, Shape>> DitWeights::expected_keys(const DitConfig& c) {
  std::vector<std::pair<std::string, Shape>> keys;
  // Only names and shapes are recorded; the walker gets empty placeholders (no weight memory).
  Walker names{c, [&](const std::string& n, const Shape& s, Kind) {
                 keys.emplace_back(n, s);
                 return Tensor::empty(s.size() > 1 ? Shape{s[0], 0} : Shape{s[0]}, DType::F32, Device::cpu());
               }};
  names.walk();
  // The x_embedder weight is stored 5-D in the checkpoint.
  for (auto& [n, s] : keys)
    if (n == "x_embedder.proj.weight")
      s = {c.hidden(), c.in_channels, c.patch_size_t, c.patch_size, c.patch_size};
  return keys;
}

}  // namespace stavid::dit
