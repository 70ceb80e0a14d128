// The text encoders (model/text/llama, clip) against the PyTorch references (tools/reference/text_encoders.py,
// written from the architectures). Goldens from tools/reference/make_text_goldens.py in tests/data/text/:
// llama/ and clip/ (HF config.json + model.safetensors with HF names, tiny random weights exact in bf16) and
// io.safetensors (reference outputs; the token ids in its metadata).
//
// Every row is compared, padding rows included: both sides mask attention as HF does with an attention mask
// (query i sees keys [0, min(i + 1, valid))), so padded rows are defined and equal too. CLIP without valid
// lengths is the pure causal mask (diffusers' call); its padded rows then differ from the masked call's, which
// has its own golden.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "model/runtime/cuda_runtime.h"
#include "model/text/clip.h"
#include "model/text/llama.h"
#include "model/weights/safetensors.h"
#include "model/weights/tensor_io.h"
#include "test_util.h"

namespace stavid::text {
namespace {

using test::nmse;

constexpr double kTight = 1e-8;  // fp32 on both sides
constexpr double kBf16 = 1e-3;   // a bf16 model against the fp32 reference (measured on the CPU: <= 7e-5)

std::string data_dir() {
  return std::string(STAVID_TEST_DATA_DIR) + "/text";
}

class Golden {
 public:
  Golden()
      : io_(Checkpoint::open(data_dir() + "/io.safetensors")),
        inputs_(nlohmann::json::parse(SafetensorsFile::open(data_dir() + "/io.safetensors").metadata().at("inputs"))) {}
  std::vector<float> host(const std::string& name) const {
    return load_tensor(io_, io_.at(name), Device::cpu(), DType::F32).to_host_f32();
  }
  Shape shape(const std::string& name) const {
    const auto& s = io_.at(name).shape;
    return Shape(s.begin(), s.end());
  }
  TokenBatch batch(const std::string& model, bool with_valid = true) const {
    TokenBatch b;
    b.ids = inputs_.at(model + "_ids").get<std::vector<std::vector<int32_t>>>();
    if (with_valid) b.valid = inputs_.at(model + "_valid").get<std::vector<int32_t>>();
    return b;
  }
  const nlohmann::json& inputs() const { return inputs_; }

