#include "model/dit/dit.h"

#include <algorithm>
#include <cmath>

#include "kernels/core/error.h"
#include "kernels/dit_ops.h"
#include "kernels/elementwise.h"
#include "model/runtime/cuda_runtime.h"
#include "model/runtime/ops.h"
#include "model/weights/safetensors.h"

namespace stavid::dit {

std::vector<float> timestep_sinusoid(float t) {
  // Spec 2.0: f_k = exp(-ln(10000) * k / 128), [cos(t f_k) ..., sin(t f_k) ...], fp32.
  // The same fp32 operation order as the reference: (-ln(10000) * k) / 128, then exp.
  std::vector<float> e(256);
  const float neg_log = static_cast<float>(-std::log(10000.0));
  for (int k = 0; k < 128; ++k) {
    const float f = std::exp(neg_log * static_cast<float>(k) / 128.f);
    e[k] = std::cos(t * f);
    e[128 + k] = std::sin(t * f);
  }
  return e;
}

void rope_angles(const DitConfig& c, int32_t t, int32_t h, int32_t w, float* cos_out, float* sin_out) {
  // Spec 2.5: per axis a (dims d_a from rope_axes_dim, in order t, h, w), pair k of the axis has
  // frequency theta^(-2k/d_a) and angle pos_a * freq, computed in double and stored as fp32.
  const int32_t pos[3] = {t, h, w};
  int j = 0;
  for (int a = 0; a < 3; ++a) {
    const int32_t d = c.rope_axes_dim[a];
    for (int32_t k = 0; k < d / 2; ++k, ++j) {
      const double freq = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * k / d);
      const double angle = pos[a] * freq;
      cos_out[j] = static_cast<float>(std::cos(angle));
      sin_out[j] = static_cast<float>(std::sin(angle));
    }
  }
}

HunyuanDit::HunyuanDit(DitConfig config, DitWeights weights, Device device, DType dtype)
    : config_(config), w_(std::move(weights)), device_(device), dtype_(dtype) {
  config_.validate();
}

HunyuanDit HunyuanDit::load(const std::string& dir, Device device, DType dtype) {
  const DitConfig c = DitConfig::from_file(dir + "/config.json");
  const Checkpoint ckpt = Checkpoint::open(dir);
  return HunyuanDit(c, DitWeights::load(c, ckpt, device, dtype), device, dtype);
}

Tensor HunyuanDit::linear(const Tensor& x, const Linear& l, bool gelu) const {
  return ops::linear(x, l.w, l.b, gelu ? ops::Activation::GeluTanh : ops::Activation::None);
}

std::shared_ptr<const TokenLayout> HunyuanDit::layout_for(const std::array<int32_t, 3>& grid,
                                                          const std::array<int32_t, 3>& tile, int32_t text_slots) {
  const std::array<int32_t, 7> key = {grid[0], grid[1], grid[2], tile[0], tile[1], tile[2], text_slots};
  if (auto it = layouts_.find(key); it != layouts_.end()) return it->second;
  auto lay = std::make_shared<TokenLayout>();
  lay->grid = grid;
  lay->geom = make_sta_geometry(grid.data(), tile.data(), text_slots, text_slots);
  const StaGeometry& g = lay->geom;
  lay->n_img = g.img_tokens();
  // Compact rows: non-padded slots in slot order.
  std::vector<int32_t> row_of_token(static_cast<size_t>(lay->n_img));
  std::vector<int32_t> o_row_map(static_cast<size_t>(g.seq_len()), -1);
  const int64_t half = config_.attention_head_dim / 2;
  std::vector<float> cs(static_cast<size_t>(lay->n_img * half)), sn(cs.size());
  int64_t row = 0;
  for (int64_t slot = 0; slot < g.img_slots; ++slot) {
    const int64_t raster = sta_raster_of_slot(g, slot);
    if (raster < 0) continue;
    row_of_token[raster] = static_cast<int32_t>(row);
    o_row_map[slot] = static_cast<int32_t>(row);
    const int32_t w = static_cast<int32_t>(raster % grid[2]);
    const int32_t h = static_cast<int32_t>((raster / grid[2]) % grid[1]);
    const int32_t t = static_cast<int32_t>(raster / (static_cast<int64_t>(grid[2]) * grid[1]));
    rope_angles(config_, t, h, w, &cs[row * half], &sn[row * half]);
    ++row;
  }
  for (int32_t t = 0; t < text_slots; ++t) o_row_map[g.img_slots + t] = static_cast<int32_t>(lay->n_img + t);
  lay->row_of_token = Buffer::from_vector(row_of_token, device_);
  lay->o_row_map = Buffer::from_vector(o_row_map, device_);
  lay->rope_cos = Tensor::from_host(cs, {lay->n_img, half}, DType::F32, device_);
  lay->rope_sin = Tensor::from_host(sn, {lay->n_img, half}, DType::F32, device_);
  layouts_[key] = lay;
  return lay;
}

