#include "model/vae/vae.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "model/weights/json_file.h"
#include "kernels/core/error.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/rng.h"
#include "kernels/softmax.h"
#include "kernels/vae_ops.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/ops.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"

namespace stavid::vae {

namespace {
int32_t log2_exact(int32_t v, const char* what) {
  int32_t l = 0;
  while ((1 << l) < v) ++l;
  STAVID_CHECK((1 << l) == v, "VAE config: ", what, " must be a power of two, got ", v);
  return l;
}
}  // namespace

void VaeConfig::validate() const {
  STAVID_CHECK(!block_out_channels.empty(), "VAE config: block_out_channels is empty");
  STAVID_CHECK(latent_channels > 0 && out_channels > 0 && norm_num_groups > 0 && layers_per_block >= 0,
               "VAE config: bad channel or layer counts");
  for (int32_t c : block_out_channels)
    STAVID_CHECK(c > 0 && c % norm_num_groups == 0, "VAE config: block channels ", c, " not divisible by ",
                 norm_num_groups, " groups");
  const int32_t ns = log2_exact(spatial_compression_ratio, "spatial_compression_ratio");
  const int32_t nt = log2_exact(temporal_compression_ratio, "temporal_compression_ratio");
  STAVID_CHECK(ns <= static_cast<int32_t>(block_out_channels.size()) && nt < static_cast<int32_t>(block_out_channels.size()),
               "VAE config: more upsamplings than up blocks");
  STAVID_CHECK(scaling_factor > 0.f, "VAE config: scaling_factor must be positive");
}

VaeConfig VaeConfig::from_file(const std::string& path) {
  const nlohmann::json j = read_json_file(path, "VAE config");
  VaeConfig c;
  try {
    auto get = [&](const char* k, auto& v) {
      if (j.contains(k) && !j[k].is_null()) j.at(k).get_to(v);
    };
    get("in_channels", c.in_channels);
    get("out_channels", c.out_channels);
    get("latent_channels", c.latent_channels);
    get("block_out_channels", c.block_out_channels);
    get("layers_per_block", c.layers_per_block);
    get("norm_num_groups", c.norm_num_groups);
    get("scaling_factor", c.scaling_factor);
    get("spatial_compression_ratio", c.spatial_compression_ratio);
    get("temporal_compression_ratio", c.temporal_compression_ratio);
    get("mid_block_add_attention", c.mid_block_add_attention);
  } catch (const nlohmann::json::exception& e) {
    STAVID_THROW(ErrorCode::InvalidArgument, "VAE config ", path, ": ", e.what());
  }
  c.validate();
  return c;
}

int64_t VaeConfig::decoder_parameter_count() const {
  auto conv = [](int64_t cin, int64_t cout, int64_t k) { return cout * cin * k * k * k + cout; };
  auto res = [&](int64_t cin, int64_t cout) {
    return 2 * cin + conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + (cin != cout ? conv(cin, cout, 1) : 0);
  };
  const std::vector<int32_t> rc(block_out_channels.rbegin(), block_out_channels.rend());
  const int64_t top = rc[0];
  int64_t n = conv(latent_channels, latent_channels, 1) + conv(latent_channels, top, 3);
  n += 2 * res(top, top);
  if (mid_block_add_attention) n += 2 * top + 4 * (top * top + top);
  const int32_t ns = log2_exact(spatial_compression_ratio, "spatial"), nt = log2_exact(temporal_compression_ratio, "temporal");
  const int32_t nb = static_cast<int32_t>(rc.size());
  for (int32_t i = 0; i < nb; ++i) {
    const int64_t cin = i == 0 ? rc[0] : rc[i - 1], cout = rc[i];
    for (int32_t j = 0; j <= layers_per_block; ++j) n += res(j == 0 ? cin : cout, cout);
    const bool final = i == nb - 1;
    if (i < ns || (i >= nb - 1 - nt && !final)) n += conv(cout, cout, 3);
  }
  n += 2 * rc.back() + conv(rc.back(), out_channels, 3);
  return n;
}

namespace {
// Reads decoder tensors by name, collecting every problem; encoder.* and quant_conv.* are skipped.
class Loader {
 public:
  // A null checkpoint makes seeded random weights (benchmarks of any config).
  Loader(const Checkpoint* ckpt, Device dev, DType dt, uint64_t seed) : ckpt_(ckpt), dev_(dev), dt_(dt), stream_(seed) {}
  Tensor get(const std::string& name, const Shape& shape) {
    if (!ckpt_) return random(name, shape);
    used_.insert(name);
    const TensorRecord* rec = ckpt_->find(name);
    if (!rec) {
      problems_.push_back("missing: " + name + " " + shape_str(shape));
      return Tensor::zeros(shape, dt_, dev_);
    }
    const Shape got(rec->shape.begin(), rec->shape.end());
    if (shape_numel(got) != shape_numel(shape)) {
      problems_.push_back("shape: " + name + " is " + shape_str(got) + ", expected " + shape_str(shape));
      return Tensor::zeros(shape, dt_, dev_);
    }
    return load_tensor(*ckpt_, *rec, dev_, dt_).reshape(shape);
  }
  Tensor random(const std::string& name, const Shape& shape) {
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm) return Tensor::full(shape, is_bias ? 0.f : 1.f, dt_, dev_);
    return stream_.next(shape, is_bias ? 0.01f : 1.f / std::sqrt(static_cast<float>(shape.back())), dt_, dev_);
  }
  Conv conv(const std::string& p, int64_t cin, int64_t cout, int32_t k) {
    return {get(p + ".weight", {cout, cin * k * k * k}), get(p + ".bias", {cout}), k};
  }
  Norm norm(const std::string& p, int64_t c) { return {get(p + ".weight", {c}), get(p + ".bias", {c})}; }
  ResBlock res(const std::string& p, int64_t cin, int64_t cout) {
    ResBlock r;
    r.norm1 = norm(p + ".norm1", cin);
    r.conv1 = conv(p + ".conv1.conv", cin, cout, 3);
    r.norm2 = norm(p + ".norm2", cout);
    r.conv2 = conv(p + ".conv2.conv", cout, cout, 3);
    if (cin != cout) r.shortcut = conv(p + ".conv_shortcut.conv", cin, cout, 1);
    return r;
  }
  void finish() const {
    if (!ckpt_) return;
    std::vector<std::string> all = problems_;
    for (const std::string& n : ckpt_->names())
      if (!used_.count(n) && n.rfind("encoder.", 0) != 0 && n.rfind("quant_conv.", 0) != 0) all.push_back("unused: " + n);
    if (all.empty()) return;
    std::ostringstream os;
    os << "VAE checkpoint " << ckpt_->path() << " does not match the config (" << all.size() << " problems):";
    for (size_t i = 0; i < std::min<size_t>(all.size(), 40); ++i) os << "\n  " << all[i];
    STAVID_THROW(ErrorCode::DataLoss, os.str());
  }