 private:
  Checkpoint io_;
  nlohmann::json inputs_;
};

LlamaModel llama(Device dev, DType dt, LlamaLoadOptions opts = {}) {
  return LlamaModel::load(data_dir() + "/llama", dev, dt, opts);
}
ClipTextModel clip(Device dev, DType dt) {
  return ClipTextModel::load(data_dir() + "/clip", dev, dt);
}

// Rows [0, n) of item b of a [B, L, D] host tensor.
std::vector<float> rows(const std::vector<float>& x, const Shape& s, int64_t b, int64_t n) {
  const int64_t l = s[1], d = s[2];
  return std::vector<float>(x.begin() + b * l * d, x.begin() + (b * l + n) * d);
}

// The checkpoint's tensors as fp32 host tensors, in file order.
std::vector<std::pair<std::string, Tensor>> read_all(const std::string& path) {
  const Checkpoint ck = Checkpoint::open(path);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& n : ck.names()) out.emplace_back(n, load_tensor(ck, ck.at(n), Device::cpu(), DType::F32));
  return out;
}

std::string temp_dir(const std::string& name) {
  const std::string d = testing::TempDir() + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// ---------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------

TEST(TextConfig, ReleasedParameterCounts) {
  // LLaVA-Llama-3-8B's LlamaModel (no lm_head): Llama-3-8B's 8,030,261,248 - 128256 * 4096 (its head)
  // + 64 * 4096 (the 64 extra vocabulary rows).
  EXPECT_EQ(LlamaConfig().parameter_count(), 7505186816LL);
  EXPECT_EQ(ClipTextConfig().parameter_count(), 123060480LL);  // CLIP ViT-L/14 text tower
}

TEST(TextConfig, ReadsTheHfConfigs) {
  const LlamaConfig l = LlamaConfig::from_file(data_dir() + "/llama/config.json");
  EXPECT_EQ(l.hidden_size, 64);
  EXPECT_EQ(l.num_attention_heads, 4);
  EXPECT_EQ(l.num_key_value_heads, 2);
  EXPECT_EQ(l.head_dim, 16);
  EXPECT_EQ(l.num_hidden_layers, 4);
  EXPECT_DOUBLE_EQ(l.rope_theta, 500000.0);
  EXPECT_FLOAT_EQ(l.rms_norm_eps, 1e-5f);
  const ClipTextConfig c = ClipTextConfig::from_file(data_dir() + "/clip/config.json");
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.max_position_embeddings, 77);

  // The released encoders' configs, as HF writes them (CLIP nested in a CLIPConfig).
  const LlamaConfig big = LlamaConfig::from_json(nlohmann::json::parse(R"({
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
      "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128320,
      "max_position_embeddings": 8192, "hidden_act": "silu", "rope_scaling": null, "attention_bias": false})"));
  EXPECT_EQ(big.parameter_count(), 7505186816LL);
  const ClipTextConfig clip_l = ClipTextConfig::from_json(nlohmann::json::parse(R"({"model_type": "clip",
      "text_config": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
      "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "eos_token_id": 2}})"));
  EXPECT_EQ(clip_l.parameter_count(), 123060480LL);
  EXPECT_EQ(clip_l.eos_token_id, 2);
  // HF defaults for absent optional fields.
  const LlamaConfig minimal = LlamaConfig::from_json(nlohmann::json::parse(
      R"({"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
          "vocab_size": 10})"));
  EXPECT_EQ(minimal.num_key_value_heads, 4);
  EXPECT_EQ(minimal.head_dim, 16);
  EXPECT_DOUBLE_EQ(minimal.rope_theta, 10000.0);
}

TEST(TextConfig, BadConfigsFailClearly) {
  const std::string base = R"("hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "vocab_size": 10)";
  auto llama_err = [&](const std::string& extra) {
    return error_of([&] { LlamaConfig::from_json(nlohmann::json::parse("{" + base + extra + "}")); });
  };
  EXPECT_NE(llama_err("").find("num_attention_heads"), std::string::npos);  // required field missing
  EXPECT_NE(llama_err(R"(, "num_attention_heads": 4, "num_key_value_heads": 3)").find("num_key_value_heads"),
            std::string::npos);
  EXPECT_NE(llama_err(R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})")
                .find("rope_scaling"),
            std::string::npos);
  EXPECT_NE(llama_err(R"(, "num_attention_heads": 4, "hidden_act": "gelu")").find("hidden_act"), std::string::npos);
  EXPECT_NE(llama_err(R"(, "num_attention_heads": "four")").find("Llama config"), std::string::npos);
  try {
    LlamaConfig::from_file(data_dir() + "/no_such_dir/config.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::NotFound);
  }
  const std::string dir = temp_dir("text_bad_json");
  std::FILE* f = std::fopen((dir + "/config.json").c_str(), "w");
  std::fputs("{\"hidden_size\": 64,", f);
  std::fclose(f);
  try {
    ClipTextConfig::from_file(dir + "/config.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::DataLoss);
    EXPECT_NE(e.message().find(dir), std::string::npos);
  }
  const std::string clip_err = error_of([] {
    ClipTextConfig::from_json(nlohmann::json::parse(R"({"vocab_size": 10, "hidden_size": 30, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 4})"));
  });
  EXPECT_NE(clip_err.find("num_attention_heads"), std::string::npos);
}

TEST(TextConfig, TokenBatchValidation) {
  auto err = [](TokenBatch b) { return error_of([&] { b.validate(300, 77, "CLIP"); }); };
  EXPECT_NE(err({{{1, 2}, {3}}, {}}).find("row 1"), std::string::npos);
  EXPECT_NE(err({{{1, 300}}, {}}).find("token id 300"), std::string::npos);
  EXPECT_NE(err({{{1, -1}}, {}}).find("token id -1"), std::string::npos);
  EXPECT_NE(err({{{1, 2}}, {3}}).find("valid length 3"), std::string::npos);
  EXPECT_NE(err({{{1, 2}}, {0}}).find("valid length 0"), std::string::npos);
  EXPECT_NE(err({{{1, 2}, {1, 2}}, {2}}).find("valid lengths"), std::string::npos);
  EXPECT_NE(err({{std::vector<int32_t>(78, 1)}, {}}).find("sequence length 78"), std::string::npos);
  EXPECT_NE(err({}).find("empty"), std::string::npos);
  EXPECT_EQ(err({{{1, 2}, {3, 4}}, {2, 1}}), "");
}

// ---------------------------------------------------------------------------------------------------
// Llama
// ---------------------------------------------------------------------------------------------------

TEST(LlamaGolden, EveryHiddenStateOnCpu) {
  const Golden g;
  const LlamaModel m = llama(Device::cpu(), DType::F32);
  const TokenBatch batch = g.batch("llama");
  const int32_t n = m.config().num_hidden_layers;
  for (int32_t i = 0; i <= n; ++i) {
    const Tensor h = m.hidden_states(batch, i);
    ASSERT_EQ(h.shape(), g.shape("llama_hidden_" + std::to_string(i)));
    const auto out = h.to_host_f32();
    ASSERT_TRUE(test::all_finite(out));
    EXPECT_LE(nmse(out, g.host("llama_hidden_" + std::to_string(i))), kTight) << "after " << i << " layers";
  }
  EXPECT_LE(nmse(m.hidden_states(batch, n, /*final_norm=*/true).to_host_f32(), g.host("llama_last_hidden_state")),
            kTight);
}

TEST(LlamaGolden, HiddenStateMinus3RunsOnlyTheLayersItNeeds) {
  const Golden g;
  const TokenBatch batch = g.batch("llama");
  // HunyuanVideo's hidden_states[-3]: the state after num_layers - 2 layers, no final norm.
  const LlamaModel full = llama(Device::cpu(), DType::F32);
  const int32_t n = full.config().num_hidden_layers - 2;
  const auto want = g.host("llama_hidden_" + std::to_string(n));
  EXPECT_LE(nmse(full.hidden_states(batch, n).to_host_f32(), want), kTight);
  // A model holding only those layers (and no final norm) computes the same and cannot run more.
  LlamaLoadOptions opts;
  opts.num_layers = n;
  opts.final_norm = false;
  const LlamaModel cut = llama(Device::cpu(), DType::F32, opts);
  EXPECT_EQ(cut.loaded_layers(), n);
  EXPECT_LE(nmse(cut.hidden_states(batch, n).to_host_f32(), want), kTight);
  EXPECT_THROW(cut.hidden_states(batch, n + 1), Error);
  EXPECT_THROW(cut.hidden_states(batch, n, /*final_norm=*/true), Error);
}

TEST(LlamaGolden, QueryBlocksPaddingAndBatchingDoNotChangeValidRows) {
  const Golden g;
  LlamaModel m = llama(Device::cpu(), DType::F32);
  const TokenBatch batch = g.batch("llama");
  const Shape s = g.shape("llama_hidden_4");
  const auto want = g.host("llama_hidden_4");
  // Score buffers of 1 and of 5 query rows (4 heads x 24 keys x 4 bytes per row).
  for (size_t bytes : {size_t(1), size_t(4 * 24 * 4 * 5)}) {
    m.max_score_bytes = bytes;
    EXPECT_LE(nmse(m.hidden_states(batch, 4).to_host_f32(), want), kTight) << bytes;
  }
  m.max_score_bytes = size_t(256) << 20;
  // Item 1 alone, cut to its valid tokens: its rows are the batch's valid rows (causal: padding is
  // never seen by a valid query).
  const int32_t v1 = batch.valid[1];
  TokenBatch alone;
  alone.ids = {std::vector<int32_t>(batch.ids[1].begin(), batch.ids[1].begin() + v1)};
  EXPECT_LE(nmse(m.hidden_states(alone, 4).to_host_f32(), rows(want, s, 1, v1)), kTight);
  // Without the attention mask (pure causal) the valid rows are unchanged; padding rows move.
  TokenBatch causal = batch;
  causal.valid.clear();
  const auto out = m.hidden_states(causal, 4).to_host_f32();
  EXPECT_LE(nmse(rows(out, s, 1, v1), rows(want, s, 1, v1)), kTight);
  EXPECT_LE(nmse(rows(out, s, 0, s[1]), rows(want, s, 0, s[1])), kTight);  // item 0 has no padding
  EXPECT_GT(test::max_abs_diff(out, want), 1e-2);
}

TEST(LlamaGolden, LoadsAStandaloneLlamaModelCheckpointWithoutThePrefix) {
  const Golden g;
  const std::string dir = temp_dir("text_llama_noprefix");
  std::filesystem::copy_file(data_dir() + "/llama/config.json", dir + "/config.json");
  std::vector<std::pair<std::string, Tensor>> ts;
  for (auto& [name, t] : read_all(data_dir() + "/llama/model.safetensors"))
    ts.emplace_back(name.substr(std::string("model.").size()), t);
  ts.emplace_back("lm_head.weight", Tensor::zeros({300, 64}, DType::F32, Device::cpu()));  // skipped
  save_tensors(dir + "/model.safetensors", ts);
  const LlamaModel m = LlamaModel::load(dir, Device::cpu(), DType::F32);
  EXPECT_LE(nmse(m.hidden_states(g.batch("llama"), 2).to_host_f32(), g.host("llama_hidden_2")), kTight);
}

TEST(LlamaGolden, BadCheckpointReportsEveryProblemTogether) {
  const std::string dir = temp_dir("text_llama_bad");
  std::filesystem::copy_file(data_dir() + "/llama/config.json", dir + "/config.json");
  std::vector<std::pair<std::string, Tensor>> ts;
  for (auto& [name, t] : read_all(data_dir() + "/llama/model.safetensors")) {
    if (name == "model.layers.1.mlp.up_proj.weight") continue;  // missing
    if (name == "model.layers.2.self_attn.k_proj.weight")
      t = Tensor::zeros({64, 64}, DType::F32, Device::cpu());  // GQA: [32, 64]
    ts.emplace_back(name, t);
  }
  ts.emplace_back("model.layers.0.self_attn.q_proj.bias", Tensor::zeros({64}, DType::F32, Device::cpu()));  // unused
  save_tensors(dir + "/model.safetensors", ts);
  try {
    LlamaModel::load(dir, Device::cpu(), DType::F32);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::DataLoss);
    const std::string m = e.message();
    EXPECT_NE(m.find("3 problems"), std::string::npos) << m;
    EXPECT_NE(m.find("missing: model.layers.1.mlp.up_proj.weight [160, 64]"), std::string::npos) << m;
    EXPECT_NE(m.find("shape: model.layers.2.self_attn.k_proj.weight is [64, 64], expected [32, 64]"), std::string::npos)
        << m;
    EXPECT_NE(m.find("unused: model.layers.0.self_attn.q_proj.bias"), std::string::npos) << m;
  }
}

