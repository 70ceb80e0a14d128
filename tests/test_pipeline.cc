// The generation pipeline (server/model_pipeline.h) on the CPU with the tiny/small random-weight
// fixtures: the serving config and every config error, normalize() (defaults, and every invalid field
// rejected with InvalidArgument naming it), the memory estimate, and run() through a real Scheduler:
// a decodable MP4 of the requested size, stage/step events in order, previews, cancellation within one
// step, same seed -> same bytes, STA sparsity, TeaCache, true CFG with text encoders, fault injection.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <any>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "kernels/core/error.h"
#include "model/weights/safetensors.h"
#include "server/media/image.h"
#include "server/media/mp4_writer.h"
#include "server/model_config.h"
#include "server/model_pipeline.h"
#include "server/preview.h"
#include "server/scheduler.h"
#include "server/server.h"
#include "stavid/v1/video.grpc.pb.h"
#include "tests/gate.h"

namespace stavid::server {
using stavid::test::Gate;

namespace {

namespace fs = std::filesystem;
namespace pb = stavid::v1;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr auto kWait = std::chrono::milliseconds(60000);
// The fixtures' serving config: "small" (the small random-weight DiT and VAE with STA) and "tiny". The shipped
// deploy/models/demo.json serves the trained demo model instead (ServingConfig.LoadsTheShippedDemoConfig).
const std::string kData = STAVID_TEST_DATA_DIR;
const std::string kConfig = kData + "/serving.json";

// ---- helpers ----

std::string temp_dir(const std::string& name) {
  const fs::path d = fs::path(testing::TempDir()) / ("stavid_pipeline_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// The fixtures' pipeline, loaded once (both models, one CPU worker).
ModelPipeline& demo_pipeline() {
  static ModelPipeline* p = [] {
    PipelineOptions o;
    o.use_cuda = false;
    auto* pipeline = new ModelPipeline(ServingConfig::from_file(kConfig), o);
    pipeline->load();
    return pipeline;
  }();
  return *p;
}

pb::GenerateRequest tiny_request(uint64_t seed = 7) {
  pb::GenerateRequest r;
  r.set_model("tiny");
  r.set_prompt("a red circle moves left");
  r.set_seed(seed);
  r.mutable_output()->set_preset("ultrafast");  // bit-exact bytes (mp4_writer.h)
  return r;
}

// A Scheduler whose runner is the pipeline; keeps each job's JobCompleted.
class Harness {
 public:
  explicit Harness(Pipeline& pipeline) : pipeline_(pipeline), scheduler_(options(pipeline), [this](JobContext& ctx) {
    if (gate_) gate_->wait(kWait);
    const auto& req = std::any_cast<const pb::GenerateRequest&>(ctx.payload());
    pb::JobCompleted c = pipeline_.run(ctx, req);
    std::lock_guard<std::mutex> lk(mu_);
    completed_[ctx.job_id()] = c;
  }) {}

  std::string submit(const pb::GenerateRequest& request) {
    JobSpec spec;
    const pb::GenerateRequest n = pipeline_.normalize(request, RequestLimits{});
    spec.memory_estimate_bytes = pipeline_.memory_estimate(n);
    spec.payload = n;
    return scheduler_.submit(std::move(spec));
  }
  JobSnapshot wait(const std::string& id) {
    auto snap = scheduler_.wait(id, kWait);
    EXPECT_TRUE(snap.has_value());
    EXPECT_TRUE(snap && is_terminal(snap->state)) << "job did not finish";
    return snap.value_or(JobSnapshot{});
  }
  pb::JobCompleted completed(const std::string& id) {
    std::lock_guard<std::mutex> lk(mu_);
    return completed_.at(id);
  }
  // Runs one job to the end and returns its MP4 bytes (empty unless it succeeded).
  Bytes run(const pb::GenerateRequest& request, pb::JobCompleted* done = nullptr) {
    const std::string id = submit(request);
    const JobSnapshot snap = wait(id);
    EXPECT_EQ(snap.state, JobState::Succeeded) << snap.error_message;
    if (snap.state != JobState::Succeeded || !snap.result) return {};
    if (done) *done = completed(id);
    return *snap.result;
  }
  Scheduler& scheduler() { return scheduler_; }
  void set_gate(Gate* gate) { gate_ = gate; }

 private:
  static SchedulerOptions options(const Pipeline& p) {
    SchedulerOptions o;
    o.num_workers = p.num_workers();
    return o;
  }
  Pipeline& pipeline_;
  std::mutex mu_;
  std::map<std::string, pb::JobCompleted> completed_;
  Gate* gate_ = nullptr;
  Scheduler scheduler_;  // last: drained and joined before the members above go
};

// The code and message of the stavid::Error thrown by f (Internal + "no error" when none).
template <typename F>
std::pair<ErrorCode, std::string> error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return {e.code(), e.message()};
  }
  return {ErrorCode::Internal, "no error"};
}

// ---- config ----

// The shipped config: "demo" is the trained demo model (deploy/models/demo-model, docs/demo-model.md) with its
// text encoders, the fixed STA window at its native size and the calibrated strategy; "tiny" the fixtures.
TEST(ServingConfig, LoadsTheShippedDemoConfig) {
  const std::string models = std::string(STAVID_SOURCE_DIR) + "/deploy/models";
  const ServingConfig c = ServingConfig::from_file(models + "/demo.json");
  const ModelConfig* demo = c.find("demo");
  ASSERT_NE(demo, nullptr);
  EXPECT_TRUE(fs::equivalent(demo->dit.dir, models + "/demo-model/transformer"));
  EXPECT_TRUE(fs::equivalent(demo->vae.dir, models + "/demo-model/vae"));
  ASSERT_TRUE(demo->text_encoder.has_value());
  EXPECT_TRUE(fs::equivalent(demo->text_encoder->llama_tokenizer, models + "/demo-model/tokenizer/tokenizer.json"));
  EXPECT_TRUE(fs::is_regular_file(demo->text_encoder->clip_tokenizer));
  EXPECT_TRUE(demo->embeddings.empty());
  EXPECT_EQ(demo->tile, (std::array<int32_t, 3>{2, 4, 8}));
  EXPECT_EQ(demo->default_frames, 33u);
  EXPECT_EQ(demo->default_height, 256u);
  EXPECT_EQ(demo->default_steps, 20u);
  EXPECT_EQ(demo->default_sta.kind(), pb::StaMode::KIND_FIXED);
  EXPECT_EQ(demo->default_sta.window_t(), 3u);
  EXPECT_EQ(demo->default_sta.window_h(), 3u);
  EXPECT_EQ(demo->default_sta.window_w(), 2u);
  EXPECT_EQ(demo->default_sta.dense_steps(), 4u);  // the STA fine-tuned DiT (docs/demo-model.md)
  ASSERT_EQ(demo->strategies.count("calibrated"), 1u);
  EXPECT_TRUE(fs::is_regular_file(demo->strategies.at("calibrated")));
  EXPECT_TRUE(fs::is_regular_file(models + "/demo-model/heldout.json"));
  EXPECT_NE(c.find("tiny"), nullptr);
}

TEST(ServingConfig, LoadsTheFixturesConfigWithPathsRelativeToIt) {
  const ServingConfig c = ServingConfig::from_file(kConfig);
  ASSERT_EQ(c.models.size(), 2u);
  const ModelConfig* demo = c.find("small");
  ASSERT_NE(demo, nullptr);
  EXPECT_TRUE(fs::equivalent(demo->dit.dir, kData + "/dit/small"));
  EXPECT_TRUE(fs::equivalent(demo->vae.weights, kData + "/vae/small/vae.safetensors"));
  EXPECT_TRUE(fs::equivalent(demo->embeddings, kData + "/dit/small/io.safetensors"));
  EXPECT_EQ(demo->tile, (std::array<int32_t, 3>{1, 8, 8}));
  EXPECT_EQ(demo->default_frames, 13u);
  EXPECT_EQ(demo->default_steps, 8u);
  EXPECT_EQ(demo->default_sta.kind(), pb::StaMode::KIND_FIXED);
  EXPECT_EQ(demo->default_sta.window_t(), 3u);
  EXPECT_EQ(demo->default_sta.dense_steps(), 2u);
  EXPECT_EQ(demo->vae_memory_budget_bytes, size_t{512} << 20);
  const ModelConfig* tiny = c.find("tiny");
  ASSERT_NE(tiny, nullptr);
  ASSERT_EQ(tiny->strategies.count("tiny-sta"), 1u);
  EXPECT_TRUE(fs::is_regular_file(tiny->strategies.at("tiny-sta")));
  EXPECT_EQ(c.find("nope"), nullptr);

  PipelineOptions o;
  o.use_cuda = false;
  ModelPipeline p(c, o);
  EXPECT_EQ(p.num_workers(), 1);
  EXPECT_EQ(p.worker_name(0), "cpu");
  EXPECT_TRUE(p.worker_gpus(0).empty());
  const auto infos = p.models();
  ASSERT_EQ(infos.size(), 2u);
  EXPECT_EQ(infos[1].name(), "tiny");
  EXPECT_EQ(infos[1].max_frames(), 17u);
  EXPECT_EQ(infos[1].strategies_size(), 1);
  EXPECT_EQ(infos[1].tile_h(), 2u);
  // Before load(), requests are refused as Unavailable.
  try {
    p.normalize(tiny_request(), RequestLimits{});
    ADD_FAILURE() << "normalize before load";
  } catch (const SubmitError& e) {
    EXPECT_EQ(e.code(), StatusCode::Unavailable);
  }
}

// A valid one-model config (absolute paths) to break one key at a time.
json base_config() {
  return json{{"models", json::array({json{
                             {"name", "tiny"},
                             {"dit", {{"dir", kData + "/dit/tiny"}, {"weights", kData + "/dit/tiny/transformer.safetensors"}}},
                             {"vae", {{"dir", kData + "/vae/tiny"}, {"weights", kData + "/vae/tiny/vae.safetensors"}}},
                             {"embeddings", kData + "/dit/tiny/io.safetensors"},
                             {"tile", {1, 2, 2}},
                         }})}};
}

TEST(ServingConfig, EveryProblemNamesTheFileAndTheKey) {
  const std::string dir = temp_dir("config_errors");
  const std::string path = dir + "/serving.json";
  auto check = [&](const json& j, ErrorCode code, const std::string& key, const std::string& why) {
    write_file(path, j.dump());
    const auto [c, msg] = error_of([&] { ServingConfig::from_file(path); });
    EXPECT_EQ(c, code) << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(key), std::string::npos) << "want key " << key << " in: " << msg;
    EXPECT_NE(msg.find(why), std::string::npos) << "want \"" << why << "\" in: " << msg;
  };
  write_file(path, base_config().dump());
  EXPECT_NO_THROW(ServingConfig::from_file(path));