 private:
  const Checkpoint* ckpt_;
  Device dev_;
  DType dt_;
  NormalStream stream_;
  std::set<std::string> used_;
  std::vector<std::string> problems_;
};
}  // namespace

VaeDecoder::VaeDecoder(VaeConfig config, const Checkpoint& ckpt, Device device, DType dtype)
    : VaeDecoder(std::move(config), &ckpt, device, dtype, 0) {}

VaeDecoder VaeDecoder::random(VaeConfig config, uint64_t seed, Device device, DType dtype) {
  return VaeDecoder(std::move(config), nullptr, device, dtype, seed);
}

VaeDecoder::VaeDecoder(VaeConfig config, const Checkpoint* ckpt, Device device, DType dtype, uint64_t seed)
    : config_(std::move(config)), device_(device), dtype_(dtype) {
  config_.validate();
  if (device.is_cpu()) max_col_bytes = size_t(64) << 20;
  Loader l(ckpt, device, dtype, seed);
  const std::vector<int32_t> rc(config_.block_out_channels.rbegin(), config_.block_out_channels.rend());
  const int64_t top = rc[0], lat = config_.latent_channels;
  post_quant_ = l.conv("post_quant_conv", lat, lat, 1);
  conv_in_ = l.conv("decoder.conv_in.conv", lat, top, 3);
  mid_res0_ = l.res("decoder.mid_block.resnets.0", top, top);
  mid_res1_ = l.res("decoder.mid_block.resnets.1", top, top);
  if (config_.mid_block_add_attention) {
    const std::string a = "decoder.mid_block.attentions.0.";
    mid_attn_.norm = l.norm(a + "group_norm", top);
    mid_attn_.q_w = l.get(a + "to_q.weight", {top, top});
    mid_attn_.q_b = l.get(a + "to_q.bias", {top});
    mid_attn_.k_w = l.get(a + "to_k.weight", {top, top});
    mid_attn_.k_b = l.get(a + "to_k.bias", {top});
    mid_attn_.v_w = l.get(a + "to_v.weight", {top, top});
    mid_attn_.v_b = l.get(a + "to_v.bias", {top});
    mid_attn_.o_w = l.get(a + "to_out.0.weight", {top, top});
    mid_attn_.o_b = l.get(a + "to_out.0.bias", {top});
  }
  const int32_t ns = log2_exact(config_.spatial_compression_ratio, "spatial");
  const int32_t nt = log2_exact(config_.temporal_compression_ratio, "temporal");
  const int32_t nb = static_cast<int32_t>(rc.size());
  for (int32_t i = 0; i < nb; ++i) {
    UpBlock u;
    const int64_t cin = i == 0 ? rc[0] : rc[i - 1], cout = rc[i];
    const std::string p = "decoder.up_blocks." + std::to_string(i) + ".";
    for (int32_t j = 0; j <= config_.layers_per_block; ++j)
      u.resnets.push_back(l.res(p + "resnets." + std::to_string(j), j == 0 ? cin : cout, cout));
    const bool final = i == nb - 1;
    const bool spatial = i < ns, temporal = i >= nb - 1 - nt && !final;
    if (spatial || temporal) {
      u.fh = u.fw = spatial ? 2 : 1;
      u.ft = temporal ? 2 : 1;
      u.upsample_conv = l.conv(p + "upsamplers.0.conv.conv", cout, cout, 3);
    }
    up_.push_back(std::move(u));
  }
  norm_out_ = l.norm("decoder.conv_norm_out", rc.back());
  conv_out_ = l.conv("decoder.conv_out.conv", rc.back(), config_.out_channels, 3);
  l.finish();
}