TEST(LlamaRandom, RandomWeightsRunOnAnyConfig) {
  LlamaConfig c;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.head_dim = 8;
  c.vocab_size = 50;
  LlamaLoadOptions opts;
  opts.num_layers = 2;
  const LlamaModel m = LlamaModel::random(c, 5, Device::cpu(), DType::F32, opts);
  const Tensor h = m.hidden_states(TokenBatch{{{1, 2, 3, 4, 5, 0, 0}}, {5}}, 2);
  EXPECT_EQ(h.shape(), (Shape{1, 7, 48}));
  EXPECT_TRUE(test::all_finite(h.to_host_f32()));
}

// ---------------------------------------------------------------------------------------------------
// CLIP
// ---------------------------------------------------------------------------------------------------

TEST(ClipGolden, LastHiddenStatePooledAndLayersOnCpu) {
  const Golden g;
  const ClipTextModel m = clip(Device::cpu(), DType::F32);
  const TokenBatch plain = g.batch("clip", /*with_valid=*/false);
  EXPECT_LE(nmse(m.encoder_states(plain, 1).to_host_f32(), g.host("clip_layer_0")), kTight);
  const ClipTextOutput out = m.forward(plain);
  EXPECT_EQ(out.last_hidden_state.shape(), (Shape{2, 77, 32}));
  EXPECT_EQ(out.pooled.shape(), (Shape{2, 32}));
  EXPECT_LE(nmse(out.last_hidden_state.to_host_f32(), g.host("clip_last_hidden_state")), kTight);
  EXPECT_LE(nmse(out.pooled.to_host_f32(), g.host("clip_pooled")), kTight);
  // With the attention mask (the original HunyuanVideo's call): padding rows change, the pooled output does not.
  const ClipTextOutput masked = m.forward(g.batch("clip"));
  EXPECT_LE(nmse(masked.last_hidden_state.to_host_f32(), g.host("clip_last_hidden_state_masked")), kTight);
  EXPECT_LE(nmse(masked.pooled.to_host_f32(), g.host("clip_pooled")), kTight);
}