namespace {

// Per-batch rows of a sinusoid embedding, as a [B, 256] tensor.
Tensor sinusoids(const std::vector<float>& t, DType dtype, Device device) {
  std::vector<float> all;
  for (float v : t) {
    const auto e = timestep_sinusoid(v);
    all.insert(all.end(), e.begin(), e.end());
  }
  return Tensor::from_host(all, {static_cast<int64_t>(t.size()), 256}, dtype, device);
}

// Column block i of width d of a [B, k*d] modulation tensor: a [B, d] view.
Tensor chunk(const Tensor& mod, int i, int64_t d) { return mod.slice(1, i * d, (i + 1) * d); }

// The attention-input preparation shared by dual and single blocks: outputs, RoPE, slot map.
// Callers set the sources and the norm weights.
QkvPrepareParams image_qkv_params(const TokenLayout& lay, Tensor& q, Tensor& k, Tensor& v, int32_t batch,
                                  int32_t heads, int32_t head_dim, DType dtype, Device device) {
  QkvPrepareParams qp;
  qp.batch = batch;
  qp.heads = heads;
  qp.head_dim = head_dim;
  qp.rope_cos = lay.rope_cos.data_as<float>();
  qp.rope_sin = lay.rope_sin.data_as<float>();
  qp.img_row_of_slot = lay.o_row_map.as<int32_t>();
  qp.img_slots = lay.geom.img_slots;
  qp.img_rows = lay.n_img;
  qp.q = q.data();
  qp.k = k.data();
  qp.v = v.data();
  qp.dtype = dtype;
  qp.device = device;
  return qp;
}

bool all_equal(const std::vector<int32_t>& v) {
  return std::all_of(v.begin(), v.end(), [&](int32_t x) { return x == v[0]; });
}
}  // namespace

void HunyuanDit::attention(const State& s, int layer, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                           const StaGeometry& geom, const Buffer& windows, size_t window_offset,
                           const std::vector<StaWindow>& host_windows, int32_t heads) const {
  const int32_t hd = config_.attention_head_dim;
  const int64_t seq = geom.seq_len();
  StaAttentionParams p;
  for (int64_t* st : {p.q_stride, p.k_stride, p.v_stride}) {
    st[0] = heads * seq * hd;
    st[1] = seq * hd;
    st[2] = hd;
  }
  p.o_stride[0] = out.stride(0);
  p.o_stride[1] = hd;
  p.o_stride[2] = out.size(1) > 1 ? out.stride(1) : out.size(2);
  p.heads = heads;
  p.head_dim = hd;
  p.windows = windows.as<StaWindow>() + window_offset;
  p.host_windows = host_windows.data() + window_offset;
  p.dtype = dtype_;
  p.device = device_;
  p.o_row_map = s.layout ? s.layout->o_row_map.as<int32_t>() : nullptr;
  const Stream stream = rt::current_stream(device_);
  const size_t esz = dtype_size(dtype_);
  const bool one_launch = all_equal(s.text_len);
  for (int32_t b = 0; b < (one_launch ? 1 : s.batch); ++b) {
    p.batch = one_launch ? s.batch : 1;
    p.geom = geom;
    p.geom.text_valid = std::min(s.text_len[b], geom.text_slots);
    const int64_t off_qkv = static_cast<int64_t>(b) * heads * seq * hd;
    p.q = static_cast<const char*>(q.data()) + off_qkv * esz;
    p.k = static_cast<const char*>(k.data()) + off_qkv * esz;
    p.v = static_cast<const char*>(v.data()) + off_qkv * esz;
    p.o = static_cast<char*>(out.data()) + b * out.stride(0) * static_cast<int64_t>(esz);
    sta_attention(p, stream);
  }
  if (probe_ && layer >= 0) probe_candidates(s, layer, q, k, v, out, geom);
}

