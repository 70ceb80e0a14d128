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
#include "model/runtime/allocator.h"
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

VaeDecoder::TileSet VaeDecoder::tile_set(const Shape& z_shape, const DecodePlan& plan) const {
  STAVID_CHECK(z_shape.size() == 5, "VAE: latents must be [B, C, T, h, w], got ", shape_str(z_shape));
  const int64_t t = z_shape[2], h = z_shape[3], w = z_shape[4];
  TileSet ts;
  ts.chunk_latent_frames = plan.chunk_latent_frames > 0 ? plan.chunk_latent_frames : static_cast<int32_t>(t);
  ts.tile_h = plan.tile_h > 0 ? std::min<int64_t>(plan.tile_h, h) : h;
  ts.tile_w = plan.tile_w > 0 ? std::min<int64_t>(plan.tile_w, w) : w;
  ts.overlap_h = ts.tile_h < h ? std::min<int64_t>(plan.overlap, ts.tile_h - 1) : 0;
  ts.overlap_w = ts.tile_w < w ? std::min<int64_t>(plan.overlap, ts.tile_w - 1) : 0;
  STAVID_CHECK(ts.overlap_h >= 0 && ts.overlap_w >= 0, "VAE: bad tile overlap");
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
  ts.origin_y = origins(h, ts.tile_h, ts.overlap_h);
  ts.origin_x = origins(w, ts.tile_w, ts.overlap_w);
  return ts;
}

int64_t VaeDecoder::tile_numel(const Shape& z_shape, const TileSet& tiles) const {
  const int64_t s = config_.spatial_compression_ratio;
  return z_shape[0] * config_.out_channels * config_.video_frames(z_shape[2]) * tiles.tile_h * s * tiles.tile_w * s;
}

std::vector<float> VaeDecoder::decode_tile(const Tensor& z, const TileSet& tiles, size_t index,
                                           const ChunkHook& before_chunk) {
  STAVID_CHECK(index < tiles.count(), "VAE: tile ", index, " of ", tiles.count());
  const int64_t y0 = tiles.origin_y[index / tiles.origin_x.size()], x0 = tiles.origin_x[index % tiles.origin_x.size()];
  const Tensor zt = z.slice(3, y0, y0 + tiles.tile_h).slice(4, x0, x0 + tiles.tile_w).contiguous();
  return decode_chunked(zt, tiles.chunk_latent_frames, before_chunk).to_host_f32();  // [B, C, F, ph, pw]
}

namespace {

// Accumulates weighted tiles and the weights on the host (fp32), tile by tile in tile order, then
// normalizes: the blend of decode_tiled and blend_tiles (the same additions in the same order).
class TileBlender {
 public:
  TileBlender(const Shape& z_shape, const VaeDecoder::TileSet& tiles, int64_t channels, int64_t frames, int64_t s)
      : tiles_(tiles), s_(s), h_(z_shape[3]), w_(z_shape[4]), planes_(z_shape[0] * channels * frames),
        shape_{z_shape[0], channels, frames, z_shape[3] * s, z_shape[4] * s},
        acc_(static_cast<size_t>(planes_ * h_ * s * w_ * s), 0.f), wsum_(static_cast<size_t>(h_ * s * w_ * s), 0.f) {}

  void add(size_t index, const float* tile) {  // tile: [B, C, F, ph, pw]
    const auto& oy = tiles_.origin_y;
    const auto& ox = tiles_.origin_x;
    const size_t iy = index / ox.size(), ix = index % ox.size();
    const int64_t ph = tiles_.tile_h * s_, pw = tiles_.tile_w * s_, oh_px = tiles_.overlap_h * s_,
                  ow_px = tiles_.overlap_w * s_;
    const int64_t y0 = oy[iy] * s_, x0 = ox[ix] * s_, row = w_ * s_;
    for (int64_t yy = 0; yy < ph; ++yy) {
      const float ry = ramp(yy, ph, oh_px, iy == 0, iy + 1 == oy.size());
      for (int64_t xx = 0; xx < pw; ++xx) {
        const float wgt = ry * ramp(xx, pw, ow_px, ix == 0, ix + 1 == ox.size());
        wsum_[(y0 + yy) * row + x0 + xx] += wgt;
        for (int64_t bcf = 0; bcf < planes_; ++bcf)
          acc_[(bcf * h_ * s_ + y0 + yy) * row + x0 + xx] += wgt * tile[(bcf * ph + yy) * pw + xx];
      }
    }
  }