TEST(ClipGolden, PoolingRules) {
  const Golden g;
  const TokenBatch batch = g.batch("clip", false);
  const auto want_pos = g.inputs().at("clip_pool_positions").get<std::vector<int64_t>>();
  ClipTextModel m = clip(Device::cpu(), DType::F32);
  // eos_token_id 2 (legacy): the first maximum id, the EOS (299), not the EOS padding after it.
  for (size_t b = 0; b < 2; ++b) EXPECT_EQ(m.config().pool_position(batch.ids[b]), want_pos[b]);
  // The first-eos rule with the real EOS id finds the same positions.
  ClipTextConfig c = m.config();
  c.eos_token_id = 299;
  for (size_t b = 0; b < 2; ++b) EXPECT_EQ(c.pool_position(batch.ids[b]), want_pos[b]);
  // With another id, the first position holding it; position 0 when absent (HF's argmax of zeros).
  c.eos_token_id = batch.ids[0][3];
  const auto first = std::find(batch.ids[0].begin(), batch.ids[0].end(), batch.ids[0][3]) - batch.ids[0].begin();
  EXPECT_EQ(c.pool_position(batch.ids[0]), first);
  c.eos_token_id = 297;
  EXPECT_EQ(c.pool_position({5, 6, 7}), 0);
  c.eos_token_id = 2;
  EXPECT_EQ(c.pool_position({5, 9, 7, 9}), 1);
}