VaeDecoder VaeDecoder::load(const std::string& dir, Device device, DType dtype) {
  const VaeConfig c = VaeConfig::from_file(dir + "/config.json");
  return VaeDecoder(c, Checkpoint::open(dir), device, dtype);
}

Tensor* DecodeRun::cache_for(const void* conv) {
  for (auto& [key, t] : conv_cache)
    if (key == conv) return &t;
  conv_cache.emplace_back(conv, Tensor());
  return &conv_cache.back().second;
}

Tensor VaeDecoder::conv(const Tensor& x, const Conv& c, DecodeRun* run) const {
  const int64_t b = x.size(0), cin = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  // Chunked decode: the front padding is the cached last 2 input frames of the previous chunk; the
  // new cache is the last 2 frames of [front, x] (front = frame 0 twice at the video start).
  Tensor front, new_cache;
  if (run && run->chunked && c.k == 3) {
    Tensor* cache = run->cache_for(&c);
    front = *cache;
    new_cache = Tensor::empty({b, cin, 2, h, w}, dtype_, device_);
    if (t >= 2) {
      new_cache.copy_from(x.slice(2, t - 2, t));
    } else {
      new_cache.slice(2, 0, 1).copy_from(front.defined() ? front.slice(2, 1, 2) : x.slice(2, 0, 1));
      new_cache.slice(2, 1, 2).copy_from(x.slice(2, 0, 1));
    }
    *cache = new_cache;
  }
  const int64_t cout = c.w.size(0), kk = c.w.size(1), hw = h * w;
  STAVID_CHECK(kk == cin * c.k * c.k * c.k, "VAE conv: weight ", c.w.str(), " does not match input ", x.str());
  const Tensor xc = x.contiguous();
  Tensor y = Tensor::empty({b, cout, t, h, w}, dtype_, device_);
  const Stream s = rt::current_stream(device_);
  const size_t esz = dtype_size(dtype_);
  const int64_t nt = c.k == 1 ? t : std::max<int64_t>(1, std::min<int64_t>(t, static_cast<int64_t>(max_col_bytes / (kk * hw * esz))));
  Tensor col = c.k == 1 ? Tensor() : Tensor::empty({kk, nt * hw}, dtype_, device_);
  for (int64_t bi = 0; bi < b; ++bi) {
    const char* xb = static_cast<const char*>(xc.data()) + bi * cin * t * hw * static_cast<int64_t>(esz);
    char* yb = static_cast<char*>(y.data()) + bi * cout * t * hw * static_cast<int64_t>(esz);
    for (int64_t t0 = 0; t0 < t; t0 += nt) {
      const int64_t n = std::min(nt, t - t0);
      GemmParams g;
      g.a = c.w.data();
      g.m = cout;
      g.k = kk;
      g.lda = kk;
      g.b_transposed = false;
      g.n = n * hw;
      if (c.k == 1) {
        g.b = xb + t0 * hw * static_cast<int64_t>(esz);
        g.ldb = t * hw;
      } else {
        CausalIm2colParams ip;
        ip.x = xb;
        if (front.defined())
          ip.prev = static_cast<const char*>(front.data()) + bi * cin * 2 * hw * static_cast<int64_t>(esz);
        ip.col = col.data();
        ip.cin = static_cast<int32_t>(cin);
        ip.frames = static_cast<int32_t>(t);
        ip.height = static_cast<int32_t>(h);
        ip.width = static_cast<int32_t>(w);
        ip.kt = ip.kh = ip.kw = c.k;
        ip.t0 = static_cast<int32_t>(t0);
        ip.nt = static_cast<int32_t>(n);
        ip.dtype = dtype_;
        ip.device = device_;
        causal_im2col(ip, s);
        g.b = col.data();
        g.ldb = n * hw;
      }
      g.d = yb + t0 * hw * static_cast<int64_t>(esz);
      g.ldd = t * hw;
      g.dtype = g.out_dtype = dtype_;
      g.device = device_;
      gemm(g, s);
    }
    // + bias[c] on every position of channel c.
    BinaryParams bp;
    bp.op = BinaryOp::Add;
    bp.a = yb;
    bp.b = c.b.data();
    bp.y = yb;
    bp.rows = cout;
    bp.cols = t * hw;
    bp.a_stride = bp.y_stride = t * hw;
    bp.b_rows_per_group = 1;
    bp.b_stride = 1;
    bp.b_col_stride = 0;
    bp.dtype = dtype_;
    bp.device = device_;
    binary(bp, s);
  }
  return y;
}