void HunyuanDit::set_communicator(parallel::Communicator* comm) {
  if (comm) parallel::check_head_split(config_.num_attention_heads, comm->size());
  STAVID_CHECK(!comm || comm->size() == 1 || !probe_, "DiT: calibration probes run on one rank only");
  comm_ = comm;
}

void HunyuanDit::set_probe(AttentionProbe* probe) {
  STAVID_CHECK(!probe || !comm_ || comm_->size() == 1, "DiT: calibration probes run on one rank only");
  probe_ = probe;
  if (!probe) return;
  STAVID_CHECK(!probe->candidates.empty(), "calibration: no candidate windows");
  const int32_t heads = config_.num_attention_heads;
  probe->host_windows.clear();
  for (const StaWindow& w : probe->candidates) {
    STAVID_CHECK(w.t >= 1 && w.h >= 1 && w.w >= 1, "calibration: candidate windows must be >= 1 on every axis");
    probe->host_windows.insert(probe->host_windows.end(), static_cast<size_t>(heads), w);
  }
  probe->windows = Buffer::from_vector(probe->host_windows, device_);
  const std::vector<double> zeros(static_cast<size_t>(config_.total_layers()) * probe->candidates.size() * heads, 0.0);
  probe->sums = Buffer::from_vector(zeros, device_);
}

void HunyuanDit::probe_candidates(const State& s, int layer, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const StaGeometry& geom) const {
  const int32_t heads = config_.num_attention_heads, hd = config_.attention_head_dim;
  const int64_t n = s.layout->n_img, d = config_.hidden();
  const size_t ncand = probe_->candidates.size();
  Tensor cand = Tensor::empty({static_cast<int64_t>(s.batch), out.size(1), d}, dtype_, device_);
  const Stream stream = rt::current_stream(device_);
  const size_t esz = dtype_size(dtype_);
  for (size_t c = 0; c < ncand; ++c) {
    attention(s, -1, q, k, v, cand, geom, probe_->windows, c * heads, probe_->host_windows, heads);
    for (int32_t b = 0; b < s.batch; ++b) {
      GroupSqDiffParams g;
      g.a = static_cast<const char*>(out.data()) + b * out.stride(0) * static_cast<int64_t>(esz);
      g.b = static_cast<const char*>(cand.data()) + b * cand.stride(0) * static_cast<int64_t>(esz);
      g.rows = n;
      g.cols = d;
      g.group = hd;
      g.a_stride = out.size(1) > 1 ? out.stride(1) : d;
      g.b_stride = d;
      g.out = probe_->sums.as<double>() + (static_cast<size_t>(layer) * ncand + c) * heads;
      g.dtype = dtype_;
      g.device = device_;
      group_sq_diff(g, stream);
    }
  }
  probe_->elements_per_head = s.batch * n * hd;
}