  // The file itself.
  auto [c1, m1] = error_of([&] { ServingConfig::from_file(dir + "/absent.json"); });
  EXPECT_EQ(c1, ErrorCode::NotFound);
  EXPECT_NE(m1.find("absent.json"), std::string::npos);
  write_file(path, "{\"models\": [");
  auto [c2, m2] = error_of([&] { ServingConfig::from_file(path); });
  EXPECT_EQ(c2, ErrorCode::DataLoss);
  EXPECT_NE(m2.find(path), std::string::npos);

  using E = ErrorCode;
  json j = base_config();
  j["extra"] = 1;
  check(j, E::InvalidArgument, "extra", "unknown key");
  check(json{{"models", json::array()}}, E::InvalidArgument, "models", "non-empty array");
  check(json::object(), E::InvalidArgument, "models", "required");
  check(json::array(), E::InvalidArgument, "top level", "expected an object");

  auto model = [](auto&& edit) {
    json j = base_config();
    edit(j["models"][0]);
    return j;
  };
  check(model([](json& m) { m.erase("name"); }), E::InvalidArgument, "models[0].name", "required");
  check(model([](json& m) { m["name"] = 5; }), E::InvalidArgument, "models[0].name", "expected a string");
  check(model([](json& m) { m["name"] = "bad name!"; }), E::InvalidArgument, "models[0].name", "[A-Za-z0-9._-]");
  check(model([](json& m) { m["colour"] = "red"; }), E::InvalidArgument, "models[0].colour", "unknown key");
  check(model([](json& m) { m["dit"]["dir"] = "nowhere"; }), E::NotFound, "models[0].dit.dir", "does not exist");
  check(model([&](json& m) { m["dit"]["dir"] = kData + "/dit"; }), E::NotFound, "models[0].dit.dir", "no config.json");
  check(model([&](json& m) { m["dit"]["dir"] = kData + "/dit/tiny/config.json"; }), E::NotFound, "models[0].dit.dir",
        "not a directory");
  check(model([&](json& m) { m["vae"]["weights"] = kData + "/vae/tiny"; }), E::NotFound, "models[0].vae.weights",
        "is a directory");
  check(model([](json& m) { m["dit"]["checkpoint"] = "x"; }), E::InvalidArgument, "models[0].dit.checkpoint",
        "unknown key");
  check(model([](json& m) { m["dit"] = "dir"; }), E::InvalidArgument, "models[0].dit", "expected an object");
  check(model([](json& m) { m.erase("embeddings"); }), E::InvalidArgument, "models[0]", "exactly one of");
  check(model([&](json& m) {
          m["text_encoder"] = {{"llama", {{"dir", kData + "/text/llama"}, {"tokenizer", kData + "/tokenizer/small_bpe/tokenizer.json"}}},
                               {"clip", {{"dir", kData + "/text/clip"}, {"tokenizer", kData + "/tokenizer/clip_tiny/tokenizer.json"}}}};
        }),
        E::InvalidArgument, "models[0]", "exactly one of");
  check(model([&](json& m) {
          m.erase("embeddings");
          m["text_encoder"] = {{"llama", {{"dir", kData + "/text/llama"}}}};
        }),
        E::InvalidArgument, "models[0].text_encoder.llama.tokenizer", "required");
  check(model([&](json& m) {
          m.erase("embeddings");
          m["text_encoder"] = {{"llama", {{"dir", kData + "/text/llama"}, {"tokenizer", kData + "/tokenizer/small_bpe/tokenizer.json"}}},
                               {"clip", {{"dir", kData + "/text/clip"}, {"tokenizer", kData + "/tokenizer/clip_tiny/tokenizer.json"}}},
                               {"template", "no placeholder"}};
        }),
        E::InvalidArgument, "models[0].text_encoder.template", "has no");
  check(model([](json& m) { m["tile"] = "x"; }), E::InvalidArgument, "models[0].tile", "expected [t, h, w]");
  check(model([](json& m) { m["tile"] = {1, 0, 2}; }), E::InvalidArgument, "models[0].tile[1]", "out of range");
  check(model([](json& m) { m["tile"] = {1, 2.5, 2}; }), E::InvalidArgument, "models[0].tile[1]", "expected an integer");
  check(model([](json& m) { m["max_frames"] = 16; }), E::InvalidArgument, "models[0].max_frames", "4k + 1");
  check(model([](json& m) { m["max_pixels"] = -1; }), E::InvalidArgument, "models[0].max_pixels", "out of range");
  check(model([](json& m) { m["vae_memory_budget_mib"] = "lots"; }), E::InvalidArgument,
        "models[0].vae_memory_budget_mib", "expected an integer");
  check(model([](json& m) { m["strategies"] = {{"s", "absent.json"}}; }), E::NotFound, "models[0].strategies.s",
        "does not exist");
  check(model([](json& m) { m["strategies"] = {{"s", 3}}; }), E::InvalidArgument, "models[0].strategies.s",
        "expected a string");
  check(model([](json& m) { m["defaults"] = {{"steps", 0}}; }), E::InvalidArgument, "models[0].defaults.steps",
        "out of range");
  check(model([](json& m) { m["defaults"] = {{"guidance", "high"}}; }), E::InvalidArgument,
        "models[0].defaults.guidance", "expected a number");
  check(model([](json& m) { m["defaults"] = {{"seed", 1}}; }), E::InvalidArgument, "models[0].defaults.seed",
        "unknown key");
  check(model([](json& m) { m["defaults"] = {{"sta", {{"kind", "sparse"}}}}; }), E::InvalidArgument,
        "models[0].defaults.sta.kind", "not one of");
  check(model([](json& m) { m["defaults"] = {{"sta", {{"kind", "fixed"}}}}; }), E::InvalidArgument,
        "models[0].defaults.sta.window", "required");
  check(model([](json& m) { m["defaults"] = {{"sta", {{"kind", "strategy"}, {"strategy", "none"}}}}; }),
        E::InvalidArgument, "models[0].defaults.sta.strategy", "not in this model");
  json dup = base_config();
  dup["models"].push_back(dup["models"][0]);
  check(dup, E::InvalidArgument, "models[1].name", "duplicate");
}

TEST(ServingConfig, LoadRejectsModelsThatDoNotFitTogether) {
  const std::string dir = temp_dir("load_errors");
  const std::string path = dir + "/serving.json";
  PipelineOptions o;
  o.use_cuda = false;
  auto load_error = [&](const json& j) {
    write_file(path, j.dump());
    return error_of([&] { ModelPipeline(ServingConfig::from_file(path), o).load(); });
  };
  json j = base_config();
  j["models"][0]["vae"] = {{"dir", kData + "/vae/small"}};  // 16 latent channels, the tiny DiT has 4
  auto [c1, m1] = load_error(j);
  EXPECT_EQ(c1, ErrorCode::InvalidArgument);
  EXPECT_NE(m1.find("model \"tiny\""), std::string::npos) << m1;
  EXPECT_NE(m1.find("latent channels"), std::string::npos) << m1;

  j = base_config();
  j["models"][0]["embeddings"] = kData + "/dit/small/io.safetensors";  // text dim 64, the tiny DiT takes 16
  auto [c2, m2] = load_error(j);
  EXPECT_EQ(c2, ErrorCode::InvalidArgument);
  EXPECT_NE(m2.find("io.safetensors"), std::string::npos) << m2;
  EXPECT_NE(m2.find("\"text\""), std::string::npos) << m2;

  j = base_config();
  write_file(dir + "/bad-strategy.json", R"({"0_0_0": [1, 1, 1], "0_5_0": [1, 1, 1]})");
  j["models"][0]["strategies"] = {{"bad", "bad-strategy.json"}};
  auto [c3, m3] = load_error(j);
  EXPECT_EQ(c3, ErrorCode::InvalidArgument);
  EXPECT_NE(m3.find("strategy \"bad\""), std::string::npos) << m3;
  EXPECT_NE(m3.find("0_5_0"), std::string::npos) << m3;

  j = base_config();
  j["models"][0]["max_frames"] = 5;
  j["models"][0]["defaults"] = {{"frames", 9}, {"height", 32}, {"width", 32}};
  auto [c4, m4] = load_error(j);
  EXPECT_EQ(c4, ErrorCode::InvalidArgument);
  EXPECT_NE(m4.find("defaults"), std::string::npos) << m4;
  EXPECT_NE(m4.find("frames:"), std::string::npos) << m4;

  j = base_config();
  j["models"][0]["dit"]["weights"] = kData + "/vae/tiny/vae.safetensors";  // not DiT weights
  auto [c5, m5] = load_error(j);
  EXPECT_NE(c5, ErrorCode::Internal) << m5;
  EXPECT_NE(m5.find("model \"tiny\""), std::string::npos) << m5;
}

// ---- normalize ----

TEST(Normalize, AppliesTheDefaults) {
  ModelPipeline& p = demo_pipeline();
  pb::GenerateRequest r;
  r.set_model("tiny");
  r.set_prompt("x");
  const pb::GenerateRequest n = p.normalize(r, RequestLimits{});
  EXPECT_EQ(n.frames(), 9u);
  EXPECT_EQ(n.height(), 32u);
  EXPECT_EQ(n.width(), 32u);
  EXPECT_EQ(n.steps(), 4u);
  EXPECT_FLOAT_EQ(n.guidance(), 6.f);
  EXPECT_FLOAT_EQ(n.flow_shift(), 7.f);
  EXPECT_EQ(n.fps(), 8u);
  EXPECT_EQ(n.seed(), 0u);  // run() picks one
  EXPECT_TRUE(n.output().has_crf());
  EXPECT_EQ(n.output().crf(), 18u);
  EXPECT_EQ(n.output().preset(), "medium");
  EXPECT_EQ(n.sta().kind(), pb::StaMode::KIND_DENSE);
  r.set_model("small");
  const pb::GenerateRequest d = p.normalize(r, RequestLimits{});
  EXPECT_EQ(d.sta().kind(), pb::StaMode::KIND_FIXED);
  EXPECT_EQ(d.sta().window_t(), 3u);
  EXPECT_EQ(d.sta().dense_steps(), 2u);
  EXPECT_EQ(d.frames(), 13u);
  // Explicit values stay.
  r.set_model("tiny");
  r.set_steps(3);
  r.set_guidance(2.5f);
  r.mutable_output()->set_crf(0);
  r.mutable_output()->set_preset("ultrafast");
  r.set_seed(99);
  const pb::GenerateRequest e = p.normalize(r, RequestLimits{});
  EXPECT_EQ(e.steps(), 3u);
  EXPECT_FLOAT_EQ(e.guidance(), 2.5f);
  EXPECT_EQ(e.output().crf(), 0u);
  EXPECT_EQ(e.output().preset(), "ultrafast");
  EXPECT_EQ(e.seed(), 99u);
}

TEST(Normalize, RejectsEveryInvalidFieldNamingIt) {
  ModelPipeline& p = demo_pipeline();
  struct Case {
    std::string field;
    std::function<void(pb::GenerateRequest&, RequestLimits&)> edit;
  };
  using R = pb::GenerateRequest;
  using L = RequestLimits;
  using K = pb::StaMode;
  const std::vector<Case> cases = {
      {"model", [](R& r, L&) { r.set_model(""); }},
      {"model", [](R& r, L&) { r.set_model("nope"); }},
      {"prompt", [](R& r, L&) { r.set_prompt(""); }},
      {"prompt", [](R& r, L& l) { l.max_prompt_bytes = 8; r.set_prompt("123456789"); }},
      {"prompt", [](R& r, L&) { r.set_prompt("bad \xff byte"); }},
      {"prompt", [](R& r, L&) { r.set_prompt("surrogate \xed\xa0\x80"); }},
      {"prompt", [](R& r, L&) { r.set_prompt("cut \xe2\x82"); }},
      {"negative_prompt", [](R& r, L&) { r.set_negative_prompt("overlong \xc0\x80"); }},
      {"negative_prompt", [](R& r, L& l) { l.max_prompt_bytes = 30; r.set_negative_prompt(std::string(31, 'n')); }},
      {"frames", [](R& r, L&) { r.set_frames(8); }},
      {"frames", [](R& r, L&) { r.set_frames(21); }},  // the model allows 17
      {"frames", [](R& r, L& l) { l.max_frames = 5; }},  // the default 9 is above the server's limit
      {"height", [](R& r, L&) { r.set_height(24); }},
      {"width", [](R& r, L&) { r.set_width(8); }},
      {"height", [](R& r, L&) { r.set_height(64); r.set_width(128); }},  // 8192 pixels > 4096
      {"height", [](R& r, L& l) { l.max_pixels = 512; }},
      {"width", [](R& r, L& l) { l.max_pixels = uint64_t{1} << 40; r.set_model("small"); r.set_height(16); r.set_width(8208); }},
      {"steps", [](R& r, L&) { r.set_steps(201); }},
      {"steps", [](R& r, L& l) { l.max_steps = 3; }},  // the default 4
      {"guidance", [](R& r, L&) { r.set_guidance(25.f); }},
      {"guidance", [](R& r, L&) { r.set_guidance(0.5f); }},
      {"guidance", [](R& r, L&) { r.set_guidance(-1.f); }},
      {"guidance", [](R& r, L&) { r.set_guidance(std::nanf("")); }},
      {"true_cfg_scale", [](R& r, L&) { r.set_true_cfg_scale(0.5f); }},
      {"true_cfg_scale", [](R& r, L&) { r.set_true_cfg_scale(21.f); }},
      {"true_cfg_scale", [](R& r, L&) { r.set_true_cfg_scale(2.f); }},  // fixed embeddings: no CFG
      {"flow_shift", [](R& r, L&) { r.set_flow_shift(0.5f); }},
      {"flow_shift", [](R& r, L&) { r.set_flow_shift(21.f); }},
      {"fps", [](R& r, L&) { r.set_fps(61); }},
      {"teacache_threshold", [](R& r, L&) { r.set_teacache_threshold(-0.1f); }},
      {"teacache_threshold", [](R& r, L&) { r.set_teacache_threshold(2.f); }},
      {"sta.kind", [](R& r, L&) { r.mutable_sta()->set_window_t(1); }},
      {"sta.kind", [](R& r, L&) { r.mutable_sta()->set_kind(static_cast<K::Kind>(7)); }},
      {"sta.window_t", [](R& r, L&) { r.mutable_sta()->set_kind(K::KIND_FIXED); r.mutable_sta()->set_window_h(1); r.mutable_sta()->set_window_w(1); }},
      {"sta.window_h", [](R& r, L&) {
         r.mutable_sta()->set_kind(K::KIND_FIXED);  // 9 x 32 x 32: a 3 x 2 x 2 tile grid
         r.mutable_sta()->set_window_t(1);
         r.mutable_sta()->set_window_h(3);
         r.mutable_sta()->set_window_w(1);
       }},
      {"sta.window_t", [](R& r, L&) { r.mutable_sta()->set_kind(K::KIND_DENSE); r.mutable_sta()->set_window_t(1); }},
      {"sta.dense_steps", [](R& r, L&) {
         r.mutable_sta()->set_kind(K::KIND_FIXED);
         r.mutable_sta()->set_window_t(1);
         r.mutable_sta()->set_window_h(1);
         r.mutable_sta()->set_window_w(1);
         r.mutable_sta()->set_dense_steps(5);
       }},
      {"sta.strategy", [](R& r, L&) { r.mutable_sta()->set_kind(K::KIND_STRATEGY); r.mutable_sta()->set_strategy("nope"); }},
      {"sta.strategy", [](R& r, L&) {  // tiny-sta has windows of 2 tiles in time; 1 frame has one
         r.set_frames(1);
         r.mutable_sta()->set_kind(K::KIND_STRATEGY);
         r.mutable_sta()->set_strategy("tiny-sta");
       }},
      {"sta.strategy", [](R& r, L&) { r.mutable_sta()->set_kind(K::KIND_DENSE); r.mutable_sta()->set_strategy("tiny-sta"); }},
      {"priority", [](R& r, L&) { r.set_priority(11); }},
      {"priority", [](R& r, L&) { r.set_priority(-11); }},
      {"output.crf", [](R& r, L&) { r.mutable_output()->set_crf(52); }},
      {"output.preset", [](R& r, L&) { r.mutable_output()->set_preset("fastest"); }},
      {"preview_every_steps", [](R& r, L&) { r.set_preview_every_steps(5); }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    pb::GenerateRequest r = tiny_request();
    r.mutable_output()->clear_preset();
    RequestLimits limits;
    cases[i].edit(r, limits);
    try {
      p.normalize(r, limits);
      ADD_FAILURE() << "case " << i << " (" << cases[i].field << ") was accepted";
    } catch (const SubmitError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code(), StatusCode::InvalidArgument) << msg;
      EXPECT_EQ(msg.rfind(cases[i].field + ": ", 0), 0u) << "case " << i << ": " << msg;
      EXPECT_NE(msg.find("allowed"), std::string::npos) << "case " << i << ": " << msg;
    }
  }
  // The edges that are valid.
  pb::GenerateRequest ok = tiny_request();
  ok.set_frames(17);
  ok.set_height(64);
  ok.set_width(64);
  ok.set_steps(200);
  ok.set_priority(-10);
  ok.set_true_cfg_scale(1.f);
  ok.set_preview_every_steps(200);
  ok.mutable_output()->set_crf(51);
  ok.set_prompt("\xe2\x82\xac \xf0\x9f\x8e\xa5");  // euro sign, movie camera
  EXPECT_NO_THROW(p.normalize(ok, RequestLimits{}));
}

// ---- memory estimate ----

TEST(MemoryEstimate, GrowsWithTheJobAndRefusesAnImpossibleVaeBudget) {
  ModelPipeline& p = demo_pipeline();
  const auto estimate = [&](pb::GenerateRequest r) { return p.memory_estimate(p.normalize(r, RequestLimits{})); };
  pb::GenerateRequest small = tiny_request();
  small.set_frames(5);
  pb::GenerateRequest big = tiny_request();
  big.set_frames(17);
  big.set_height(64);
  big.set_width(64);
  const size_t a = estimate(small), b = estimate(big);
  EXPECT_GT(a, 0u);
  EXPECT_GT(b, a);
  pb::GenerateRequest demo = tiny_request();
  demo.set_model("small");
  EXPECT_GT(estimate(demo), b);

  const std::string dir = temp_dir("vae_budget");
  json j = base_config();
  j["models"][0]["vae_memory_budget_mib"] = 1;  // below the VAE's fixed scratch: no plan fits
  write_file(dir + "/serving.json", j.dump());
  PipelineOptions o;
  o.use_cuda = false;
  ModelPipeline tight(ServingConfig::from_file(dir + "/serving.json"), o);
  tight.load();
  pb::GenerateRequest r = tiny_request();
  r.set_frames(9);
  r.set_height(32);
  r.set_width(32);
  EXPECT_EQ(tight.memory_estimate(tight.normalize(r, RequestLimits{})), std::numeric_limits<size_t>::max());
}

// ---- previews ----

TEST(Preview, ProjectionIsFixedAndThePngDecodes) {
  const std::vector<float> m = latent_rgb_matrix(16);
  for (int k = 0; k < 3; ++k) {
    double norm = 0;
    for (int c = 0; c < 16; ++c) norm += m[k * 16 + c] * m[k * 16 + c];
    EXPECT_NEAR(norm, 1.0, 1e-6);
  }
  // Zero latents are mid-gray; a latent along row 0 of the map is redder than it is green or blue.
  std::vector<float> lat(16 * 2 * 3, 0.f);  // [C=16, 1, H=2, W=3]
  for (int c = 0; c < 16; ++c) lat[c * 6 + 5] = 2.f * m[c];
  const pb::PreviewFrame f = make_latent_preview(lat, 16, 1, 2, 3, 4);
  EXPECT_EQ(f.step(), 4u);
  EXPECT_EQ(f.mime_type(), "image/png");
  const media::DecodedImage img =
      media::decode_png(reinterpret_cast<const uint8_t*>(f.data().data()), f.data().size());
  ASSERT_EQ(img.width, 3);
  ASSERT_EQ(img.height, 2);
  EXPECT_EQ(img.rgb24[0], 128);
  EXPECT_EQ(img.rgb24[1], 128);
  EXPECT_EQ(img.rgb24[2], 128);
  EXPECT_EQ(img.rgb24[15], 255);  // 0.5 + 0.25 * 2 = 1
  EXPECT_LT(img.rgb24[16], 128);
  EXPECT_LT(img.rgb24[17], 128);
  EXPECT_THROW(media::decode_png(reinterpret_cast<const uint8_t*>("not a png"), 9), Error);
}

// ---- run ----

struct Recorded {
  std::mutex mu;
  std::vector<JobEvent> events;
  void add(const JobEvent& e) {
    std::lock_guard<std::mutex> lk(mu);
    events.push_back(e);
  }
  std::vector<JobEvent> live() {
    std::lock_guard<std::mutex> lk(mu);
    std::vector<JobEvent> out;
    for (const JobEvent& e : events)
      if (!e.replay) out.push_back(e);
    return out;
  }
};

TEST(Run, ProducesTheRequestedVideoWithStagesStepsAndPreviewsInOrder) {
  ModelPipeline& p = demo_pipeline();
  Harness h(p);
  Gate gate;
  h.set_gate(&gate);
  pb::GenerateRequest r = tiny_request();
  r.set_frames(9);
  r.set_height(32);
  r.set_width(48);
  r.set_steps(4);
  r.set_fps(10);
  r.set_preview_every_steps(2);
  const std::string id = h.submit(r);
  Recorded rec;
  Subscription sub = h.scheduler().subscribe(id, [&](const JobEvent& e) { rec.add(e); });
  gate.open();
  const JobSnapshot snap = h.wait(id);
  ASSERT_EQ(snap.state, JobState::Succeeded) << snap.error_message;
  ASSERT_TRUE(snap.result);

  // The MP4: the requested frames, size and rate.
  const media::DecodedVideo v = media::decode_mp4(*snap.result);
  EXPECT_EQ(v.frames_rgb24.size(), 9u);
  EXPECT_EQ(v.width, 48);
  EXPECT_EQ(v.height, 32);
  EXPECT_NEAR(v.fps, 10.0, 1e-6);
  const pb::JobCompleted done = h.completed(id);
  EXPECT_EQ(done.seed(), 7u);
  EXPECT_EQ(done.frames(), 9u);
  EXPECT_EQ(done.width(), 48u);
  EXPECT_EQ(done.height(), 32u);
  EXPECT_EQ(done.result_bytes(), snap.result->size());
  EXPECT_EQ(done.sta_sparsity(), 0.0);  // dense
  EXPECT_EQ(done.teacache_skipped_steps(), 0u);
  for (double s : {done.text_seconds(), done.denoise_seconds(), done.decode_seconds(), done.encode_seconds()})
    EXPECT_GE(s, 0.0);

  // Events: text, denoise (4 steps, previews after steps 1 and 3), decode, encode, completed.
  std::vector<std::string> seq;
  for (const JobEvent& e : rec.live()) {
    switch (e.kind) {
      case JobEvent::Kind::Stage:
        seq.push_back(e.stage + (e.stage_finished ? " end" : " start"));
        if (e.stage_finished) {
          EXPECT_GE(e.stage_seconds, 0.0);
        }
        break;
      case JobEvent::Kind::Step:
        seq.push_back("step " + std::to_string(e.step_index) + "/" + std::to_string(e.step_total));
        EXPECT_FALSE(e.step_skipped);
        EXPECT_GE(e.step_seconds, 0.0);
        break;
      case JobEvent::Kind::Data: {
        ASSERT_EQ(e.data_name, "preview");
        ASSERT_TRUE(e.bytes);
        pb::PreviewFrame f;
        ASSERT_TRUE(f.ParseFromArray(e.bytes->data(), static_cast<int>(e.bytes->size())));
        seq.push_back("preview " + std::to_string(f.step()));
        EXPECT_EQ(f.mime_type(), "image/png");
        const media::DecodedImage img =
            media::decode_png(reinterpret_cast<const uint8_t*>(f.data().data()), f.data().size());
        EXPECT_EQ(img.width, 6);  // the latent: 48 / 8
        EXPECT_EQ(img.height, 4);
        EXPECT_EQ(f.width(), 6u);
        EXPECT_EQ(f.height(), 4u);
        break;
      }
      case JobEvent::Kind::Completed:
        seq.push_back("completed");
        break;
      default:
        break;
    }
  }
  const std::vector<std::string> want = {"text start",   "text end",     "denoise start", "step 0/4",   "step 1/4",
                                         "preview 1",    "step 2/4",     "step 3/4",      "preview 3",  "denoise end",
                                         "decode start", "decode end",   "encode start",  "encode end", "completed"};
  EXPECT_EQ(seq, want);
}

TEST(Run, SameSeedSameBytesAndSeedZeroPicksAndReportsOne) {
  ModelPipeline& p = demo_pipeline();
  Harness h(p);
  pb::GenerateRequest r = tiny_request(/*seed=*/1234);
  pb::JobCompleted d1, d2;
  const Bytes a = h.run(r, &d1);
  const Bytes b = h.run(r, &d2);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  EXPECT_EQ(d1.seed(), 1234u);
  r.set_seed(1235);
  EXPECT_NE(h.run(r), a);

  r.set_seed(0);
  pb::JobCompleted picked;
  const Bytes c = h.run(r, &picked);
  EXPECT_NE(picked.seed(), 0u);
  pb::JobCompleted again;
  EXPECT_FALSE(h.run(r, &again).empty());
  EXPECT_NE(again.seed(), picked.seed());
  r.set_seed(picked.seed());
  EXPECT_EQ(h.run(r), c);  // the reported seed reproduces the video
}

TEST(Run, CancelMidDenoiseEndsTheJobWithinOneStep) {
  ModelPipeline& p = demo_pipeline();
  Harness h(p);
  Gate gate;
  h.set_gate(&gate);
  pb::GenerateRequest r = tiny_request();
  r.set_steps(30);
  const std::string id = h.submit(r);
  std::atomic<int> last_step{-1};
  std::atomic<int> cancel_at{-1};
  std::atomic<bool> decode_started{false};
  Subscription sub = h.scheduler().subscribe(id, [&](const JobEvent& e) {
    if (e.kind == JobEvent::Kind::Step) {
      last_step = e.step_index;
      if (e.step_index == 2) {
        cancel_at = 2;
        h.scheduler().cancel(id);
      }
    }
    if (e.kind == JobEvent::Kind::Stage && e.stage == "decode") decode_started = true;
  });
  gate.open();
  const JobSnapshot snap = h.wait(id);
  EXPECT_EQ(snap.state, JobState::Cancelled);
  EXPECT_EQ(snap.error_code, StatusCode::Cancelled);
  EXPECT_EQ(cancel_at.load(), 2);
  EXPECT_LE(last_step.load(), 3);  // within one step of the cancel
  EXPECT_FALSE(decode_started.load());
  EXPECT_FALSE(snap.result);
  // The worker is free again.
  EXPECT_FALSE(h.run(tiny_request()).empty());
}

TEST(Run, StaSparsityReflectsTheMode) {
  ModelPipeline& p = demo_pipeline();
  Harness h(p);
  pb::GenerateRequest r = tiny_request();  // 9 x 32 x 32: 3 x 4 x 4 tokens, a 3 x 2 x 2 tile grid
  pb::JobCompleted dense, fixed, strategy;
  ASSERT_FALSE(h.run(r, &dense).empty());
  r.mutable_sta()->set_kind(pb::StaMode::KIND_FIXED);
  r.mutable_sta()->set_window_t(1);
  r.mutable_sta()->set_window_h(1);
  r.mutable_sta()->set_window_w(1);
  ASSERT_FALSE(h.run(r, &fixed).empty());
  r.mutable_sta()->Clear();
  r.mutable_sta()->set_kind(pb::StaMode::KIND_STRATEGY);
  r.mutable_sta()->set_strategy("tiny-sta");  // step 0 dense, then windows of 1-2 tiles
  ASSERT_FALSE(h.run(r, &strategy).empty());
  EXPECT_EQ(dense.sta_sparsity(), 0.0);
  // A 1x1x1 window of a 3x2x2 grid keeps the query's own tile only: 1 of 12 key tiles.
  EXPECT_NEAR(fixed.sta_sparsity(), 11.0 / 12.0, 1e-9);
  EXPECT_GT(strategy.sta_sparsity(), 0.0);
  EXPECT_LT(strategy.sta_sparsity(), fixed.sta_sparsity());
}

TEST(Run, TeaCacheSkippedStepsAreReported) {
  ModelPipeline& p = demo_pipeline();
  Harness h(p);
  Gate gate;
  h.set_gate(&gate);
  pb::GenerateRequest r = tiny_request();
  r.set_steps(10);
  r.set_teacache_threshold(1.f);
  const std::string id = h.submit(r);
  Recorded rec;
  Subscription sub = h.scheduler().subscribe(id, [&](const JobEvent& e) { rec.add(e); });
  gate.open();
  ASSERT_EQ(h.wait(id).state, JobState::Succeeded);
  uint32_t skipped = 0, steps = 0;
  for (const JobEvent& e : rec.live())
    if (e.kind == JobEvent::Kind::Step) {
      ++steps;
      skipped += e.step_skipped;
    }
  EXPECT_EQ(steps, 10u);
  EXPECT_GT(skipped, 0u);
  EXPECT_EQ(h.completed(id).teacache_skipped_steps(), skipped);
}

// CPU options that fail jobs whose prompt holds "FAULT" after step 1 (test-only fault injection).
PipelineOptions faulty_options(std::vector<int> group_sizes = {}) {
  PipelineOptions o;
  o.use_cuda = false;
  o.group_sizes = std::move(group_sizes);
  o.fault.at_step = 1;
  o.fault.prompt_marker = "FAULT";
  return o;
}

// Runs a job that hits the fault and checks it failed with Internal; returns its snapshot.
JobSnapshot expect_fault_fails(Harness& h) {
  pb::GenerateRequest bad = tiny_request();
  bad.set_prompt("please FAULT here");
  const JobSnapshot snap = h.wait(h.submit(bad));
  EXPECT_EQ(snap.state, JobState::Failed);
  EXPECT_EQ(snap.error_code, StatusCode::Internal);
  EXPECT_NE(snap.error_message.find("fault injection"), std::string::npos) << snap.error_message;
  return snap;
}

TEST(Run, FaultInjectionFailsThatJobWithInternalAndTheWorkerKeepsServing) {
  ModelPipeline p(ServingConfig::from_file(kConfig), faulty_options());
  p.load();
  Harness h(p);
  EXPECT_EQ(expect_fault_fails(h).steps_done, 2);
  EXPECT_FALSE(h.run(tiny_request()).empty());
}

TEST(Run, TheDemoModelRunsWithStaOnTheSmallFixtures) {
  ModelPipeline& p = demo_pipeline();
  Harness h(p);
  pb::GenerateRequest r;
  r.set_model("small");
  r.set_prompt("anything");
  r.set_seed(3);
  r.set_frames(5);
  r.set_height(64);
  r.set_width(64);
  r.set_steps(3);
  r.mutable_sta()->set_kind(pb::StaMode::KIND_FIXED);  // 5 x 64 x 64: 2 x 4 x 4 tokens, tile 1x8x8
  r.mutable_sta()->set_window_t(1);
  r.mutable_sta()->set_window_h(1);
  r.mutable_sta()->set_window_w(1);
  pb::JobCompleted done;
  const Bytes mp4 = h.run(r, &done);
  ASSERT_FALSE(mp4.empty());
  const media::DecodedVideo v = media::decode_mp4(mp4);
  EXPECT_EQ(v.frames_rgb24.size(), 5u);
  EXPECT_EQ(v.width, 64);
  EXPECT_NEAR(done.sta_sparsity(), 0.5, 1e-9);  // 1 of 2 tiles (one per latent frame)
}

// ---- text encoders ----

// A text-encoder model from the tests/data/text fixtures, their embedding tables grown to the fixture
// tokenizers' vocabularies (the extra rows random), next to the small DiT (text dim 64 = the LLM's
// hidden size, pooled dim 32 = CLIP's).
std::string make_encoder_config(const std::string& dir) {
  auto grow = [&](const std::string& src, const std::string& dst, const std::string& embed_key, int64_t vocab,
                  const std::string& config_name) {
    fs::create_directories(dst);
    const SafetensorsFile f = SafetensorsFile::open(src + "/model.safetensors");
    std::vector<TensorToWrite> out;
    std::vector<std::vector<float>> keep;
    keep.reserve(f.records().size());
    for (const TensorRecord& rec : f.records()) {
      std::vector<float> v = read_as_float(f, rec);
      std::vector<int64_t> shape = rec.shape;
      if (rec.name == embed_key) {
        const int64_t d = shape[1];
        for (int64_t i = shape[0] * d; i < vocab * d; ++i) v.push_back(0.02f * static_cast<float>((i * 7919) % 101 - 50));
        shape[0] = vocab;
      }
      keep.push_back(std::move(v));
      out.push_back({rec.name, StDType::F32, shape, keep.back().data(), keep.back().size() * sizeof(float)});
    }
    write_safetensors(dst + "/model.safetensors", out);
    std::ifstream in(src + "/" + config_name);
    json cfg = json::parse(in);
    cfg["vocab_size"] = vocab;
    write_file(dst + "/config.json", cfg.dump());
  };
  grow(kData + "/text/llama", dir + "/llama", "model.embed_tokens.weight", 560, "config.json");
  grow(kData + "/text/clip", dir + "/clip", "text_model.embeddings.token_embedding.weight", 814, "config.json");
  json j = {{"models", json::array({json{
                {"name", "encoded"},
                {"dit", {{"dir", kData + "/dit/small"}, {"weights", kData + "/dit/small/transformer.safetensors"}}},
                {"vae", {{"dir", kData + "/vae/small"}, {"weights", kData + "/vae/small/vae.safetensors"}}},
                {"text_encoder",
                 {{"llama", {{"dir", "llama"}, {"tokenizer", kData + "/tokenizer/small_bpe/tokenizer.json"}}},
                  {"clip", {{"dir", "clip"}, {"tokenizer", kData + "/tokenizer/clip_tiny/tokenizer.json"}}},
                  {"template", "{}"},
                  {"crop_start", 1},
                  {"max_length", 24},
                  {"skip_layers", 2}}},
                {"tile", {1, 2, 2}},
                {"defaults", {{"frames", 1}, {"height", 32}, {"width", 32}, {"steps", 2}}},
            }})}};
  write_file(dir + "/serving.json", j.dump());
  return dir + "/serving.json";
}

TEST(Run, TextEncodersConditionTheVideoAndTrueCfgRuns) {
  const std::string path = make_encoder_config(temp_dir("encoders"));
  PipelineOptions o;
  o.use_cuda = false;
  ModelPipeline p(ServingConfig::from_file(path), o);
  try {
    p.load();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::Unsupported) GTEST_SKIP() << e.message();  // a build without PCRE2
    throw;
  }
  Harness h(p);
  pb::GenerateRequest r;
  r.set_model("encoded");
  r.set_prompt("a red circle moves left");
  r.set_seed(5);
  r.mutable_output()->set_preset("ultrafast");
  pb::JobCompleted done;
  const Bytes a = h.run(r, &done);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(media::decode_mp4(a).frames_rgb24.size(), 1u);
  EXPECT_EQ(h.run(r), a);  // the cached prompt gives the same video
  r.set_prompt("blue squares");
  EXPECT_NE(h.run(r), a);  // the prompt reaches the DiT
  r.set_true_cfg_scale(3.f);
  r.set_negative_prompt("blurry");
  const Bytes cfg = h.run(r);
  ASSERT_FALSE(cfg.empty());
  EXPECT_EQ(media::decode_mp4(cfg).frames_rgb24.size(), 1u);
  pb::GenerateRequest plain_request;
  plain_request.set_model("encoded");
  plain_request.set_prompt("x");
  const size_t plain = p.memory_estimate(p.normalize(plain_request, RequestLimits{}));
  EXPECT_GE(p.memory_estimate(p.normalize(r, RequestLimits{})), plain);  // the VAE stage dominates here
}