Tensor VaeDecoder::norm(const Tensor& x, const Norm& n, bool silu) const {
  const Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), dtype_, device_);
  GroupNormParams p;
  p.x = xc.data();
  p.y = y.data();
  p.batch = static_cast<int32_t>(x.size(0));
  p.channels = static_cast<int32_t>(x.size(1));
  p.groups = config_.norm_num_groups;
  p.n = x.size(2) * x.size(3) * x.size(4);
  p.weight = n.w.data();
  p.bias = n.b.data();
  p.silu = silu;
  p.dtype = dtype_;
  p.device = device_;
  group_norm(p, rt::current_stream(device_));
  return y;
}

Tensor VaeDecoder::resblock(const Tensor& x, const ResBlock& r, DecodeRun& run) const {
  Tensor h = conv(norm(x, r.norm1, true), r.conv1, &run);
  h = conv(norm(h, r.norm2, true), r.conv2, &run);
  const Tensor sc = r.shortcut.w.defined() ? conv(x, r.shortcut) : x;
  return ops::add(sc, h);
}

Tensor VaeDecoder::post_quant(const Tensor& z) {
  // z / scaling_factor, then the 1x1x1 conv.
  Tensor zs = z.to(dtype_).to(device_).clone();
  Tensor zero = Tensor::zeros(zs.shape(), dtype_, device_);
  ops::axpy_(zero, zs, 1.f / config_.scaling_factor);
  return conv(zero, post_quant_);
}