Tensor HunyuanDit::refine_text(const Tensor& text_states, const std::vector<int32_t>& text_len,
                               const Tensor& timestep_emb) {
  const int64_t b = text_states.size(0), l = text_states.size(1), d = config_.hidden();
  const int32_t heads = config_.num_attention_heads, hd = config_.attention_head_dim;
  // 1. Masked mean of the raw states over valid tokens, in fp32 (spec 2.3): a [B, 1, L] x [B, L, Dt]
  //    product with weights 1/len on valid tokens.
  std::vector<float> wts(static_cast<size_t>(b * l), 0.f);
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < text_len[i]; ++j) wts[i * l + j] = 1.f / static_cast<float>(text_len[i]);
  const Tensor states32 = text_states.to(DType::F32).contiguous();
  Tensor mean = ops::bmm(Tensor::from_host(wts, {b, 1, l}, DType::F32, device_), states32)  // [B, 1, Dt]
                    .view({b, config_.text_embed_dim})
                    .to(dtype_);
  // 2. c = refiner time MLP + text projection.
  Tensor c = ops::add(linear(ops::silu(linear(timestep_emb, w_.ref_time1)), w_.ref_time2),
                      linear(ops::silu(linear(mean, w_.ref_text1)), w_.ref_text2));  // [B, D]
  const Tensor silu_c = ops::silu(c);
  // 3. Input projection.
  Tensor x = linear(text_states.to(dtype_), w_.ref_proj_in);  // [B, L, D]
  // 4. Blocks: self-attention among valid text tokens (no RoPE, no qk-norm), gates only.
  const int32_t canvas[3] = {0, 0, 0}, tile[3] = {1, 1, 64};
  const StaGeometry geom = make_sta_geometry(canvas, tile, static_cast<int32_t>(l), static_cast<int32_t>(l));
  const std::vector<StaWindow> host_windows(static_cast<size_t>(heads), StaWindow{1, 1, 1});
  const Buffer windows = Buffer::from_vector(host_windows, device_);
  State s;
  s.batch = static_cast<int32_t>(b);
  s.text_len = text_len;
  for (const RefinerBlock& blk : w_.refiner) {
    const Tensor mod = linear(silu_c, blk.mod);  // [B, 2D]: gate_msa, gate_mlp
    const Tensor h = ops::layer_norm(x, blk.norm1_w, blk.norm1_b, 1e-6f);
    const Tensor qkv = linear(h, blk.qkv);  // [B, L, 3D]
    Tensor q = Tensor::empty({b, heads, l, hd}, dtype_, device_), k = Tensor::empty(q.shape(), dtype_, device_),
           v = Tensor::empty(q.shape(), dtype_, device_);
    QkvPrepareParams qp;
    qp.txt = qkv.data();
    qp.txt_rows = l;
    qp.txt_row_stride = 3 * d;
    qp.txt_batch_stride = l * 3 * d;
    qp.batch = static_cast<int32_t>(b);
    qp.heads = heads;
    qp.head_dim = hd;
    qp.q = q.data();
    qp.k = k.data();
    qp.v = v.data();
    qp.dtype = dtype_;
    qp.device = device_;
    qkv_prepare(qp, rt::current_stream(device_));
    Tensor o = Tensor::empty({b, l, d}, dtype_, device_);
    attention(s, -1, q, k, v, o, geom, windows, 0, host_windows, heads);
    ops::gated_residual_(x, linear(o, blk.out), chunk(mod, 0, d));
    const Tensor h2 = ops::layer_norm(x, blk.norm2_w, blk.norm2_b, 1e-6f);
    ops::gated_residual_(x, linear(ops::silu(linear(h2, blk.ff1)), blk.ff2), chunk(mod, 1, d));
  }
  return x;
}

