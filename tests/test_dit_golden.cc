// Parity of the C++ DiT with the PyTorch reference (tools/reference/hunyuan_dit.py, written from the
// spec). Goldens come from tools/reference/make_dit_goldens.py into tests/data/dit/<config>/:
// config.json, transformer.safetensors (diffusers names) and io.safetensors (inputs, intermediate
// and final outputs, scalars in the metadata). Image tokens are compared in raster order: with a
// (1, 1, 1) tile the compact tiled order is the raster order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "model/dit/dit.h"
#include "model/dit/sta_strategy.h"
#include "model/dit/teacache.h"
#include "model/runtime/cuda_runtime.h"
#include "model/sampler/flow_match.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"
#include "test_util.h"

namespace stavid::dit {
namespace {

using test::nmse;

// fp32 on both sides, different summation orders: NMSE at the 1e-10 level. kTight leaves room for
// that and still catches any real difference (which shows as 1e-4 and up).
constexpr double kTight = 1e-8;

std::string data_dir(const std::string& config) { return std::string(STAVID_TEST_DATA_DIR) + "/dit/" + config; }

class Golden {
 public:
  explicit Golden(const std::string& config)
      : dir_(data_dir(config)), io_(Checkpoint::open(dir_ + "/io.safetensors")),
        meta_(SafetensorsFile::open(dir_ + "/io.safetensors").metadata()) {}
  bool has(const std::string& name) const { return io_.find(name) != nullptr; }
  Tensor get(const std::string& name, Device dev = Device::cpu()) const {
    return load_tensor(io_, io_.at(name), dev, DType::F32);
  }
  std::vector<float> host(const std::string& name) const { return get(name).to_host_f32(); }
  nlohmann::json meta(const std::string& key) const {
    auto it = meta_.find(key);
    if (it == meta_.end()) return nlohmann::json();
    return nlohmann::json::parse(it->second);
  }
  HunyuanDit model(Device dev, DType dt) const {
    const DitConfig c = DitConfig::from_file(dir_ + "/config.json");
    const Checkpoint w = Checkpoint::open(dir_ + "/transformer.safetensors");
    return HunyuanDit(c, DitWeights::load(c, w, dev, dt), dev, dt);
  }
  // The forward's inputs from the file (batch item text lengths from the mask).
  DitInputs inputs(Device dev, const std::string& text = "text", const std::string& mask = "text_mask",
                   const std::string& pooled = "pooled") const {
    DitInputs in;
    in.latent = get("x", dev);
    in.text_states = get(text, dev);
    in.pooled = get(pooled, dev);
    in.timestep = host("timestep");
    in.guidance = host("guidance");
    const auto m = host(mask);
    const int64_t b = in.text_states.size(0), l = in.text_states.size(1);
    for (int64_t i = 0; i < b; ++i) {
      int32_t n = 0;
      for (int64_t j = 0; j < l; ++j) n += m[i * l + j] > 0.5f;
      in.text_len.push_back(n);
    }
    return in;
  }