  Tensor finish(Device device) {
    const int64_t px_count = h_ * s_ * w_ * s_;
    for (int64_t bcf = 0; bcf < planes_; ++bcf)
      for (int64_t px = 0; px < px_count; ++px) acc_[bcf * px_count + px] /= wsum_[px];
    return Tensor::from_host(acc_, shape_, DType::F32, device);
  }

 private:
  // The weight of a tile ramps from 0 to 1 across an overlap (not at the video's edges).
  static float ramp(int64_t i, int64_t n, int64_t ov, bool lo_edge, bool hi_edge) {
    float r = 1.f;
    if (!lo_edge && ov > 0 && i < ov) r = std::min(r, static_cast<float>(i + 1) / static_cast<float>(ov + 1));
    if (!hi_edge && ov > 0 && i >= n - ov) r = std::min(r, static_cast<float>(n - i) / static_cast<float>(ov + 1));
    return r;
  }

  const VaeDecoder::TileSet& tiles_;
  int64_t s_, h_, w_, planes_;
  Shape shape_;
  std::vector<float> acc_, wsum_;
};

}  // namespace

Tensor VaeDecoder::blend_tiles(const Shape& z_shape, const TileSet& tiles, const std::vector<const float*>& outputs) const {
  STAVID_CHECK(outputs.size() == tiles.count(), "VAE: ", outputs.size(), " tile outputs for ", tiles.count(), " tiles");
  TileBlender blend(z_shape, tiles, config_.out_channels, config_.video_frames(z_shape[2]),
                    config_.spatial_compression_ratio);
  for (size_t i = 0; i < tiles.count(); ++i) blend.add(i, outputs[i]);
  return blend.finish(device_);
}

Tensor VaeDecoder::decode_tiled(const Tensor& z, const DecodePlan& plan, const ChunkHook& before_chunk) {
  const TileSet tiles = tile_set(z.shape(), plan);
  if (tiles.count() == 1) return decode_chunked(z, tiles.chunk_latent_frames, before_chunk);
  TileBlender blend(z.shape(), tiles, config_.out_channels, config_.video_frames(z.size(2)),
                    config_.spatial_compression_ratio);
  for (size_t i = 0; i < tiles.count(); ++i) blend.add(i, decode_tile(z, tiles, i, before_chunk).data());
  return blend.finish(device_);
}

namespace {
// Device bytes of a decode, allocation by allocation in the order the decoder makes them, each
// rounded to the allocator's size class; keeps the high-water mark.
struct MemSim {
  size_t live = 0, peak = 0;
  size_t alloc(int64_t bytes) {
    const size_t s = bytes > 0 ? rt::allocation_size_class(static_cast<size_t>(bytes)) : 0;
    live += s;
    peak = std::max(peak, live);
    return s;
  }
  void free(size_t s) { live -= s; }
};
}  // namespace