HunyuanDit::State HunyuanDit::embed(const DitInputs& in, const AttentionPlan& plan) {
  const DitConfig& c = config_;
  STAVID_CHECK(in.latent.dim() == 5 && in.latent.size(1) == c.in_channels, "DiT: latent must be [B, ",
               c.in_channels, ", T, H, W], got ", in.latent.str());
  const int32_t b = static_cast<int32_t>(in.latent.size(0));
  const int32_t frames = static_cast<int32_t>(in.latent.size(2)), height = static_cast<int32_t>(in.latent.size(3)),
                width = static_cast<int32_t>(in.latent.size(4));
  STAVID_CHECK(frames % c.patch_size_t == 0 && height % c.patch_size == 0 && width % c.patch_size == 0,
               "DiT: latent ", frames, "x", height, "x", width, " is not divisible by the patch size");
  STAVID_CHECK(static_cast<int32_t>(in.timestep.size()) == b && static_cast<int32_t>(in.guidance.size()) == b &&
                   static_cast<int32_t>(in.text_len.size()) == b,
               "DiT: timestep, guidance and text_len need one entry per batch item (", b, ")");
  STAVID_CHECK(in.text_states.dim() == 3 && in.text_states.size(0) == b && in.text_states.size(2) == c.text_embed_dim,
               "DiT: text_states must be [", b, ", L, ", c.text_embed_dim, "], got ", in.text_states.str());
  STAVID_CHECK(in.pooled.dim() == 2 && in.pooled.size(0) == b && in.pooled.size(1) == c.pooled_projection_dim,
               "DiT: pooled must be [", b, ", ", c.pooled_projection_dim, "], got ", in.pooled.str());
  const int32_t l = static_cast<int32_t>(in.text_states.size(1));
  for (int32_t n : in.text_len) STAVID_CHECK(n >= 1 && n <= l, "DiT: text_len ", n, " outside 1..", l);

  State s;
  s.batch = b;
  s.text_len = in.text_len;
  const std::array<int32_t, 3> grid = {frames / c.patch_size_t, height / c.patch_size, width / c.patch_size};
  s.layout = layout_for(grid, plan.tile, l);
  const TokenLayout& lay = *s.layout;

  // This rank's image rows and heads (all of them without a group).
  const int32_t heads = c.num_attention_heads, layers = c.total_layers();
  s.split = parallel::make_sequence_split(lay.n_img, heads, comm_ ? comm_->rank() : 0, comm_ ? comm_->size() : 1);
  const int32_t hk = s.split.heads_per_rank;

  // Windows of every layer and of this rank's heads, uploaded once per forward.
  s.host_windows.resize(static_cast<size_t>(layers) * hk);
  for (int32_t li = 0; li < layers; ++li)
    for (int32_t h = s.split.head_begin; h < s.split.head_begin + hk; ++h) {
      StaWindow w{lay.geom.grid[0], lay.geom.grid[1], lay.geom.grid[2]};  // dense: the whole grid
      if (!plan.dense()) {
        STAVID_CHECK(static_cast<int32_t>(plan.windows.size()) == layers, "DiT: the attention plan has ",
                     plan.windows.size(), " layers, the model ", layers);
        STAVID_CHECK(static_cast<int32_t>(plan.windows[li].size()) == heads, "DiT: layer ", li, " of the plan has ",
                     plan.windows[li].size(), " heads, the model ", heads);
        w = plan.windows[li][h];
      }
      s.host_windows[static_cast<size_t>(li) * hk + (h - s.split.head_begin)] = w;
    }
  s.windows = Buffer::from_vector(s.host_windows, device_);

  // Conditioning vector (spec 2.1).
  const Tensor t_emb = sinusoids(in.timestep, dtype_, device_);  // [B, 256]
  Tensor vec = linear(ops::silu(linear(t_emb, w_.time1)), w_.time2);
  if (c.guidance_embeds)
    vec = ops::add(vec, linear(ops::silu(linear(sinusoids(in.guidance, dtype_, device_), w_.guid1)), w_.guid2));
  vec = ops::add(vec, linear(ops::silu(linear(in.pooled.to(dtype_), w_.text1)), w_.text2));
  s.vec = vec;                 // [B, D]
  s.silu_vec = ops::silu(vec);  // every modulation applies SiLU first

  // Patch embedding into compact tiled order (spec 2.2).
  const Tensor latent = in.latent.contiguous();
  Tensor patches = Tensor::empty({b, lay.n_img, c.patch_features()}, dtype_, device_);
  PatchifyParams pp;
  pp.src = latent.data();
  pp.dst = patches.data();
  pp.batch = b;
  pp.channels = c.in_channels;
  pp.frames = frames;
  pp.height = height;
  pp.width = width;
  pp.pt = c.patch_size_t;
  pp.ph = pp.pw = c.patch_size;
  pp.token_batch_stride = lay.n_img * c.patch_features();
  pp.token_row_stride = c.patch_features();
  pp.row_of_token = lay.row_of_token.as<int32_t>();
  pp.latent_dtype = latent.dtype();
  pp.token_dtype = dtype_;
  pp.device = device_;
  patchify(pp, rt::current_stream(device_));
  // [B, N_r, D]: this rank's rows (all N_img without a group)
  s.img = linear(s.split.parallel() ? patches.slice(1, s.split.row_begin, s.split.row_end) : patches, w_.x_embed);

  // Token refiner (spec 2.3).
  s.txt = refine_text(in.text_states, in.text_len, t_emb);  // [B, L, D]
  return s;
}