 private:
  std::string dir_;
  Checkpoint io_;
  std::map<std::string, std::string> meta_;
};

// Rows [r0, r1) of every batch item of a [B, R, D] host tensor.
std::vector<float> rows(const std::vector<float>& v, int64_t b, int64_t r, int64_t d, int64_t r0, int64_t r1) {
  std::vector<float> out;
  for (int64_t i = 0; i < b; ++i) out.insert(out.end(), v.begin() + (i * r + r0) * d, v.begin() + (i * r + r1) * d);
  return out;
}

AttentionPlan raster_dense() {
  AttentionPlan p;
  p.tile = {1, 1, 1};
  return p;
}

TEST(DitGolden, TinyPiecesMatchTheReference) {
  const Golden g("tiny");
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const DitInputs in = g.inputs(Device::cpu());
  const int64_t d = model.config().hidden(), b = in.latent.size(0), l = in.text_states.size(1);
  const int32_t valid = in.text_len[0];

  const auto sin = timestep_sinusoid(in.timestep[0]);
  // cos/sin of arguments up to ~900 rad: one fp32 ulp of the argument is 6e-5 there.
  EXPECT_LE(test::max_abs_diff(sin, g.host("t_sinusoid")), 1e-4);

  HunyuanDit::State s = model.embed(in, raster_dense());
  const int64_t n = s.layout->n_img;
  EXPECT_LE(nmse(s.layout->rope_cos.to_host_f32(), g.host("rope_cos")), 1e-12);
  EXPECT_LE(nmse(s.layout->rope_sin.to_host_f32(), g.host("rope_sin")), 1e-12);
  EXPECT_LE(nmse(s.vec.to_host_f32(), g.host("vec")), kTight);
  EXPECT_LE(nmse(s.img.to_host_f32(), g.host("dual0_in_img")), kTight);
  EXPECT_LE(nmse(rows(s.txt.to_host_f32(), b, l, d, 0, valid), rows(g.host("txt_refined"), b, l, d, 0, valid)), kTight);

  model.dual_block(s, 0);
  EXPECT_LE(nmse(s.img.to_host_f32(), g.host("dual0_out_img")), kTight);
  EXPECT_LE(nmse(rows(s.txt.to_host_f32(), b, l, d, 0, valid), rows(g.host("dual0_out_txt"), b, l, d, 0, valid)), kTight);

  // The single block alone, from the reference's input.
  s.joined = g.get("single0_in");
  model.single_block(s, 0);
  const auto got = s.joined.to_host_f32(), want = g.host("single0_out");
  EXPECT_LE(nmse(rows(got, b, n + l, d, 0, n + valid), rows(want, b, n + l, d, 0, n + valid)), kTight);
}

TEST(DitGolden, TinyForwardDense) {
  const Golden g("tiny");
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const Tensor out = model.forward(g.inputs(Device::cpu()), raster_dense());
  EXPECT_LE(nmse(out.to_host_f32(), g.host("dense_out")), 1e-5);
  EXPECT_LE(nmse(out.to_host_f32(), g.host("dense_out")), kTight);  // fp32 on both sides: far below the bar
}

TEST(DitGolden, TinySamplerThreeSteps) {
  const Golden g("tiny");
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const auto info = g.meta("sampler");
  const int steps = info["num_steps"].get<int>();
  const auto sig = sampler::flow_sigmas(steps, info["shift"].get<float>());
  EXPECT_LE(test::max_abs_diff(sig, g.host("sampler_sigmas")), 1e-7);
  DitInputs in = g.inputs(Device::cpu());
  const auto want = g.host("sampler_latents");
  const int64_t per = static_cast<int64_t>(want.size()) / steps;
  sampler::sample_euler(g.get("noise"), sig, [&](const Tensor& x, const sampler::StepInfo& st) {
    in.latent = x;
    in.timestep = {sampler::timestep_of(st.sigma)};
    return model.forward(in, raster_dense());
  }, [&](const Tensor& x, const sampler::StepInfo& st) {
    const std::vector<float> ref(want.begin() + st.step * per, want.begin() + (st.step + 1) * per);
    EXPECT_LE(nmse(x.to_host_f32(), ref), kTight) << "step " << st.step;
    return true;
  });
}

TEST(DitGolden, TinyTrueCfg) {
  const Golden g("tiny");
  if (!g.has("cfg_latents")) GTEST_SKIP() << "no CFG golden";
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const auto info = g.meta("true_cfg");
  const int steps = info["num_steps"].get<int>();
  const float scale = info["true_cfg_scale"].get<float>();
  const auto sig = sampler::flow_sigmas(steps, info["shift"].get<float>());
  DitInputs cond = g.inputs(Device::cpu());
  DitInputs uncond = g.inputs(Device::cpu(), "cfg_neg_text", "cfg_neg_text_mask", "cfg_neg_pooled");
  const auto want = g.host("cfg_latents");
  const int64_t per = static_cast<int64_t>(want.size()) / steps;
  sampler::sample_euler(g.get("noise"), sig, [&](const Tensor& x, const sampler::StepInfo& st) {
    cond.latent = uncond.latent = x;
    cond.timestep = uncond.timestep = {sampler::timestep_of(st.sigma)};
    return sampler::cfg_combine(model.forward(cond, raster_dense()), model.forward(uncond, raster_dense()), scale);
  }, [&](const Tensor& x, const sampler::StepInfo& st) {
    const std::vector<float> ref(want.begin() + st.step * per, want.begin() + (st.step + 1) * per);
    EXPECT_LE(nmse(x.to_host_f32(), ref), kTight) << "step " << st.step;
    return true;
  });
}

}  // namespace
}  // namespace stavid::dit