TEST(ClipGolden, BadCheckpointReportsEveryProblemTogether) {
  const std::string dir = temp_dir("text_clip_bad");
  std::filesystem::copy_file(data_dir() + "/clip/config.json", dir + "/config.json");
  std::vector<std::pair<std::string, Tensor>> ts;
  for (auto& [name, t] : read_all(data_dir() + "/clip/model.safetensors")) {
    if (name == "text_model.encoder.layers.0.self_attn.k_proj.bias") continue;
    if (name == "text_model.final_layer_norm.weight") t = Tensor::zeros({31}, DType::F32, Device::cpu());
    ts.emplace_back(name, t);
  }
  // Keys of a full CLIPModel that the text tower skips.
  ts.emplace_back("text_projection.weight", Tensor::zeros({32, 32}, DType::F32, Device::cpu()));
  ts.emplace_back("logit_scale", Tensor::zeros({1}, DType::F32, Device::cpu()));
  save_tensors(dir + "/model.safetensors", ts);
  try {
    ClipTextModel::load(dir, Device::cpu(), DType::F32);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::DataLoss);
    const std::string m = e.message();
    EXPECT_NE(m.find("2 problems"), std::string::npos) << m;
    EXPECT_NE(m.find("missing: text_model.encoder.layers.0.self_attn.k_proj.bias [32]"), std::string::npos) << m;
    EXPECT_NE(m.find("shape: text_model.final_layer_norm.weight is [31], expected [32]"), std::string::npos) << m;
  }
}

// ---------------------------------------------------------------------------------------------------
// bf16 (the serving dtype) on the CPU, and CUDA in bf16 and fp32: the same goldens.
// ---------------------------------------------------------------------------------------------------

void check_llama(Device dev, DType dt, double tol) {
  const Golden g;
  const TokenBatch batch = g.batch("llama");
  LlamaModel m = llama(dev, dt);
  for (int32_t n : {2, 4}) {
    const Tensor h = m.hidden_states(batch, n);
    EXPECT_EQ(h.device(), dev);
    EXPECT_EQ(h.dtype(), dt);
    const auto out = h.to_host_f32();
    ASSERT_TRUE(test::all_finite(out));
    EXPECT_LE(nmse(out, g.host("llama_hidden_" + std::to_string(n))), tol) << dtype_name(dt) << " " << n;
  }
  EXPECT_LE(nmse(m.hidden_states(batch, 4, true).to_host_f32(), g.host("llama_last_hidden_state")), tol)
      << dtype_name(dt);
  m.max_score_bytes = 4 * 24 * 4 * 5;  // query blocks of 5 rows
  EXPECT_LE(nmse(m.hidden_states(batch, 2).to_host_f32(), g.host("llama_hidden_2")), tol) << dtype_name(dt);
}

void check_clip(Device dev, DType dt, double tol) {
  const Golden g;
  const ClipTextModel m = clip(dev, dt);
  const ClipTextOutput out = m.forward(g.batch("clip", false));
  EXPECT_EQ(out.pooled.device(), dev);
  const auto last = out.last_hidden_state.to_host_f32();
  ASSERT_TRUE(test::all_finite(last));
  EXPECT_LE(nmse(last, g.host("clip_last_hidden_state")), tol) << dtype_name(dt);
  EXPECT_LE(nmse(out.pooled.to_host_f32(), g.host("clip_pooled")), tol) << dtype_name(dt);
  const ClipTextOutput masked = m.forward(g.batch("clip"));
  EXPECT_LE(nmse(masked.last_hidden_state.to_host_f32(), g.host("clip_last_hidden_state_masked")), tol)
      << dtype_name(dt);
}

TEST(TextBf16, CpuMatchesTheGoldens) {
  check_llama(Device::cpu(), DType::BF16, kBf16);
  check_clip(Device::cpu(), DType::BF16, kBf16);
}

TEST(TextCuda, LlamaMatchesTheGoldens) {
  STAVID_REQUIRE_CUDA();
  check_llama(Device::cuda(0), DType::BF16, kBf16);
  check_llama(Device::cuda(0), DType::F32, 1e-6);
}

TEST(TextCuda, ClipMatchesTheGoldens) {
  STAVID_REQUIRE_CUDA();
  check_clip(Device::cuda(0), DType::BF16, kBf16);
  check_clip(Device::cuda(0), DType::F32, 1e-6);
}

}  // namespace
}  // namespace stavid::text