const Tensor& HunyuanDit::block0_modulated_input(State& s) {
  if (!s.block0_modulated.defined()) {
    STAVID_CHECK(!w_.dual.empty(), "DiT: TeaCache needs at least one dual block");
    const int64_t d = config_.hidden();
    const Tensor mod = linear(s.silu_vec, w_.dual[0].img_mod);  // [B, 6D]
    s.block0_modulated = ops::layer_norm_modulated(s.img, chunk(mod, 1, d), chunk(mod, 0, d), 1e-6f);
  }
  return s.block0_modulated;
}

void HunyuanDit::dual_block(State& s, int index) {
  const DualBlock& blk = w_.dual[index];
  const TokenLayout& lay = *s.layout;
  const parallel::SequenceSplit& sp = s.split;
  const int64_t d = config_.hidden(), n = lay.n_img, nr = s.img.size(1), l = s.txt.size(1), b = s.batch;
  const int32_t heads = config_.num_attention_heads, hd = config_.attention_head_dim, hk = sp.heads_per_rank;
  const Tensor img_mod = linear(s.silu_vec, blk.img_mod);  // [B, 6D]: shift1 scale1 gate1 shift2 scale2 gate2
  const Tensor txt_mod = linear(s.silu_vec, blk.txt_mod);
  Tensor h_img = (index == 0 && s.block0_modulated.defined())
                     ? s.block0_modulated
                     : ops::layer_norm_modulated(s.img, chunk(img_mod, 1, d), chunk(img_mod, 0, d), 1e-6f);
  s.block0_modulated = Tensor();
  const Tensor h_txt = ops::layer_norm_modulated(s.txt, chunk(txt_mod, 1, d), chunk(txt_mod, 0, d), 1e-6f);
  Tensor qkv_img = linear(h_img, blk.img_qkv);  // [B, N_r, 3D]
  Tensor qkv_txt = linear(h_txt, blk.txt_qkv);  // [B, L, 3D]
  h_img = Tensor();
  if (sp.parallel()) {
    qkv_img = parallel::gather_heads(*comm_, sp, qkv_img, heads, hd);  // [B, N, 3 * H/k * Dh]
    qkv_txt = parallel::slice_heads(sp, qkv_txt, heads, hd);           // [B, L, 3 * H/k * Dh]
  }
  const int64_t row = 3LL * hk * hd;

  const int64_t seq = lay.geom.img_slots + l;
  Tensor q = Tensor::empty({b, hk, seq, hd}, dtype_, device_), k = Tensor::empty(q.shape(), dtype_, device_),
         v = Tensor::empty(q.shape(), dtype_, device_);
  QkvPrepareParams qp = image_qkv_params(lay, q, k, v, static_cast<int32_t>(b), hk, hd, dtype_, device_);
  qp.img = qkv_img.data();
  qp.img_row_stride = row;
  qp.img_batch_stride = n * row;
  qp.txt = qkv_txt.data();
  qp.txt_rows = l;
  qp.txt_row_stride = row;
  qp.txt_batch_stride = l * row;
  qp.q_norm_img = blk.img_q_norm.data();
  qp.k_norm_img = blk.img_k_norm.data();
  qp.q_norm_txt = blk.txt_q_norm.data();
  qp.k_norm_txt = blk.txt_k_norm.data();
  qkv_prepare(qp, rt::current_stream(device_));
  qkv_img = qkv_txt = Tensor();

  Tensor o = Tensor::empty({b, n + l, hk * hd}, dtype_, device_);  // compact image rows, then text rows
  attention(s, index, q, k, v, o, lay.geom, s.windows, static_cast<size_t>(index) * hk, s.host_windows, hk);
  q = k = v = Tensor();
  Tensor o_img = o.slice(1, 0, n), o_txt = o.slice(1, n, n + l);
  if (sp.parallel()) {
    Tensor rows = Tensor::empty({b, nr, d}, dtype_, device_);  // [B, N_r, D]: the rank's rows, every head
    parallel::scatter_rows(*comm_, sp, o_img, rows);
    o_img = rows;
    o_txt = comm_->all_gather(o_txt, /*axis=*/2);  // [B, L, D]
  }
  o = Tensor();

  ops::gated_residual_(s.img, linear(o_img, blk.img_out), chunk(img_mod, 2, d));
  ops::gated_residual_(s.txt, linear(o_txt, blk.txt_out), chunk(txt_mod, 2, d));
  o_img = o_txt = Tensor();
  const Tensor m_img = ops::layer_norm_modulated(s.img, chunk(img_mod, 4, d), chunk(img_mod, 3, d), 1e-6f);
  ops::gated_residual_(s.img, linear(linear(m_img, blk.img_ff1, /*gelu=*/true), blk.img_ff2), chunk(img_mod, 5, d));
  const Tensor m_txt = ops::layer_norm_modulated(s.txt, chunk(txt_mod, 4, d), chunk(txt_mod, 3, d), 1e-6f);
  ops::gated_residual_(s.txt, linear(linear(m_txt, blk.txt_ff1, /*gelu=*/true), blk.txt_ff2), chunk(txt_mod, 5, d));
}