size_t VaeDecoder::estimate_peak_bytes(const Shape& zs, const DecodePlan& plan) const {
  const int64_t b = zs[0], t = zs[2], h = zs[3], w = zs[4], s = config_.spatial_compression_ratio;
  const int64_t chunk = plan.chunk_latent_frames > 0 ? std::min<int64_t>(plan.chunk_latent_frames, t) : t;
  const int64_t th = plan.tile_h > 0 ? std::min<int64_t>(plan.tile_h, h) : h;
  const int64_t tw = plan.tile_w > 0 ? std::min<int64_t>(plan.tile_w, w) : w;
  const bool tiled = th < h || tw < w;
  const int64_t esz = static_cast<int64_t>(dtype_size(dtype_));
  const int64_t frames = config_.video_frames(t);
  const std::vector<int32_t> rc(config_.block_out_channels.rbegin(), config_.block_out_channels.rend());
  // One chunk of f latent frames after `seen` earlier ones; the first chunk's frame 0 is upsampled in
  // space only, and it has no older conv caches to hold beside the new ones.
  auto simulate = [&](int64_t f_lat, bool first, int64_t seen) {
  MemSim m;
  if (tiled) m.alloc(b * config_.latent_channels * t * th * tw * 4);  // the tile's latent
  // Live for the whole decode of one tile: its fp32 output video; every 3x3x3 conv's 2-frame cache
  // (counted once here; a conv holds its old and new cache at once, added in conv() below); the
  // mid attention's K/V of all frames so far (at most the whole clip).
  m.alloc(b * config_.out_channels * frames * th * s * tw * s * 4);
  size_t caches = 0;
  auto cache = [&](int64_t cin, int64_t hh, int64_t ww) { caches += m.alloc(b * cin * 2 * hh * ww * esz); };
  {
    int64_t hh = th, ww = tw;
    cache(config_.latent_channels, hh, ww);  // conv_in
    for (int r = 0; r < 4; ++r) cache(rc[0], hh, ww);  // mid resnets
    for (size_t i = 0; i < up_.size(); ++i) {
      const int64_t cin = i == 0 ? rc[0] : rc[i - 1];
      for (size_t j = 0; j < up_[i].resnets.size(); ++j) {
        cache(j == 0 ? cin : rc[i], hh, ww);
        cache(rc[i], hh, ww);
      }
      if (up_[i].upsample_conv.w.defined()) {
        hh *= up_[i].fh;
        ww *= up_[i].fw;
        cache(rc[i], hh, ww);
      }
    }
    cache(rc.back(), hh, ww);  // conv_out
  }
  const int64_t hw_lat = th * tw;
  if (config_.mid_block_add_attention) m.alloc(2 * b * seen * hw_lat * rc[0] * esz);
  auto act = [&](int64_t c, int64_t f, int64_t hh, int64_t ww) { return b * c * f * hh * ww * esz; };
  auto conv = [&](int64_t cin, int64_t cout, int64_t f, int64_t hh, int64_t ww, int k) {
    size_t extra_cache = 0, col = 0;
    if (k == 3 && !first) extra_cache = m.alloc(b * cin * 2 * hh * ww * esz);
    const size_t y = m.alloc(act(cout, f, hh, ww));
    if (k == 3) {
      const int64_t kk = cin * 27, hw = hh * ww;
      const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(f, static_cast<int64_t>(max_col_bytes) / (kk * hw * esz)));
      col = m.alloc(kk * nt * hw * esz);
    }
    m.free(col);
    m.free(extra_cache);
    return y;
  };
  auto norm = [&](int64_t c, int64_t f, int64_t hh, int64_t ww) { return m.alloc(act(c, f, hh, ww)); };
  // resblock with its input live (held by the caller); returns the output's bytes.
  auto resblock = [&](int64_t cin, int64_t cout, int64_t f, int64_t hh, int64_t ww) {
    const size_t n1 = norm(cin, f, hh, ww);
    const size_t h1 = conv(cin, cout, f, hh, ww, 3);
    m.free(n1);
    const size_t n2 = norm(cout, f, hh, ww);
    const size_t h2 = conv(cout, cout, f, hh, ww, 3);
    m.free(h1);
    m.free(n2);
    const size_t sc = cin != cout ? conv(cin, cout, f, hh, ww, 1) : 0;
    const size_t out = m.alloc(act(cout, f, hh, ww));
    m.free(sc);
    m.free(h2);
    return out;
  };
  int64_t f = f_lat, hh = th, ww = tw;
  const size_t z_in = m.alloc(b * config_.latent_channels * f * hh * ww * 4);  // the chunk's slice
  const size_t zq = m.alloc(act(config_.latent_channels, f, hh, ww)), zero = m.alloc(act(config_.latent_channels, f, hh, ww));
  const size_t pq = conv(config_.latent_channels, config_.latent_channels, f, hh, ww, 1);
  m.free(zq);
  m.free(zero);
  size_t x = conv(config_.latent_channels, rc[0], f, hh, ww, 3);
  m.free(pq);
  auto step = [&](size_t next) {
    m.free(x);
    x = next;
  };
  step(resblock(rc[0], rc[0], f, hh, ww));
  if (config_.mid_block_add_attention) {
    const int64_t c = rc[0], tok = f * hw_lat, keys = (seen + f) * hw_lat;
    const size_t hn = norm(c, f, hh, ww), tokens = m.alloc(tok * c * esz * b);
    const size_t q = m.alloc(tok * c * esz * b), k = m.alloc(tok * c * esz * b), v = m.alloc(tok * c * esz * b);
    const size_t kv_new = m.alloc(2 * b * keys * c * esz);  // the grown K/V beside the old cache
    const int64_t q_chunk = std::max<int64_t>(1, std::min<int64_t>(hw_lat, static_cast<int64_t>(max_col_bytes) / (keys * 4)));
    const size_t o = m.alloc(tok * c * esz * b), scores = m.alloc(q_chunk * keys * 4);
    m.free(m.alloc(q_chunk * keys * esz));  // P in the compute dtype
    m.free(scores);
    const size_t out = m.alloc(tok * c * esz * b), back = m.alloc(act(c, f, hh, ww));
    m.free(kv_new);
    const size_t res = m.alloc(act(c, f, hh, ww));
    for (size_t r : {hn, tokens, q, k, v, o, out, back}) m.free(r);
    step(res);
  }
  step(resblock(rc[0], rc[0], f, hh, ww));
  // up_block(i, x): its input stays live (the caller's) until the block returns.
  for (size_t i = 0; i < up_.size(); ++i) {
    const int64_t cin = i == 0 ? rc[0] : rc[i - 1];
    const size_t block_in = x;
    size_t cur = 0;  // the block's own latest activation (0: still the input)
    for (size_t j = 0; j < up_[i].resnets.size(); ++j) {
      const size_t next = resblock(j == 0 ? cin : rc[i], rc[i], f, hh, ww);
      m.free(cur);
      cur = next;
    }
    if (up_[i].upsample_conv.w.defined()) {
      const int64_t f2 = first && up_[i].ft > 1 ? 1 + up_[i].ft * (f - 1) : f * up_[i].ft, h2 = hh * up_[i].fh, w2 = ww * up_[i].fw;
      const size_t up = m.alloc(act(rc[i], f2, h2, w2));
      const size_t y = conv(rc[i], rc[i], f2, h2, w2, 3);
      m.free(up);
      m.free(cur);
      cur = y;
      f = f2;
      hh = h2;
      ww = w2;
    }
    m.free(block_in);
    x = cur;
  }
  const size_t n = norm(rc.back(), f, hh, ww);
  const size_t y = conv(rc.back(), config_.out_channels, f, hh, ww, 3);
  m.free(n);
  m.alloc(b * config_.out_channels * f * hh * ww * 4);  // .to(F32), with x and y still live
  m.free(y);
  m.free(x);
  m.free(z_in);
  return m.peak;
  };
  size_t peak = simulate(chunk, true, 0);
  if (t > chunk) peak = std::max(peak, simulate(std::min(chunk, t - chunk), false, t - std::min(chunk, t - chunk)));
  // Small buffers the walk leaves out (bias views, host staging, library workspaces): 3% + 1 MiB.
  peak += peak / 32 + (size_t(1) << 20);
  // Tiled: the blended video is assembled on the host and uploaded once everything else is freed.
  if (tiled) peak = std::max(peak, rt::allocation_size_class(static_cast<size_t>(b * config_.out_channels * frames * h * s * w * s * 4)));
  return peak;
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

Tensor VaeDecoder::decode_with_budget(const Tensor& z, size_t budget_bytes, const ChunkHook& before_chunk) {
  const DecodePlan plan = plan_for_budget(z.shape(), budget_bytes);
  rt::Allocator& a = rt::allocator_for(device_);
  const rt::ScopedReserveLimit limit(a, a.stats().allocated_bytes + budget_bytes);
  return decode_tiled(z, plan, before_chunk);
}

Tensor VaeDecoder::postprocess(const Tensor& raw) {
  // (x / 2 + 0.5) clamped to [0, 1] on the host copy's device: small, element-wise.
  Tensor x = raw.to(DType::F32).to(Device::cpu()).contiguous();
  float* p = x.data_as<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::min(1.f, std::max(0.f, p[i] * 0.5f + 0.5f));
  return x;
}

}  // namespace stavid::vae
