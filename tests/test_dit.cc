// The HunyuanVideo DiT: config, weight loading (names, fusion, error reports), the DiT op families,
// and forward-pass invariants that need no reference: full windows equal dense attention for any
// tile (the compact tiled token order round-trips), batching equals separate runs, CPU equals CUDA.
// Parity with the PyTorch reference is in test_dit_golden.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/core/error.h"
#include "kernels/dit_ops.h"
#include "model/dit/dit.h"
#include "model/runtime/cuda_runtime.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"
#include "test_util.h"

namespace stavid::dit {
namespace {

using test::nmse;
using test::random_values;

DitConfig tiny_config() {
  DitConfig c;
  c.in_channels = c.out_channels = 4;
  c.num_attention_heads = 2;
  c.attention_head_dim = 16;
  c.num_layers = 1;
  c.num_single_layers = 1;
  c.num_refiner_layers = 1;
  c.patch_size = 2;
  c.patch_size_t = 1;
  c.text_embed_dim = 12;
  c.pooled_projection_dim = 8;
  c.rope_axes_dim = {4, 6, 6};
  return c;
}

DitInputs tiny_inputs(const DitConfig& c, int32_t batch, int32_t frames, int32_t hw, int32_t text, Device dev,
                      std::vector<int32_t> text_len) {
  DitInputs in;
  in.latent = Tensor::randn({batch, c.in_channels, frames, hw, hw}, 11, DType::F32, dev);
  in.text_states = Tensor::randn({batch, text, c.text_embed_dim}, 12, DType::F32, dev);
  in.pooled = Tensor::randn({batch, c.pooled_projection_dim}, 13, DType::F32, dev);
  for (int32_t b = 0; b < batch; ++b) {
    in.timestep.push_back(700.f - 100.f * b);
    in.guidance.push_back(6016.f);
  }
  in.text_len = std::move(text_len);
  return in;
}

TEST(DitConfig, ReleasedModelParameterCount) {
  const DitConfig c;  // defaults = the released 13B config
  EXPECT_EQ(c.parameter_count(), 12821012544LL);
  EXPECT_EQ(DitWeights::expected_keys(c).size(), 1264u);
  int64_t total = 0;
  for (const auto& [name, shape] : DitWeights::expected_keys(c)) total += shape_numel(shape);
  EXPECT_EQ(total, c.parameter_count());
}

TEST(DitConfig, FromJsonAndErrors) {
  const auto j = nlohmann::json::parse(R"({"in_channels": 4, "out_channels": 4, "num_attention_heads": 2,
      "attention_head_dim": 10, "num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 1,
      "patch_size": 1, "patch_size_t": 1, "guidance_embeds": true, "text_embed_dim": 16,
      "pooled_projection_dim": 8, "rope_axes_dim": [2, 4, 4], "qk_norm": "rms_norm", "_class_name": "x"})");
  const DitConfig c = DitConfig::from_json(j);
  EXPECT_EQ(c.hidden(), 20);
  EXPECT_EQ(c.mlp_hidden(), 80);
  auto bad = j;
  bad["rope_axes_dim"] = {2, 4, 6};
  try {
    DitConfig::from_json(bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_axes_dim"), std::string::npos) << e.what();
  }
  bad = j;
  bad["num_layers"] = "two";
  EXPECT_THROW(DitConfig::from_json(bad), Error);
}

// Writes a full checkpoint for `c` from random weights, with the checkpoint's own (unfused) names.
std::string write_checkpoint(const DitConfig& c, const std::string& dir, const std::set<std::string>& drop = {},
                             const std::string& extra = "", const std::string& misshape = "") {
  std::filesystem::create_directories(dir);
  std::vector<std::pair<std::string, Tensor>> ts;
  uint64_t seed = 1;
  for (const auto& [name, shape] : DitWeights::expected_keys(c)) {
    if (drop.count(name)) continue;
    Shape s = shape;
    if (name == misshape) s.back() += 1;
    ts.emplace_back(name, Tensor::randn(s, seed++, DType::F32, Device::cpu()));
  }
  if (!extra.empty()) ts.emplace_back(extra, Tensor::zeros({3}, DType::F32, Device::cpu()));
  const std::string path = dir + "/diffusion_pytorch_model.safetensors";
  save_tensors(path, ts);
  return path;
}

TEST(DitWeights, LoadsAndFusesByName) {
  const DitConfig c = tiny_config();
  const std::string dir = testing::TempDir() + "/dit_load_ok";
  write_checkpoint(c, dir);
  const Checkpoint ckpt = Checkpoint::open(dir);
  const DitWeights w = DitWeights::load(c, ckpt, Device::cpu(), DType::F32);
  const int64_t d = c.hidden();
  EXPECT_EQ(w.dual[0].img_qkv.w.shape(), (Shape{3 * d, d}));
  EXPECT_EQ(w.single[0].out.w.shape(), (Shape{d, d + c.mlp_hidden()}));
  EXPECT_EQ(w.x_embed.w.shape(), (Shape{d, c.patch_features()}));
  // The fused q|k|v rows are the three checkpoint tensors stacked in order.
  const auto k_rows = read_as_float(ckpt, ckpt.at("transformer_blocks.0.attn.to_k.weight"));
  const auto fused = w.dual[0].img_qkv.w.to_host_f32();
  for (size_t i = 0; i < k_rows.size(); ++i) ASSERT_EQ(fused[d * d + i], k_rows[i]);
  std::filesystem::remove_all(dir);
}

TEST(DitWeights, ReportsEveryProblemTogether) {
  const DitConfig c = tiny_config();
  const std::string dir = testing::TempDir() + "/dit_load_bad";
  write_checkpoint(c, dir, {"transformer_blocks.0.attn.to_q.weight", "proj_out.bias"}, "surprise.weight",
                   "single_transformer_blocks.0.proj_mlp.weight");
  const Checkpoint ckpt = Checkpoint::open(dir);
  try {
    DitWeights::load(c, ckpt, Device::cpu(), DType::F32);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.code(), ErrorCode::DataLoss);
    EXPECT_NE(m.find("missing: transformer_blocks.0.attn.to_q.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("missing: proj_out.bias"), std::string::npos) << m;
    EXPECT_NE(m.find("unused: surprise.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("shape: single_transformer_blocks.0.proj_mlp.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("4 problems"), std::string::npos) << m;
  }
  std::filesystem::remove_all(dir);
}

TEST(DitOps, PatchifyRoundTripsThroughAPermutation) {
  std::vector<Device> devs{Device::cpu()};
  if (rt::cuda_available()) devs.push_back(Device::cuda(0));
  for (Device dev : devs) {
    const int32_t b = 2, c = 3, t = 2, h = 6, w = 4, ph = 2;
    const int64_t ntok = t * (h / ph) * (w / ph), feat = c * ph * ph;
    std::vector<int32_t> perm(static_cast<size_t>(ntok));
    for (int64_t i = 0; i < ntok; ++i) perm[i] = static_cast<int32_t>((i * 5 + 3) % ntok);  // 5 coprime to 12
    const Buffer map = Buffer::from_vector(perm, dev);
    const Tensor lat = Tensor::randn({b, c, t, h, w}, 3, DType::F32, dev);
    Tensor tok = Tensor::empty({b, ntok, feat}, DType::BF16, dev);
    PatchifyParams p;
    p.src = lat.data();
    p.dst = tok.data();
    p.batch = b;
    p.channels = c;
    p.frames = t;
    p.height = h;
    p.width = w;
    p.ph = p.pw = ph;
    p.token_batch_stride = ntok * feat;
    p.token_row_stride = feat;
    p.row_of_token = map.as<int32_t>();
    p.latent_dtype = DType::F32;
    p.token_dtype = DType::BF16;
    p.device = dev;
    patchify(p, rt::current_stream(dev));
    // Token (t=1, h=2, w=1) = raster 1*6 + 2*2 + 1 = 11; feature (c=2, kh=1, kw=0) = 2*4 + 2 = 10.
    const auto tv = tok.to_host_f32(), lv = lat.to_host_f32();
    EXPECT_EQ(tv[(1 * ntok + perm[11]) * feat + 10], round_to(DType::BF16, lv[((1 * c + 2) * t + 1) * h * w + 5 * w + 2]));
    Tensor back = Tensor::empty(lat.shape(), DType::F32, dev);
    p.src = tok.data();
    p.dst = back.data();
    p.inverse = true;
    patchify(p, rt::current_stream(dev));
    const auto bv = back.to_host_f32();
    for (size_t i = 0; i < lv.size(); ++i) ASSERT_EQ(bv[i], round_to(DType::BF16, lv[i])) << dev.str() << " " << i;
  }
}

TEST(DitOps, QkvPrepareCudaMatchesCpu) {
  STAVID_REQUIRE_CUDA();
  for (DType dt : {DType::BF16, DType::F16}) {
    for (int32_t hd : {16, 64, 128}) {
      const int32_t b = 2, heads = 3, n = 37, l = 9;
      const int64_t width = 3LL * heads * hd;
      const int64_t slots = 48;
      std::vector<int32_t> map(static_cast<size_t>(slots), -1);
      for (int64_t s = 0, r = 0; s < slots; ++s)
        if (s % 4 != 3 && r < n) map[s] = static_cast<int32_t>(r++);
      const auto img = random_values(static_cast<size_t>(b * n * width), 1, dt, -2.f, 2.f);
      const auto txt = random_values(static_cast<size_t>(b * l * width), 2, dt, -2.f, 2.f);
      const auto wts = random_values(static_cast<size_t>(4 * hd), 3, dt, 0.5f, 1.5f);
      const auto cs = random_values(static_cast<size_t>(n * hd / 2), 4), sn = random_values(static_cast<size_t>(n * hd / 2), 5);
      std::vector<std::vector<float>> outs;
      for (Device dev : {Device::cpu(), Device::cuda(0)}) {
        const Tensor ti = Tensor::from_host(img, {b, n, width}, dt, dev), tt = Tensor::from_host(txt, {b, l, width}, dt, dev);
        const Tensor tw = Tensor::from_host(wts, {4, hd}, dt, dev);
        const Tensor tc = Tensor::from_host(cs, {n, hd / 2}, DType::F32, dev), ts = Tensor::from_host(sn, {n, hd / 2}, DType::F32, dev);
        const Buffer m = Buffer::from_vector(map, dev);
        const int64_t seq = slots + l;
        Tensor q = Tensor::full({b, heads, seq, hd}, NAN, dt, dev), k = Tensor::full(q.shape(), NAN, dt, dev),
               v = Tensor::full(q.shape(), NAN, dt, dev);
        QkvPrepareParams p;
        p.img = ti.data();
        p.img_rows = n;
        p.img_row_stride = width;
        p.img_batch_stride = n * width;
        p.txt = tt.data();
        p.txt_rows = l;
        p.txt_row_stride = width;
        p.txt_batch_stride = l * width;
        p.batch = b;
        p.heads = heads;
        p.head_dim = hd;
        p.q_norm_img = tw.select(0, 0).data();
        p.k_norm_img = tw.select(0, 1).data();
        p.q_norm_txt = tw.select(0, 2).data();
        p.k_norm_txt = tw.select(0, 3).data();
        p.rope_cos = tc.data_as<float>();
        p.rope_sin = ts.data_as<float>();
        p.img_row_of_slot = m.as<int32_t>();
        p.img_slots = slots;
        p.q = q.data();
        p.k = k.data();
        p.v = v.data();
        p.dtype = dt;
        p.device = dev;
        qkv_prepare(p, rt::current_stream(dev));
        auto out = q.to_host_f32();
        for (const Tensor* t : {&k, &v}) {
          const auto x = t->to_host_f32();
          out.insert(out.end(), x.begin(), x.end());
        }
        ASSERT_TRUE(test::all_finite(out)) << dev.str();
        outs.push_back(out);
      }
      EXPECT_LE(nmse(outs[1], outs[0]), 1e-5) << dtype_name(dt) << " hd=" << hd;
    }
  }
}

// Runs a forward of a random tiny model on `dev`.
Tensor run_tiny(const DitConfig& c, Device dev, DType dt, const DitInputs& in, const AttentionPlan& plan,
                uint64_t seed = 5) {
  HunyuanDit model(c, DitWeights::random(c, seed, dev, dt), dev, dt);
  return model.forward(in, plan);
}

TEST(DitForward, FullWindowsEqualDenseForAnyTile) {
  const DitConfig c = tiny_config();
  // Latent 3 x 12 x 10 -> token grid 3 x 6 x 5: tiles that divide it and tiles that pad it.
  const DitInputs in = tiny_inputs(c, 1, 3, 12, 7, Device::cpu(), {5});
  AttentionPlan dense;
  dense.tile = {1, 1, 1};
  const auto ref = run_tiny(c, Device::cpu(), DType::F32, in, dense).to_host_f32();
  ASSERT_TRUE(test::all_finite(ref));
  double sq = 0;
  for (float v : ref) sq += static_cast<double>(v) * v;
  EXPECT_GT(sq / ref.size(), 1e-4);  // not degenerate
  for (std::array<int32_t, 3> tile : {std::array<int32_t, 3>{1, 2, 5}, {2, 4, 4}, {3, 6, 5}, {2, 3, 2}}) {
    AttentionPlan full;
    full.tile = tile;
    full.windows.assign(2, std::vector<StaWindow>(2, StaWindow{9, 9, 9}));  // wider than any grid
    const auto out = run_tiny(c, Device::cpu(), DType::F32, in, full).to_host_f32();
    EXPECT_LE(nmse(out, ref), 1e-10) << "tile " << tile[0] << "x" << tile[1] << "x" << tile[2];
  }
}

TEST(DitForward, SparseWindowsChangeTheOutput) {
  const DitConfig c = tiny_config();
  const DitInputs in = tiny_inputs(c, 1, 3, 12, 12, Device::cpu(), {7});
  AttentionPlan dense;
  dense.tile = {1, 2, 2};
  AttentionPlan sta = dense;
  sta.windows.assign(2, std::vector<StaWindow>{{1, 1, 1}, {3, 1, 3}});
  const auto a = run_tiny(c, Device::cpu(), DType::F32, in, dense).to_host_f32();
  const auto b = run_tiny(c, Device::cpu(), DType::F32, in, sta).to_host_f32();
  EXPECT_GT(nmse(b, a), 1e-6);
  EXPECT_TRUE(test::all_finite(b));
}

TEST(DitForward, BatchEqualsSeparateRunsWithDifferentTextLengths) {
  const DitConfig c = tiny_config();
  const DitInputs both = tiny_inputs(c, 2, 2, 8, 6, Device::cpu(), {6, 3});
  AttentionPlan plan;
  plan.tile = {1, 2, 2};
  plan.windows.assign(2, std::vector<StaWindow>{{1, 1, 1}, {2, 3, 1}});
  const auto batched = run_tiny(c, Device::cpu(), DType::F32, both, plan).to_host_f32();
  const int64_t per = static_cast<int64_t>(batched.size()) / 2;
  for (int32_t b = 0; b < 2; ++b) {
    DitInputs one;
    one.latent = both.latent.slice(0, b, b + 1).contiguous();
    one.text_states = both.text_states.slice(0, b, b + 1).contiguous();
    one.pooled = both.pooled.slice(0, b, b + 1).contiguous();
    one.timestep = {both.timestep[b]};
    one.guidance = {both.guidance[b]};
    one.text_len = {both.text_len[b]};
    const auto single = run_tiny(c, Device::cpu(), DType::F32, one, plan).to_host_f32();
    const std::vector<float> part(batched.begin() + b * per, batched.begin() + (b + 1) * per);
    EXPECT_LE(nmse(part, single), 1e-10) << "item " << b;
  }
}

TEST(DitForward, RejectsBadInputs) {
  const DitConfig c = tiny_config();
  HunyuanDit model(c, DitWeights::random(c, 1, Device::cpu(), DType::F32), Device::cpu(), DType::F32);
  DitInputs in = tiny_inputs(c, 1, 2, 8, 4, Device::cpu(), {4});
  AttentionPlan plan;
  plan.tile = {1, 2, 2};
  plan.windows.assign(1, std::vector<StaWindow>(2, StaWindow{1, 1, 1}));  // one layer short
  EXPECT_THROW(model.forward(in, plan), Error);
  plan.windows.assign(2, std::vector<StaWindow>(2, StaWindow{0, 1, 1}));  // window 0
  EXPECT_THROW(model.forward(in, plan), Error);
  plan.windows.clear();
  in.text_len = {5};  // more than the 4 slots
  EXPECT_THROW(model.forward(in, plan), Error);
  in.text_len = {4};
  in.latent = Tensor::randn({1, 4, 2, 7, 8}, 1, DType::F32, Device::cpu());  // 7 not divisible by 2
  EXPECT_THROW(model.forward(in, plan), Error);
}

TEST(DitForward, CudaMatchesCpu) {
  STAVID_REQUIRE_CUDA();
  DitConfig c = tiny_config();
  c.attention_head_dim = 64;  // the CUDA attention kernels take head dims 64 and 128
  c.rope_axes_dim = {16, 24, 24};
  const DitInputs in_cpu = tiny_inputs(c, 1, 2, 32, 9, Device::cpu(), {6});
  DitInputs in_gpu = in_cpu;
  in_gpu.latent = in_cpu.latent.to(Device::cuda(0));
  in_gpu.text_states = in_cpu.text_states.to(Device::cuda(0));
  in_gpu.pooled = in_cpu.pooled.to(Device::cuda(0));
  AttentionPlan plan;
  plan.tile = {1, 8, 8};  // 64 tokens: the CUDA kernel's block
  plan.windows.assign(2, std::vector<StaWindow>{{1, 1, 1}, {1, 3, 3}});
  const auto cpu = run_tiny(c, Device::cpu(), DType::F32, in_cpu, plan).to_host_f32();
  const auto gpu = run_tiny(c, Device::cuda(0), DType::BF16, in_gpu, plan).to_host_f32();
  ASSERT_TRUE(test::all_finite(gpu));
  EXPECT_LE(nmse(gpu, cpu), 1e-3);
}

}  // namespace
}  // namespace stavid::dit

#include "model/dit/calibration.h"
#include "model/dit/sta_strategy.h"

namespace stavid::dit {
namespace {

TEST(DitCalibration, ProbeMeasuresWithoutPerturbing) {
  const DitConfig c = tiny_config();
  HunyuanDit model(c, DitWeights::random(c, 5, Device::cpu(), DType::F32), Device::cpu(), DType::F32);
  const DitInputs in = tiny_inputs(c, 1, 4, 16, 6, Device::cpu(), {5});  // token grid 4 x 8 x 8
  AttentionPlan dense;
  dense.tile = {1, 4, 4};  // tile grid 4 x 2 x 2
  const auto plain = model.forward(in, dense).to_host_f32();

  CalibrationOptions opt;
  opt.tile = dense.tile;
  opt.dense_steps = 0;
  opt.candidates = {{1, 1, 1}, {4, 2, 2}, {3, 1, 1}};  // sparse, the full grid, sparse
  StaCalibration calib(c, opt, 1);
  AttentionProbe probe;
  probe.candidates = opt.candidates;
  model.set_probe(&probe);
  const auto probed = model.forward(in, dense).to_host_f32();
  calib.accumulate(0, model, probe);
  model.set_probe(nullptr);
  EXPECT_EQ(probed, plain);  // the full output propagates: the search changes nothing

  for (int l = 0; l < c.total_layers(); ++l)
    for (int h = 0; h < c.num_attention_heads; ++h) {
      EXPECT_EQ(calib.mse(0, l, 1, h), 0.0) << "full-grid candidate, layer " << l << " head " << h;
      EXPECT_GT(calib.mse(0, l, 0, h), 0.0);
      EXPECT_GT(calib.mse(0, l, 0, h), calib.mse(0, l, 2, h)) << "a 3-frame window is closer than 1";
      EXPECT_EQ(calib.choice(0, l, h), 1);
    }
  // Averaging: the same prompt twice gives the same mean error.
  const double once = calib.mse(0, 0, 0, 0);
  model.set_probe(&probe);
  model.forward(in, dense);
  calib.accumulate(0, model, probe);
  model.set_probe(nullptr);
  EXPECT_NEAR(calib.mse(0, 0, 0, 0), once, 1e-12 * std::max(1.0, once));
  // The written strategy validates against the model and picks the full grid everywhere.
  const nlohmann::json j = calib.strategy_json({4, 8, 8});
  EXPECT_EQ(j.size(), static_cast<size_t>(c.total_layers() * c.num_attention_heads));
  const StaStrategy s = StaStrategy::from_json(j, c, opt.tile, {4, 8, 8});
  EXPECT_NEAR(s.kept_fraction(c, {4, 8, 8}, 1), 1.0, 1e-12);
}

TEST(DitCalibration, DenseStepsAreNotSearched) {
  const DitConfig c = tiny_config();
  CalibrationOptions opt;
  opt.tile = {1, 4, 4};
  opt.dense_steps = 2;
  opt.candidates = {{1, 1, 1}};
  StaCalibration calib(c, opt, 3);
  EXPECT_FALSE(calib.searches(0));
  EXPECT_FALSE(calib.searches(1));
  EXPECT_TRUE(calib.searches(2));
  const nlohmann::json j = calib.strategy_json({4, 8, 8});
  EXPECT_EQ(j["0_0_0"], nlohmann::json({4, 2, 2}));  // dense step: the full grid
  EXPECT_EQ(j.size(), static_cast<size_t>(3 * c.total_layers() * c.num_attention_heads));
}

}  // namespace
}  // namespace stavid::dit