namespace stavid::dit {
namespace {

// Per-layer windows from a {"<layer>_<head>": [wt, wh, ww]} (or "<step>_<layer>_<head>") metadata
// object, straight into a plan (no strategy validation: the goldens include windows wider than the
// grid on purpose).
AttentionPlan plan_from(const nlohmann::json& windows, const nlohmann::json& tile, const DitConfig& c, int step = -1) {
  AttentionPlan p;
  p.tile = {tile[0].get<int32_t>(), tile[1].get<int32_t>(), tile[2].get<int32_t>()};
  p.windows.assign(c.total_layers(), std::vector<StaWindow>(c.num_attention_heads));
  int found = 0;
  for (const auto& [key, v] : windows.items()) {
    int a = 0, b = 0, h = 0;
    int layer, head;
    if (step < 0) {
      if (std::sscanf(key.c_str(), "%d_%d", &a, &b) != 2) continue;
      layer = a;
      head = b;
    } else {
      if (std::sscanf(key.c_str(), "%d_%d_%d", &a, &b, &h) != 3 || a != step) continue;
      layer = b;
      head = h;
    }
    p.windows[layer][head] = StaWindow{v[0].get<int32_t>(), v[1].get<int32_t>(), v[2].get<int32_t>()};
    ++found;
  }
  EXPECT_EQ(found, c.total_layers() * c.num_attention_heads);
  return p;
}

TEST(DitGolden, SmallForwardDenseAndSta) {
  const Golden g("small");
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const DitInputs in = g.inputs(Device::cpu());
  EXPECT_LE(nmse(model.forward(in, raster_dense()).to_host_f32(), g.host("dense_out")), 1e-5);
  const auto sta = g.meta("sta");
  for (const char* name : {"sta_out", "sta_mixed_out", "sta_pad_out"}) {
    const auto& m = sta[name];
    const auto out = model.forward(in, plan_from(m["windows"], m["tile"], model.config())).to_host_f32();
    EXPECT_LE(nmse(out, g.host(name)), 1e-5) << name;
    EXPECT_LE(nmse(out, g.host(name)), kTight) << name;
  }
}

TEST(DitGolden, SmallStaSamplerWithPerStepWindows) {
  const Golden g("small");
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const auto info = g.meta("sta_sampler");
  const int steps = info["num_steps"].get<int>();
  const auto sig = sampler::flow_sigmas(steps, info["shift"].get<float>());
  DitInputs in = g.inputs(Device::cpu());
  const Tensor out = sampler::sample_euler(g.get("noise"), sig, [&](const Tensor& x, const sampler::StepInfo& st) {
    in.latent = x;
    in.timestep = {sampler::timestep_of(st.sigma)};
    return model.forward(in, plan_from(info["windows"], info["tile"], model.config(), st.step));
  });
  EXPECT_LE(nmse(out.to_host_f32(), g.host("sta_sampler_latents")), kTight);
}

TEST(DitGolden, SmallTeaCacheDecisionsAndLatents) {
  const Golden g("small");
  HunyuanDit model = g.model(Device::cpu(), DType::F32);
  const auto info = g.meta("teacache");
  const int steps = info["num_steps"].get<int>();
  const auto sig = sampler::flow_sigmas(steps, info["shift"].get<float>());
  EXPECT_LE(test::max_abs_diff(sig, g.host("teacache_sigmas")), 1e-7);
  for (const auto& run : info["runs"]) {
    TeaCacheOptions opt;
    opt.threshold = run["thresh"].get<float>();
    TeaCache cache(opt, steps);
    DitInputs in = g.inputs(Device::cpu());
    std::vector<float> decisions;
    const Tensor out = sampler::sample_euler(g.get("noise"), sig, [&](const Tensor& x, const sampler::StepInfo& st) {
      in.latent = x;
      in.timestep = {sampler::timestep_of(st.sigma)};
      HunyuanDit::State s = model.embed(in, raster_dense());
      decisions.push_back(cache.run_blocks(model, s) ? 1.f : 0.f);
      return model.final_layer(s, s.img);
    });
    const std::string tag = "thresh " + std::to_string(opt.threshold);
    EXPECT_EQ(decisions, g.host(run["decisions_tensor"].get<std::string>())) << tag;
    EXPECT_LE(nmse(out.to_host_f32(), g.host(run["latents"].get<std::string>())), kTight) << tag;
    EXPECT_EQ(cache.skipped(), static_cast<int>(std::count(decisions.begin(), decisions.end(), 0.f)));
    if (run.contains("acc")) {
      for (int i = 0; i < steps; ++i) {
        EXPECT_NEAR(cache.acc_history()[i], run["acc"][i].get<double>(), 1e-4) << tag << " step " << i;
        if (!run["rel"][i].is_null()) {
          EXPECT_NEAR(cache.rel_history()[i], run["rel"][i].get<double>(), 1e-5) << i;
        }
      }
    }
  }
}

TEST(DitGolden, StrategyRejectsWindowsWiderThanTheGrid) {
  const Golden g("small");
  const DitConfig c = DitConfig::from_file(data_dir("small") + "/config.json");
  const auto info = g.meta("sta_sampler");
  // The golden's step-1 table has window [5, 1, 1] on a grid of 4 frames: not a valid strategy.
  try {
    StaStrategy::from_json(info["windows"], c, {1, 8, 8}, {4, 16, 16});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"1_2_1\""), std::string::npos) << e.what();
  }
  nlohmann::json ok;
  for (int l = 0; l < c.total_layers(); ++l)
    for (int h = 0; h < c.num_attention_heads; ++h) ok["3_" + std::to_string(l) + "_" + std::to_string(h)] = {3, 1, 1};
  const StaStrategy s = StaStrategy::from_json(ok, c, {1, 8, 8}, {4, 16, 16});
  EXPECT_TRUE(s.plan(0, c).dense());
  EXPECT_EQ(s.plan(3, c).windows[2][1].t, 3);
  auto missing = ok;
  missing.erase("3_1_0");
  try {
    StaStrategy::from_json(missing, c, {1, 8, 8}, {4, 16, 16});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("3_1_0"), std::string::npos) << e.what();
  }
  auto bad_layer = ok;
  bad_layer["3_9_0"] = {1, 1, 1};
  try {
    StaStrategy::from_json(bad_layer, c, {1, 8, 8}, {4, 16, 16});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"3_9_0\""), std::string::npos) << e.what();
  }
  auto bad_head = ok;
  const std::string head_key = "3_0_" + std::to_string(c.num_attention_heads);
  bad_head[head_key] = {1, 1, 1};
  try {
    StaStrategy::from_json(bad_head, c, {1, 8, 8}, {4, 16, 16});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"" + head_key + "\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("heads"), std::string::npos) << e.what();
  }
}

TEST(DitGolden, SmallBf16CudaForward) {
  STAVID_REQUIRE_CUDA();
  const Golden g("small");
  HunyuanDit model = g.model(Device::cuda(0), DType::BF16);
  const DitInputs in = g.inputs(Device::cuda(0));
  AttentionPlan plan;  // dense through the STA kernel (full windows); tile of 64 tokens for CUDA
  plan.tile = {1, 8, 8};
  const auto out = model.forward(in, plan).to_host_f32();
  ASSERT_TRUE(test::all_finite(out));
  EXPECT_LE(nmse(out, g.host("dense_out_bf16")), 1e-3);
  EXPECT_LE(nmse(out, g.host("dense_out")), 1e-3);
  const auto sta = g.meta("sta");
  for (const char* name : {"sta_out", "sta_mixed_out", "sta_pad_out"}) {
    const auto& m = sta[name];
    if (m["tile"][0].get<int>() * m["tile"][1].get<int>() * m["tile"][2].get<int>() % 64 != 0) continue;
    const auto o = model.forward(in, plan_from(m["windows"], m["tile"], model.config())).to_host_f32();
    EXPECT_LE(nmse(o, g.host(name)), 1e-3) << name;
  }
}

}  // namespace
}  // namespace stavid::dit