// ---- sequence-parallel groups (docs/parallel.md) ----

// One job on the demo pipeline (one CPU worker, one rank).
Bytes demo_pipeline_run(const pb::GenerateRequest& r) {
  Harness h(demo_pipeline());
  return h.run(r);
}

// The largest per-channel difference between two decoded videos.
int max_frame_diff(const Bytes& a, const Bytes& b) {
  const media::DecodedVideo x = media::decode_mp4(a), y = media::decode_mp4(b);
  EXPECT_EQ(x.frames_rgb24.size(), y.frames_rgb24.size());
  int diff = 0;
  for (size_t f = 0; f < std::min(x.frames_rgb24.size(), y.frames_rgb24.size()); ++f)
    for (size_t i = 0; i < x.frames_rgb24[f].size(); ++i)
      diff = std::max(diff, std::abs(static_cast<int>(x.frames_rgb24[f][i]) - static_cast<int>(y.frames_rgb24[f][i])));
  return diff;
}

TEST(Groups, ATwoRankCpuGroupMakesTheSameVideoAsOneRank) {
  PipelineOptions o;
  o.use_cuda = false;
  o.group_sizes = {2, 1};  // two workers: a group of 2 CPU ranks, and a single CPU rank
  ModelPipeline p(ServingConfig::from_file(kConfig), o);
  p.load();
  ASSERT_EQ(p.num_workers(), 2);
  EXPECT_EQ(p.worker_name(0), "cpu0");
  // A real scheduler over both workers: the same request submitted twice at once runs on both.
  SchedulerOptions so;
  so.num_workers = 2;
  std::mutex mu;
  std::map<std::string, std::pair<int, pb::JobCompleted>> done;
  Scheduler sched(so, [&](JobContext& ctx) {
    const auto& req = std::any_cast<const pb::GenerateRequest&>(ctx.payload());
    pb::JobCompleted c = p.run(ctx, req);
    std::lock_guard<std::mutex> lk(mu);
    done[ctx.job_id()] = {ctx.worker(), c};
  });
  pb::GenerateRequest r = tiny_request(99);
  r.set_steps(6);
  r.set_teacache_threshold(0.5f);
  r.mutable_sta()->set_kind(pb::StaMode::KIND_STRATEGY);
  r.mutable_sta()->set_strategy("tiny-sta");
  r.set_preview_every_steps(3);
  const pb::GenerateRequest n = p.normalize(r, RequestLimits{});
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    JobSpec spec;
    spec.payload = n;
    ids.push_back(sched.submit(std::move(spec)));
  }
  std::map<int, Bytes> video;
  std::map<int, pb::JobCompleted> summary;
  for (const std::string& id : ids) {
    const auto snap = sched.wait(id, kWait);
    ASSERT_TRUE(snap && snap->state == JobState::Succeeded) << (snap ? snap->error_message : "no snapshot");
    std::lock_guard<std::mutex> lk(mu);
    video[done[id].first] = *snap->result;
    summary[done[id].first] = done[id].second;
  }
  ASSERT_EQ(video.size(), 2u) << "both workers should have run one job";
  EXPECT_EQ(summary[0].seed(), 99u);
  EXPECT_EQ(summary[0].teacache_skipped_steps(), summary[1].teacache_skipped_steps());
  EXPECT_GT(summary[0].teacache_skipped_steps(), 0u);
  EXPECT_EQ(summary[0].sta_sparsity(), summary[1].sta_sparsity());
  EXPECT_EQ(summary[0].frames(), 9u);
  EXPECT_LE(max_frame_diff(video[0], video[1]), 1);
}