void HunyuanDit::single_block(State& s, int index) {
  const SingleBlock& blk = w_.single[index];
  const TokenLayout& lay = *s.layout;
  const parallel::SequenceSplit& sp = s.split;
  const int64_t d = config_.hidden(), f = config_.mlp_hidden(), n = lay.n_img, nr = sp.local_rows(), b = s.batch;
  const int64_t l = s.joined.size(1) - nr;
  const int32_t heads = config_.num_attention_heads, hd = config_.attention_head_dim, hk = sp.heads_per_rank;
  const Tensor mod = linear(s.silu_vec, blk.mod);  // [B, 3D]: shift, scale, gate
  const Tensor h = ops::layer_norm_modulated(s.joined, chunk(mod, 1, d), chunk(mod, 0, d), 1e-6f);
  const Tensor qkv = linear(h, blk.qkv);  // [B, N_r+L, 3D]
  // concat(attention output, gelu(mlp)) is built in place: the MLP GEMM writes its GELU output into
  // the right-hand columns and the attention (or, in parallel, the inverse all-to-all) into the
  // left-hand ones.
  Tensor cat = Tensor::empty({b, nr + l, d + f}, dtype_, device_);
  Tensor mlp_view = cat.slice(2, d, d + f);
  ops::linear_into(h, blk.mlp_in.w, blk.mlp_in.b, ops::Activation::GeluTanh, mlp_view);

  const int64_t seq = lay.geom.img_slots + l;
  Tensor q = Tensor::empty({b, hk, seq, hd}, dtype_, device_), k = Tensor::empty(q.shape(), dtype_, device_),
         v = Tensor::empty(q.shape(), dtype_, device_);
  QkvPrepareParams qp = image_qkv_params(lay, q, k, v, static_cast<int32_t>(b), hk, hd, dtype_, device_);
  Tensor img_src, txt_src;
  if (sp.parallel()) {
    img_src = parallel::gather_heads(*comm_, sp, qkv.slice(1, 0, nr), heads, hd);  // [B, N, 3 * H/k * Dh]
    txt_src = parallel::slice_heads(sp, qkv.slice(1, nr, nr + l), heads, hd);      // [B, L, 3 * H/k * Dh]
    const int64_t row = 3LL * hk * hd;
    qp.img = img_src.data();
    qp.img_row_stride = row;
    qp.img_batch_stride = n * row;
    qp.txt = txt_src.data();
    qp.txt_row_stride = row;
    qp.txt_batch_stride = l * row;
  } else {
    qp.img = qkv.data();
    qp.img_row_stride = 3 * d;
    qp.img_batch_stride = (n + l) * 3 * d;
    qp.txt = static_cast<const char*>(qkv.data()) + n * 3 * d * static_cast<int64_t>(dtype_size(dtype_));
    qp.txt_row_stride = 3 * d;
    qp.txt_batch_stride = (n + l) * 3 * d;
  }
  qp.txt_rows = l;
  qp.q_norm_img = qp.q_norm_txt = blk.q_norm.data();
  qp.k_norm_img = qp.k_norm_txt = blk.k_norm.data();
  qkv_prepare(qp, rt::current_stream(device_));
  img_src = txt_src = Tensor();
  Tensor attn_view = cat.slice(2, 0, d);
  const int layer = config_.num_layers + index;
  const size_t window_offset = static_cast<size_t>(layer) * hk;
  if (sp.parallel()) {
    Tensor o = Tensor::empty({b, n + l, hk * hd}, dtype_, device_);  // the rank's heads, every row
    attention(s, layer, q, k, v, o, lay.geom, s.windows, window_offset, s.host_windows, hk);
    q = k = v = Tensor();
    Tensor img_cols = attn_view.slice(1, 0, nr), txt_cols = attn_view.slice(1, nr, nr + l);
    parallel::scatter_rows(*comm_, sp, o.slice(1, 0, n), img_cols);
    comm_->all_gather_into(o.slice(1, n, n + l), /*axis=*/2, txt_cols);
  } else {
    attention(s, layer, q, k, v, attn_view, lay.geom, s.windows, window_offset, s.host_windows, hk);
    q = k = v = Tensor();
  }
  ops::gated_residual_(s.joined, linear(cat, blk.out), chunk(mod, 2, d));
}