Tensor VaeDecoder::conv_in(const Tensor& x, DecodeRun& run) { return conv(x, conv_in_, &run); }

Tensor VaeDecoder::mid_attention(const Tensor& x, DecodeRun& run) {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), hw = x.size(3) * x.size(4);
  const Tensor h = norm(x, mid_attn_.norm, false);
  const Tensor tokens = h.view({b, c, t * hw}).transpose(1, 2).contiguous();  // [B, THW, C]
  const Tensor q = ops::linear(tokens, mid_attn_.q_w, mid_attn_.q_b);
  Tensor k = ops::linear(tokens, mid_attn_.k_w, mid_attn_.k_b);
  Tensor v = ops::linear(tokens, mid_attn_.v_w, mid_attn_.v_b);
  // Chunked decode: keys/values of every earlier latent frame come first (frame-causal, so this
  // chunk's queries see all of them and nothing of a later chunk).
  const int64_t seen = run.chunked ? run.frames_seen : 0;
  if (run.chunked && run.k_cache.defined()) {
    Tensor ka = Tensor::empty({b, (seen + t) * hw, c}, dtype_, device_), va = Tensor::empty(ka.shape(), dtype_, device_);
    ka.slice(1, 0, seen * hw).copy_from(run.k_cache);
    ka.slice(1, seen * hw, (seen + t) * hw).copy_from(k);
    va.slice(1, 0, seen * hw).copy_from(run.v_cache);
    va.slice(1, seen * hw, (seen + t) * hw).copy_from(v);
    k = ka;
    v = va;
  }
  if (run.chunked) {
    run.k_cache = k;
    run.v_cache = v;
    run.frames_seen = seen + t;
  }
  const int64_t total_keys = (seen + t) * hw;
  Tensor o = Tensor::empty({b, t * hw, c}, dtype_, device_);
  const Stream s = rt::current_stream(device_);
  const float scale = 1.f / std::sqrt(static_cast<float>(c));
  const size_t esz = dtype_size(dtype_);
  // Frame-causal: queries of frame i see keys of frames 0..i, i.e. a prefix of K/V, so each query
  // chunk is an exact dense attention over that prefix (scores in fp32, bounded by max_col_bytes).
  const int64_t max_keys = total_keys;
  const int64_t q_chunk = std::max<int64_t>(1, std::min<int64_t>(hw, static_cast<int64_t>(max_col_bytes / (max_keys * 4))));
  Tensor scores = Tensor::empty({q_chunk, max_keys}, DType::F32, device_);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t f = 0; f < t; ++f)
      for (int64_t r0 = 0; r0 < hw; r0 += q_chunk) {
        const int64_t rows = std::min(q_chunk, hw - r0), keys = (seen + f + 1) * hw;
        const int64_t q_row = bi * t * hw + f * hw + r0;
        GemmParams g;  // S = scale * Q K^T
        g.a = static_cast<const char*>(q.data()) + q_row * c * static_cast<int64_t>(esz);
        g.b = static_cast<const char*>(k.data()) + bi * total_keys * c * static_cast<int64_t>(esz);
        g.d = scores.data();
        g.m = rows;
        g.n = keys;
        g.k = c;
        g.lda = g.ldb = c;
        g.ldd = max_keys;
        g.alpha = scale;
        g.dtype = dtype_;
        g.out_dtype = DType::F32;
        g.device = device_;
        gemm(g, s);
        SoftmaxParams sp;
        sp.x = sp.y = scores.data();
        sp.rows = rows;
        sp.cols = keys;
        sp.x_stride = sp.y_stride = max_keys;
        sp.dtype = DType::F32;
        sp.device = device_;
        softmax(sp, s);
        const Tensor p = scores.slice(0, 0, rows).slice(1, 0, keys).to(dtype_).contiguous();  // [rows, keys]
        GemmParams pv;  // O = P V
        pv.a = p.data();
        pv.b = static_cast<const char*>(v.data()) + bi * total_keys * c * static_cast<int64_t>(esz);
        pv.d = static_cast<char*>(o.data()) + q_row * c * static_cast<int64_t>(esz);
        pv.m = rows;
        pv.n = c;
        pv.k = keys;
        pv.lda = keys;
        pv.ldb = c;
        pv.ldd = c;
        pv.b_transposed = false;
        pv.dtype = pv.out_dtype = dtype_;
        pv.device = device_;
        gemm(pv, s);
      }
  const Tensor out = ops::linear(o, mid_attn_.o_w, mid_attn_.o_b);  // [B, THW, C]
  const Tensor back = out.transpose(1, 2).contiguous().view(x.shape());
  return ops::add(back, x);
}