TEST(Groups, AGroupSizeThatDoesNotDivideTheHeadsIsRejected) {
  PipelineOptions o;
  o.use_cuda = false;
  o.group_sizes = {3};  // the fixtures have 2 heads
  ModelPipeline p(ServingConfig::from_file(kConfig), o);
  try {
    p.load();
    FAIL() << "a group of 3 ranks was accepted for 2-head models";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(e.message().find("does not divide the model's 2 attention heads"), std::string::npos) << e.message();
  }
  o.group_sizes = {0};
  EXPECT_THROW(ModelPipeline(ServingConfig::from_file(kConfig), o), Error);
}

TEST(Groups, CancelAndFaultInAGroupLeaveItServing) {
  ModelPipeline p(ServingConfig::from_file(kConfig), faulty_options({2}));
  p.load();
  Harness h(p);
  expect_fault_fails(h);

  Gate gate;
  h.set_gate(&gate);
  pb::GenerateRequest r = tiny_request();
  r.set_steps(30);
  const std::string id = h.submit(r);
  std::atomic<int> last_step{-1};
  Subscription sub = h.scheduler().subscribe(id, [&](const JobEvent& e) {
    if (e.kind == JobEvent::Kind::Step) {
      last_step = e.step_index;
      if (e.step_index == 2) h.scheduler().cancel(id);
    }
  });
  gate.open();
  const JobSnapshot cancelled = h.wait(id);
  EXPECT_EQ(cancelled.state, JobState::Cancelled);
  EXPECT_LE(last_step.load(), 3);
  h.set_gate(nullptr);
  // The group's communicators were rebuilt: it serves again, and gives the one-rank video.
  EXPECT_LE(max_frame_diff(h.run(tiny_request()), demo_pipeline_run(tiny_request())), 1);
}