void HunyuanDit::blocks(State& s) {
  for (int i = 0; i < config_.num_layers; ++i) dual_block(s, i);
  const int64_t n = s.img.size(1), l = s.txt.size(1), d = config_.hidden();  // n: this rank's image rows
  s.joined = Tensor::empty({s.batch, n + l, d}, dtype_, device_);
  s.joined.slice(1, 0, n).copy_from(s.img);
  s.joined.slice(1, n, n + l).copy_from(s.txt);
  for (int i = 0; i < config_.num_single_layers; ++i) single_block(s, i);
  s.img = s.joined.slice(1, 0, n).contiguous();
  s.txt = s.joined.slice(1, n, n + l).contiguous();
  s.joined = Tensor();
}

Tensor HunyuanDit::final_layer(const State& s, const Tensor& img) const {
  const DitConfig& c = config_;
  const TokenLayout& lay = *s.layout;
  const int64_t d = c.hidden();
  const Tensor mod = linear(s.silu_vec, w_.norm_out);  // [B, 2D], rows [scale; shift] (diffusers order)
  const Tensor y = ops::layer_norm_modulated(img, chunk(mod, 0, d), chunk(mod, 1, d), 1e-6f);
  Tensor tokens = linear(y, w_.proj_out);  // [B, N_r, C_out * pt * ph * pw]
  if (s.split.parallel()) tokens = comm_->all_gather(tokens, /*axis=*/1, s.split.rows);  // [B, N, ...]
  const int32_t frames = lay.grid[0] * c.patch_size_t, height = lay.grid[1] * c.patch_size,
                width = lay.grid[2] * c.patch_size;
  Tensor out = Tensor::empty({s.batch, c.out_channels, frames, height, width}, DType::F32, device_);
  PatchifyParams pp;
  pp.src = tokens.data();
  pp.dst = out.data();
  pp.batch = s.batch;
  pp.channels = c.out_channels;
  pp.frames = frames;
  pp.height = height;
  pp.width = width;
  pp.pt = c.patch_size_t;
  pp.ph = pp.pw = c.patch_size;
  pp.token_batch_stride = lay.n_img * tokens.size(2);
  pp.token_row_stride = tokens.size(2);
  pp.row_of_token = lay.row_of_token.as<int32_t>();
  pp.inverse = true;
  pp.latent_dtype = DType::F32;
  pp.token_dtype = dtype_;
  pp.device = device_;
  patchify(pp, rt::current_stream(device_));
  return out;
}

Tensor HunyuanDit::forward(const DitInputs& in, const AttentionPlan& plan) {
  State s = embed(in, plan);
  blocks(s);
  return final_layer(s, s.img);
}

}  // namespace stavid::dit