Tensor VaeDecoder::mid_block(const Tensor& x, DecodeRun& run) {
  Tensor h = resblock(x, mid_res0_, run);
  if (config_.mid_block_add_attention) h = mid_attention(h, run);
  return resblock(h, mid_res1_, run);
}

Tensor VaeDecoder::up_block(int index, const Tensor& x, DecodeRun& run) {
  const UpBlock& u = up_[index];
  Tensor h = x;
  for (const ResBlock& r : u.resnets) h = resblock(h, r, run);
  if (!u.upsample_conv.w.defined()) return h;
  UpsampleParams p;
  p.x = h.data();
  p.batch = static_cast<int32_t>(h.size(0));
  p.channels = static_cast<int32_t>(h.size(1));
  p.frames = static_cast<int32_t>(h.size(2));
  p.height = static_cast<int32_t>(h.size(3));
  p.width = static_cast<int32_t>(h.size(4));
  p.ft = u.ft;
  p.fh = u.fh;
  p.fw = u.fw;
  p.first_is_video_start = run.first_chunk;
  p.dtype = dtype_;
  p.device = device_;
  Tensor up = Tensor::empty({h.size(0), h.size(1), upsampled_frames(p), h.size(3) * u.fh, h.size(4) * u.fw}, dtype_, device_);
  p.y = up.data();
  upsample_causal(p, rt::current_stream(device_));
  return conv(up, u.upsample_conv, &run);
}

Tensor VaeDecoder::head(const Tensor& x, DecodeRun& run) { return conv(norm(x, norm_out_, true), conv_out_, &run); }

Tensor VaeDecoder::forward(const Tensor& z, DecodeRun& run) {
  Tensor h = conv_in(post_quant(z), run);
  h = mid_block(h, run);
  for (int i = 0; i < static_cast<int>(up_.size()); ++i) h = up_block(i, h, run);
  return head(h, run).to(DType::F32);
}

Tensor VaeDecoder::decode(const Tensor& z) {
  STAVID_CHECK(z.dim() == 5 && z.size(1) == config_.latent_channels, "VAE: latents must be [B, ",
               config_.latent_channels, ", T, h, w], got ", z.str());
  DecodeRun run;
  return forward(z, run);
}

Tensor VaeDecoder::decode_chunked(const Tensor& z, int32_t chunk_latent_frames, const ChunkHook& before_chunk) {
  STAVID_CHECK(z.dim() == 5 && z.size(1) == config_.latent_channels, "VAE: latents must be [B, ",
               config_.latent_channels, ", T, h, w], got ", z.str());
  STAVID_CHECK(chunk_latent_frames >= 1, "VAE: chunk_latent_frames must be >= 1");
  const int64_t t = z.size(2);
  const int64_t s = config_.spatial_compression_ratio;
  Tensor out = Tensor::empty({z.size(0), config_.out_channels, config_.video_frames(t), z.size(3) * s, z.size(4) * s},
                             DType::F32, device_);
  DecodeRun run;
  run.chunked = true;
  int64_t f0 = 0;
  for (int64_t t0 = 0; t0 < t; t0 += chunk_latent_frames) {
    const int64_t t1 = std::min(t, t0 + chunk_latent_frames);
    if (before_chunk) before_chunk();
    const Tensor y = forward(z.slice(2, t0, t1).contiguous(), run);
    out.slice(2, f0, f0 + y.size(2)).copy_from(y);
    f0 += y.size(2);
    run.first_chunk = false;
  }
  STAVID_CHECK_CODE(f0 == out.size(2), ErrorCode::Internal, "VAE: chunked decode produced ", f0, " frames, expected ",
                    out.size(2));
  return out;
}