// Routing by group size end to end: a server (gRPC on loopback) over CPU workers {2 ranks, 1 rank}.
// The fixtures' config with only the "tiny" model, its default group size set to `group_size`.
ServingConfig tiny_only_config(uint32_t group_size) {
  std::ifstream f(kConfig);
  json j = json::parse(f);
  json tiny;
  for (const json& m : j.at("models"))
    if (m.at("name") == "tiny") tiny = m;
  if (group_size != 0) tiny["group_size"] = group_size;
  j["models"] = json::array({tiny});
  return ServingConfig::from_json(j, "tiny-only.json", fs::path(kConfig).parent_path().string());
}

struct GroupServer {
  explicit GroupServer(uint32_t model_group_size) {
    PipelineOptions o;
    o.use_cuda = false;
    o.group_sizes = {2, 1};
    ServerConfig config;
    config.listen = "127.0.0.1:0";
    config.metrics_listen = "";
    server = std::make_unique<StavidServer>(config,
                                            std::make_unique<ModelPipeline>(tiny_only_config(model_group_size), o));
    server->start();
    server->load();
    stub = pb::VideoService::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server->port()), grpc::InsecureChannelCredentials()));
  }
  // Runs a Generate to the end; returns its status and the worker named by `started`.
  grpc::Status generate(const pb::GenerateRequest& r, std::string* worker) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kWait);
    auto reader = stub->Generate(&ctx, r);
    pb::JobEvent e;
    while (reader->Read(&e)) {
      if (e.has_started()) *worker = e.started().worker();
    }
    return reader->Finish();
  }
  std::unique_ptr<StavidServer> server;
  std::unique_ptr<pb::VideoService::Stub> stub;
};

pb::GenerateRequest group_request(uint32_t group_size) {
  pb::GenerateRequest r = tiny_request();
  r.set_steps(2);
  r.set_frames(5);
  r.set_gpu_group_size(group_size);
  return r;
}

TEST(Groups, ARequestRunsOnAWorkerOfItsGroupSize) {
  GroupServer s(/*model_group_size=*/0);
  for (int round = 0; round < 2; ++round) {  // each size lands on its own worker every time
    std::string worker;
    grpc::Status st = s.generate(group_request(2), &worker);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(worker, "cpu0");  // the 2-rank group
    worker.clear();
    st = s.generate(group_request(1), &worker);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(worker, "cpu1");
  }
  // 0 with no model default: any worker.
  std::string worker;
  ASSERT_TRUE(s.generate(group_request(0), &worker).ok());
  EXPECT_TRUE(worker == "cpu0" || worker == "cpu1") << worker;
  // A size no worker has: INVALID_ARGUMENT naming the field and the sizes there are.
  worker.clear();
  grpc::Status st = s.generate(group_request(3), &worker);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("gpu_group_size: 3 is not a group size of this server"), std::string::npos)
      << st.error_message();
  EXPECT_NE(st.error_message().find("1, 2"), std::string::npos) << st.error_message();
  EXPECT_TRUE(worker.empty());
  // The metrics name the worker of each step, stage and job, and the group sizes.
  const std::string text = s.server->metrics()->scrape();
  for (const char* want : {"stavid_worker_group_size{worker=\"cpu0\"} 2", "stavid_worker_group_size{worker=\"cpu1\"} 1",
                           "stavid_step_duration_seconds_count{worker=\"cpu0\"}",
                           "stavid_step_duration_seconds_count{worker=\"cpu1\"}",
                           "stavid_stage_duration_seconds_count{stage=\"denoise\",worker=\"cpu1\"}",
                           "stavid_jobs_total{outcome=\"succeeded\",worker=\"cpu1\"}"}) {
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
  }
}

TEST(Groups, TheModelsGroupSizeIsTheDefaultAndMustExist) {
  {
    GroupServer s(/*model_group_size=*/2);
    for (int i = 0; i < 2; ++i) {
      std::string worker;
      grpc::Status st = s.generate(group_request(0), &worker);
      ASSERT_TRUE(st.ok()) << st.error_message();
      EXPECT_EQ(worker, "cpu0");
    }
    std::string worker;
    ASSERT_TRUE(s.generate(group_request(1), &worker).ok());  // the request overrides the model
    EXPECT_EQ(worker, "cpu1");
  }
  PipelineOptions o;
  o.use_cuda = false;
  o.group_sizes = {2, 1};
  ModelPipeline p(tiny_only_config(4), o);
  try {
    p.load();
    FAIL() << "a model group_size no worker has was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(e.message().find("group_size 4 is not a group size of this server"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace stavid::server