Tensor VaeDecoder::decode_tiled(const Tensor& z, const DecodePlan& plan, const ChunkHook& before_chunk) {
  const int64_t t = z.size(2), h = z.size(3), w = z.size(4), s = config_.spatial_compression_ratio;
  const int32_t chunk = plan.chunk_latent_frames > 0 ? plan.chunk_latent_frames : static_cast<int32_t>(t);
  const int64_t th = plan.tile_h > 0 ? std::min<int64_t>(plan.tile_h, h) : h;
  const int64_t tw = plan.tile_w > 0 ? std::min<int64_t>(plan.tile_w, w) : w;
  if (th == h && tw == w) return decode_chunked(z, chunk, before_chunk);
  const int64_t ov_h = th < h ? std::min<int64_t>(plan.overlap, th - 1) : 0;
  const int64_t ov_w = tw < w ? std::min<int64_t>(plan.overlap, tw - 1) : 0;
  STAVID_CHECK(ov_h >= 0 && ov_w >= 0, "VAE: bad tile overlap");
  // Tile origins: a regular stride of (tile - overlap), the last tile flush with the edge.
  auto origins = [](int64_t size, int64_t tile, int64_t ov) {
    std::vector<int64_t> o;
    if (tile >= size) return std::vector<int64_t>{0};
    for (int64_t x = 0;; x += tile - ov) {
      if (x + tile >= size) {
        o.push_back(size - tile);
        break;
      }
      o.push_back(x);
    }
    return o;
  };
  const auto oy = origins(h, th, ov_h), ox = origins(w, tw, ov_w);
  const int64_t frames = config_.video_frames(t);
  // Accumulate weighted tiles and the weights on the host, then normalize (fp32).
  std::vector<float> acc(static_cast<size_t>(z.size(0) * config_.out_channels * frames * h * s * w * s), 0.f);
  std::vector<float> wsum(static_cast<size_t>(h * s * w * s), 0.f);
  const int64_t ph = th * s, pw = tw * s, oh_px = ov_h * s, ow_px = ov_w * s;
  auto ramp = [](int64_t i, int64_t n, int64_t ov, bool lo_edge, bool hi_edge) {
    float r = 1.f;
    if (!lo_edge && ov > 0 && i < ov) r = std::min(r, static_cast<float>(i + 1) / static_cast<float>(ov + 1));
    if (!hi_edge && ov > 0 && i >= n - ov) r = std::min(r, static_cast<float>(n - i) / static_cast<float>(ov + 1));
    return r;
  };
  for (size_t iy = 0; iy < oy.size(); ++iy)
    for (size_t ix = 0; ix < ox.size(); ++ix) {
      const Tensor zt = z.slice(3, oy[iy], oy[iy] + th).slice(4, ox[ix], ox[ix] + tw).contiguous();
      const std::vector<float> tile = decode_chunked(zt, chunk, before_chunk).to_host_f32();  // [B, C, F, ph, pw]
      const int64_t y0 = oy[iy] * s, x0 = ox[ix] * s;
      for (int64_t yy = 0; yy < ph; ++yy) {
        const float ry = ramp(yy, ph, oh_px, iy == 0, iy + 1 == oy.size());
        for (int64_t xx = 0; xx < pw; ++xx) {
          const float wgt = ry * ramp(xx, pw, ow_px, ix == 0, ix + 1 == ox.size());
          wsum[(y0 + yy) * w * s + x0 + xx] += wgt;
          for (int64_t bcf = 0; bcf < z.size(0) * config_.out_channels * frames; ++bcf)
            acc[(bcf * h * s + y0 + yy) * w * s + x0 + xx] += wgt * tile[(bcf * ph + yy) * pw + xx];
        }
      }
    }
  for (int64_t bcf = 0; bcf < z.size(0) * config_.out_channels * frames; ++bcf)
    for (int64_t px = 0; px < h * s * w * s; ++px) acc[bcf * h * s * w * s + px] /= wsum[px];
  return Tensor::from_host(acc, {z.size(0), config_.out_channels, frames, h * s, w * s}, DType::F32, device_);
}

size_t VaeDecoder::estimate_peak_bytes(const Shape& zs, const DecodePlan& plan) const {
  const int64_t t = zs[2], h = zs[3], w = zs[4], s = config_.spatial_compression_ratio;
  const int64_t chunk = plan.chunk_latent_frames > 0 ? std::min<int64_t>(plan.chunk_latent_frames, t) : t;
  const int64_t th = plan.tile_h > 0 ? std::min<int64_t>(plan.tile_h, h) : h;
  const int64_t tw = plan.tile_w > 0 ? std::min<int64_t>(plan.tile_w, w) : w;
  const size_t esz = dtype_size(dtype_);
  // The largest activation of one chunk/tile: walk the up blocks' (channels, frames, size).
  const std::vector<int32_t> rc(config_.block_out_channels.rbegin(), config_.block_out_channels.rend());
  int64_t f = chunk, hh = th, ww = tw, largest = static_cast<int64_t>(rc[0]) * f * hh * ww;
  for (size_t i = 0; i < up_.size(); ++i) {
    largest = std::max(largest, static_cast<int64_t>(rc[i]) * f * hh * ww);
    if (up_[i].upsample_conv.w.defined()) {
      f = f * up_[i].ft;  // at most (a later chunk)
      hh *= up_[i].fh;
      ww *= up_[i].fw;
      largest = std::max(largest, static_cast<int64_t>(rc[i]) * f * hh * ww);
    }
  }
  // A resnet holds its input, two normalized/convolved intermediates and the sum at once, plus the
  // im2col scratch; the attention's scores; the decoded video itself (fp32) and one tile in fp32.
  const size_t act = static_cast<size_t>(largest) * esz;
  const int64_t hw_lat = th * tw;
  const size_t scores = std::min(max_col_bytes, static_cast<size_t>(hw_lat) * static_cast<size_t>(t * hw_lat) * 4);
  const size_t video = static_cast<size_t>(zs[0] * config_.out_channels * config_.video_frames(t) * h * s * w * s) * 4;
  const size_t tile_out = static_cast<size_t>(zs[0] * config_.out_channels * config_.video_frames(t) * th * s * tw * s) * 4;
  const size_t kv = static_cast<size_t>(2 * rc[0] * t * hw_lat) * esz;
  return 5 * act + max_col_bytes + scores + video + (th < h || tw < w ? 2 * tile_out : 0) + kv;
}

VaeDecoder::DecodePlan VaeDecoder::plan_for_budget(const Shape& zs, size_t budget_bytes) const {
  const int32_t t = static_cast<int32_t>(zs[2]), h = static_cast<int32_t>(zs[3]), w = static_cast<int32_t>(zs[4]);
  // Prefer whole frames (no spatial seams) with the longest chunk that fits; then shrink tiles.
  for (int32_t tile = std::max(h, w); tile >= 4; tile = tile * 3 / 4) {
    for (int32_t chunk = t; chunk >= 1; chunk = chunk > 1 ? chunk / 2 : 0) {
      DecodePlan p;
      p.chunk_latent_frames = chunk;
      p.tile_h = std::min(tile, h);
      p.tile_w = std::min(tile, w);
      p.overlap = std::clamp(tile / 4, 2, 8);
      if (estimate_peak_bytes(zs, p) <= budget_bytes) return p;
      if (chunk == 1) break;
    }
  }
  STAVID_THROW(ErrorCode::OutOfMemory, "VAE: no chunk/tile plan fits a budget of ", budget_bytes, " bytes for latents ",
               shape_str(zs));
}

Tensor VaeDecoder::postprocess(const Tensor& raw) {
  // (x / 2 + 0.5) clamped to [0, 1] on the host copy's device: small, element-wise.
  Tensor x = raw.to(DType::F32).to(Device::cpu()).contiguous();
  float* p = x.data_as<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::min(1.f, std::max(0.f, p[i] * 0.5f + 0.5f));
  return x;
}

}  // namespace stavid::vae
