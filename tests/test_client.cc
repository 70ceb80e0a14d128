// The `stavid` CLI against an in-process fake VideoService (and gRPC's own health service) on a
// loopback port: the fake streams scripted events and results, the CLI runs in-process through
// run_cli, and the tests check the files it writes, what it prints and its exit codes.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "client/cli.h"
#include "client/exit_codes.h"
#include "client/result.h"
#include "stavid/v1/video.grpc.pb.h"

namespace {

namespace v1 = stavid::v1;
namespace fs = std::filesystem;
using stavid::client::CliIo;
using stavid::client::ResultAssembler;
using stavid::client::ResultCorrupt;

constexpr const char* kJob = "job-1";

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen() & 0xff);
  return s;
}

v1::JobEvent event_at(double elapsed) {
  v1::JobEvent e;
  e.set_job_id(kJob);
  e.set_elapsed_seconds(elapsed);
  return e;
}

std::vector<v1::JobEvent> progress_events(uint32_t steps) {
  std::vector<v1::JobEvent> events;
  double t = 0;
  auto add = [&](auto fill) {
    v1::JobEvent e = event_at(t += 0.1);
    fill(e);
    events.push_back(e);
  };
  add([](v1::JobEvent& e) {
    e.mutable_queued()->set_position(1);
    e.mutable_queued()->set_queue_depth(2);
  });
  add([](v1::JobEvent& e) { e.mutable_started()->set_worker("cpu"); });
  add([](v1::JobEvent& e) { e.mutable_heartbeat(); });
  for (v1::Stage stage : {v1::STAGE_TEXT, v1::STAGE_DENOISE, v1::STAGE_DECODE, v1::STAGE_ENCODE}) {
    add([&](v1::JobEvent& e) { e.mutable_stage()->set_stage(stage); });
    if (stage == v1::STAGE_DENOISE) {
      for (uint32_t i = 0; i < steps; ++i) {
        add([&](v1::JobEvent& e) {
          auto* s = e.mutable_step();
          s->set_index(i);
          s->set_total(steps);
          s->set_step_seconds(0.25);
          s->set_skipped_by_teacache(i == 2);
          s->set_eta_seconds(0.25 * (steps - 1 - i));
        });
      }
    }
    add([&](v1::JobEvent& e) {
      e.mutable_stage()->set_stage(stage);
      e.mutable_stage()->set_finished(true);
      e.mutable_stage()->set_duration_seconds(0.5);
    });
  }
  return events;
}

// The MP4 as chunks of `chunk` bytes; the tail chunk is `last` with the size and digest.
std::vector<v1::JobEvent> result_events(const std::string& bytes, size_t chunk, bool reverse,
                                        const std::string& digest) {
  std::vector<v1::JobEvent> events;
  for (size_t off = 0; off < bytes.size(); off += chunk) {
    v1::JobEvent e = event_at(5);
    auto* r = e.mutable_result();
    r->set_offset(off);
    r->set_data(bytes.substr(off, chunk));
    if (off + chunk >= bytes.size()) {
      r->set_last(true);
      r->set_total_bytes(bytes.size());
      r->set_sha256(digest);
    }
    events.push_back(e);
  }
  if (reverse) std::reverse(events.begin(), events.end());
  return events;
}

v1::JobEvent completed_event(size_t bytes) {
  v1::JobEvent e = event_at(6);
  auto* c = e.mutable_completed();
  c->set_seed(42);
  c->set_frames(13);
  c->set_width(256);
  c->set_height(256);
  c->set_total_seconds(6);
  c->set_denoise_seconds(4);
  c->set_teacache_skipped_steps(1);
  c->set_sta_sparsity(0.5);
  c->set_result_bytes(bytes);
  return e;
}

v1::JobEvent failed_event(grpc::StatusCode code, const std::string& message) {
  v1::JobEvent e = event_at(3);
  e.mutable_failed()->set_code(code);
  e.mutable_failed()->set_message(message);
  return e;
}

// A self-signed P-256 certificate for "localhost" that is its own CA (so one file serves as the
// server's certificate, the client's certificate and both trust roots).
struct Pem {
  std::string cert, key;
};
Pem make_self_signed_cert() {
  auto bio_string = [](BIO* bio) {
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string s(data, static_cast<size_t>(n));
    BIO_free(bio);
    return s;
  };
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 24 * 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1,
                             -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  const std::pair<int, const char*> extensions[] = {
      {NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1"},
      {NID_basic_constraints, "critical,CA:TRUE"},
      {NID_key_usage, "critical,digitalSignature,keyCertSign"},
  };
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(x, key, EVP_sha256());
  BIO* cert_bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(cert_bio, x);
  BIO* key_bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(key_bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  Pem pem{bio_string(cert_bio), bio_string(key_bio)};
  X509_free(x);
  EVP_PKEY_free(key);
  return pem;
}

// What the fake streams for Generate (and for WatchJob of kJob).
struct Script {
  std::vector<v1::JobEvent> events;
  grpc::Status status = grpc::Status::OK;
  bool hold_until_cancelled = false;  // after the events, wait for the client to go away
};

class FakeVideoService final : public v1::VideoService::Service {
 public:
  void set_script(Script s) {
    std::lock_guard lock(mu_);
    script_ = std::move(s);
  }
  void require_token(const std::string& token) {
    std::lock_guard lock(mu_);
    token_ = token;
  }
  v1::GenerateRequest last_generate() {
    std::lock_guard lock(mu_);
    return last_generate_;
  }
  v1::SubmitJobRequest last_submit() {
    std::lock_guard lock(mu_);
    return last_submit_;
  }
  v1::WatchJobRequest last_watch() {
    std::lock_guard lock(mu_);
    return last_watch_;
  }
  std::string last_authorization() {
    std::lock_guard lock(mu_);
    return last_authorization_;
  }
  std::atomic<bool> holding{false};     // a hold_until_cancelled call is waiting
  std::atomic<bool> saw_cancel{false};  // ... and saw its client go away

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    Script script;
    {
      std::lock_guard lock(mu_);
      last_generate_ = *req;
      script = script_;
    }
    return play(ctx, writer, script, /*include_result=*/true);
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    Script script;
    {
      std::lock_guard lock(mu_);
      last_watch_ = *req;
      script = script_;
    }
    if (req->job_id() != kJob) return {grpc::StatusCode::NOT_FOUND, "no job " + req->job_id()};
    return play(ctx, writer, script, !req->has_include_result() || req->include_result());
  }

  grpc::Status SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req,
                         v1::SubmitJobResponse* response) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    std::lock_guard lock(mu_);
    last_submit_ = *req;
    if (req->client_job_id() == "taken") return {grpc::StatusCode::ALREADY_EXISTS, "client job id taken"};
    response->set_job_id(kJob);
    response->set_queue_position(2);
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* job) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    if (req->job_id() != kJob) return {grpc::StatusCode::NOT_FOUND, "no job " + req->job_id()};
    *job = sample_job();
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* response) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    for (int i = 0; i < 3; ++i) {
      v1::Job job = sample_job();
      job.set_job_id("job-" + std::to_string(i + 1));
      job.set_state(i == 0 ? v1::JOB_STATE_RUNNING : v1::JOB_STATE_SUCCEEDED);
      const bool wanted = req->states().empty() ||
                          std::find(req->states().begin(), req->states().end(), job.state()) != req->states().end();
      if (wanted) *response->add_jobs() = job;
    }
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::Job* job) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    if (req->job_id() != kJob) return {grpc::StatusCode::NOT_FOUND, "no job " + req->job_id()};
    *job = sample_job();
    job->set_state(v1::JOB_STATE_CANCELLED);
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    if (auto s = check_auth(ctx); !s.ok()) return s;
    auto* m = response->add_models();
    m->set_name("demo");
    m->set_description("tiny random-weight model");
    m->set_max_frames(33);
    m->set_max_pixels(256 * 256);
    m->set_default_steps(8);
    m->add_strategies("calibrated-a");
    m->set_tile_t(2);
    m->set_tile_h(4);
    m->set_tile_w(4);
    response->add_models()->set_name("hunyuan-video");
    return grpc::Status::OK;
  }

 private:
  static v1::Job sample_job() {
    v1::Job job;
    job.set_job_id(kJob);
    job.set_state(v1::JOB_STATE_RUNNING);
    job.mutable_request()->set_model("demo");
    job.mutable_request()->set_prompt("a red circle moves left");
    job.mutable_request()->set_steps(8);
    job.set_steps_done(3);
    job.set_submitted_at(1.7e9);
    return job;
  }

  grpc::Status check_auth(grpc::ServerContext* ctx) {
    std::lock_guard lock(mu_);
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    last_authorization_ = it == md.end() ? "" : std::string(it->second.data(), it->second.size());
    if (!token_.empty() && last_authorization_ != "Bearer " + token_) {
      return {grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token"};
    }
    return grpc::Status::OK;
  }

  grpc::Status play(grpc::ServerContext* ctx, grpc::ServerWriter<v1::JobEvent>* writer, const Script& script,
                    bool include_result) {
    for (const auto& e : script.events) {
      if (e.has_result() && !include_result) continue;
      if (!writer->Write(e)) return {grpc::StatusCode::CANCELLED, "client went away"};
    }
    if (script.hold_until_cancelled) {
      holding = true;
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (!ctx->IsCancelled() && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      saw_cancel = ctx->IsCancelled();
      return {grpc::StatusCode::CANCELLED, "cancelled"};
    }
    return script.status;
  }

  std::mutex mu_;
  Script script_;
  std::string token_;
  std::string last_authorization_;
  v1::GenerateRequest last_generate_;
  v1::SubmitJobRequest last_submit_;
  v1::WatchJobRequest last_watch_;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    address_ = "127.0.0.1:" + std::to_string(port);
    server_->GetHealthCheckService()->SetServingStatus("liveness", true);
    server_->GetHealthCheckService()->SetServingStatus("readiness", false);

    dir_ = fs::temp_directory_path() /
           ("stavid_client_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    fs::remove_all(dir_);
  }

  // Runs the CLI with --server pointing at the fake; captures stdout/stderr.
  int run(std::vector<std::string> args, const std::atomic<bool>* interrupted = nullptr, bool tty = false,
          std::map<std::string, std::string> env = {}) {
    std::ostringstream out, err;
    CliIo io{out, err, tty, std::move(env), interrupted};
    if (std::find(args.begin(), args.end(), "--server") != args.end()) {
      // the test names its own server
    } else if (!env_server_) {
      args.push_back("--server");
      args.push_back(address_);
    } else {
      io.env["STAVID_SERVER"] = address_;
    }
    const int code = stavid::client::run_cli(args, io);
    out_ = out.str();
    err_ = err.str();
    return code;
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string read(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  size_t files_in_dir() const { return static_cast<size_t>(std::distance(fs::directory_iterator(dir_), {})); }

  // A full successful job: progress, the MP4 (in or out of order), completion.
  Script success(const std::string& mp4, bool reverse = false, size_t chunk = 32 * 1024) {
    Script s;
    s.events = progress_events(4);
    auto chunks = result_events(mp4, chunk, reverse, stavid::client::sha256(mp4));
    s.events.insert(s.events.end(), chunks.begin(), chunks.end());
    s.events.push_back(completed_event(mp4.size()));
    return s;
  }

  FakeVideoService fake_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  fs::path dir_;
  bool env_server_ = false;
  std::string out_, err_;
};

TEST_F(ClientTest, GenerateWritesTheVerifiedVideo) {
  const std::string mp4 = random_bytes(100000, 1);
  fake_.set_script(success(mp4));
  const std::string out = path("out.mp4");
  ASSERT_EQ(run({"generate", "--prompt", "a red circle", "--frames", "13", "--height", "256", "--width", "256",
                 "--steps", "4", "--seed", "42", "--guidance", "6.5", "--shift", "7", "--fps", "12",
                 "--teacache", "0.15", "--sta", "3,3,3:2", "--priority", "-3", "--queue-timeout", "30",
                 "--gpu-group-size", "4", "--crf", "20", "--preset", "fast", "--negative-prompt", "blurry", "--true-cfg", "1.5", "-o",
                 out}),
            0)
      << err_;
  EXPECT_EQ(read(out), mp4);
  EXPECT_EQ(files_in_dir(), 1u);  // no temporary file left behind
  // stdout: the path, then the summary.
  EXPECT_EQ(out_.substr(0, out_.find('\n')), out);
  EXPECT_NE(out_.find("13 frames 256x256, seed 42"), std::string::npos) << out_;
  EXPECT_NE(out_.find("STA sparsity 50.0%"), std::string::npos) << out_;
  // stderr (not a terminal): one line per event.
  EXPECT_NE(err_.find("job job-1 queued: position 2 of 2"), std::string::npos) << err_;
  EXPECT_NE(err_.find("step 4/4  0.25 s/step  ETA 0.00s"), std::string::npos) << err_;
  EXPECT_NE(err_.find("step 3/4  0.25 s/step  ETA 0.25s  (TeaCache skip)"), std::string::npos) << err_;
  EXPECT_NE(err_.find("stage decode done in 0.50s"), std::string::npos) << err_;
  EXPECT_EQ(err_.find('\r'), std::string::npos);

  const v1::GenerateRequest req = fake_.last_generate();
  EXPECT_EQ(req.model(), "demo");  // the first model the server lists
  EXPECT_EQ(req.prompt(), "a red circle");
  EXPECT_EQ(req.negative_prompt(), "blurry");
  EXPECT_EQ(req.frames(), 13u);
  EXPECT_EQ(req.height(), 256u);
  EXPECT_EQ(req.width(), 256u);
  EXPECT_EQ(req.steps(), 4u);
  EXPECT_EQ(req.seed(), 42u);
  EXPECT_FLOAT_EQ(req.guidance(), 6.5f);
  EXPECT_FLOAT_EQ(req.true_cfg_scale(), 1.5f);
  EXPECT_FLOAT_EQ(req.flow_shift(), 7.f);
  EXPECT_EQ(req.fps(), 12u);
  EXPECT_FLOAT_EQ(req.teacache_threshold(), 0.15f);
  EXPECT_EQ(req.sta().kind(), v1::StaMode::KIND_FIXED);
  EXPECT_EQ(req.sta().window_t(), 3u);
  EXPECT_EQ(req.sta().window_w(), 3u);
  EXPECT_EQ(req.sta().dense_steps(), 2u);
  EXPECT_EQ(req.priority(), -3);
  EXPECT_EQ(req.queue_timeout_seconds(), 30u);
  EXPECT_EQ(req.gpu_group_size(), 4u);
  ASSERT_TRUE(req.output().has_crf());
  EXPECT_EQ(req.output().crf(), 20u);
  EXPECT_EQ(req.output().preset(), "fast");
}

TEST_F(ClientTest, StaModesAndExplicitModel) {
  const std::string mp4 = random_bytes(1000, 2);
  fake_.set_script(success(mp4));
  ASSERT_EQ(run({"generate", "--prompt", "p", "--model", "hunyuan-video", "--sta", "dense", "-o", path("a.mp4")}), 0)
      << err_;
  EXPECT_EQ(fake_.last_generate().model(), "hunyuan-video");
  EXPECT_EQ(fake_.last_generate().sta().kind(), v1::StaMode::KIND_DENSE);
  EXPECT_FALSE(fake_.last_generate().output().has_crf());
  ASSERT_EQ(run({"generate", "--prompt", "p", "--sta", "strategy:calibrated-a", "-o", path("b.mp4")}), 0) << err_;
  EXPECT_EQ(fake_.last_generate().sta().kind(), v1::StaMode::KIND_STRATEGY);
  EXPECT_EQ(fake_.last_generate().sta().strategy(), "calibrated-a");
  ASSERT_EQ(run({"generate", "--prompt", "p", "--sta=1,2,3", "-o", path("c.mp4")}), 0) << err_;
  EXPECT_EQ(fake_.last_generate().sta().window_h(), 2u);
  EXPECT_EQ(fake_.last_generate().sta().dense_steps(), 0u);
}

TEST_F(ClientTest, OutOfOrderChunksReassemble) {
  const std::string mp4 = random_bytes(3 * 65536 + 123, 3);
  fake_.set_script(success(mp4, /*reverse=*/true, /*chunk=*/65536));
  ASSERT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), 0) << err_;
  EXPECT_EQ(read(path("out.mp4")), mp4);
}

TEST_F(ClientTest, WrongShaIsCorruptAndWritesNothing) {
  const std::string mp4 = random_bytes(50000, 4);
  Script s = success(mp4);
  for (auto& e : s.events) {
    if (e.has_result() && e.result().last()) (*e.mutable_result()->mutable_sha256())[0] ^= 1;
  }
  fake_.set_script(s);
  EXPECT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), 10);
  EXPECT_NE(err_.find("SHA-256 mismatch"), std::string::npos) << err_;
  EXPECT_EQ(files_in_dir(), 0u);
}

TEST_F(ClientTest, MissingChunkOrWrongSizeIsCorrupt) {
  const std::string mp4 = random_bytes(100000, 5);
  Script s = success(mp4);
  s.events.erase(std::find_if(s.events.begin(), s.events.end(), [](const v1::JobEvent& e) { return e.has_result(); }));
  fake_.set_script(s);
  EXPECT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), 10);
  EXPECT_NE(err_.find("never arrived"), std::string::npos) << err_;

  s = success(mp4);
  for (auto& e : s.events) {
    if (e.has_result() && e.result().last()) e.mutable_result()->set_total_bytes(mp4.size() + 1);
  }
  fake_.set_script(s);
  EXPECT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), 10);
  EXPECT_NE(err_.find("announced"), std::string::npos) << err_;

  s = success(mp4);  // the stream ends before the last chunk
  s.events.erase(std::remove_if(s.events.begin(), s.events.end(),
                                [](const v1::JobEvent& e) { return e.has_result() && e.result().last(); }),
                 s.events.end());
  fake_.set_script(s);
  EXPECT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), 10);
  EXPECT_EQ(files_in_dir(), 0u);
}

TEST_F(ClientTest, CallErrorsMapToExitCodes) {
  const std::pair<grpc::StatusCode, int> cases[] = {
      {grpc::StatusCode::INVALID_ARGUMENT, 3},   {grpc::StatusCode::NOT_FOUND, 4},
      {grpc::StatusCode::RESOURCE_EXHAUSTED, 5}, {grpc::StatusCode::UNAVAILABLE, 5},
      {grpc::StatusCode::CANCELLED, 7},          {grpc::StatusCode::DEADLINE_EXCEEDED, 8},
      {grpc::StatusCode::UNAUTHENTICATED, 9},    {grpc::StatusCode::PERMISSION_DENIED, 9},
      {grpc::StatusCode::ALREADY_EXISTS, 11},    {grpc::StatusCode::INTERNAL, 1},
      {grpc::StatusCode::UNIMPLEMENTED, 1},
  };
  for (const auto& [code, exit_code] : cases) {
    Script s;
    s.events = {progress_events(2)[0]};
    s.status = grpc::Status(code, "scripted failure");
    fake_.set_script(s);
    EXPECT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), exit_code)
        << stavid::client::status_code_name(code);
    EXPECT_NE(err_.find(std::string(stavid::client::status_code_name(code)) + ": scripted failure"),
              std::string::npos)
        << err_;
  }
  EXPECT_EQ(files_in_dir(), 0u);
}

TEST_F(ClientTest, JobFailuresMapToExitCodes) {
  const std::pair<grpc::StatusCode, int> cases[] = {
      {grpc::StatusCode::INTERNAL, 6},
      {grpc::StatusCode::RESOURCE_EXHAUSTED, 6},
      {grpc::StatusCode::CANCELLED, 7},
      {grpc::StatusCode::DEADLINE_EXCEEDED, 8},
  };
  for (const auto& [code, exit_code] : cases) {
    Script s;
    s.events = progress_events(2);
    s.events.push_back(failed_event(code, "worker said no"));
    fake_.set_script(s);
    EXPECT_EQ(run({"generate", "--prompt", "p", "-q", "-o", path("out.mp4")}), exit_code);
    EXPECT_NE(err_.find("job job-1 failed: " + std::string(stavid::client::status_code_name(code)) +
                        ": worker said no"),
              std::string::npos)
        << err_;
  }
  // A stream that ends OK without a completion is not a success.
  Script s;
  s.events = progress_events(2);
  fake_.set_script(s);
  EXPECT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}), 1);
  EXPECT_NE(err_.find("ended before the job finished"), std::string::npos) << err_;
  EXPECT_EQ(files_in_dir(), 0u);
}

TEST_F(ClientTest, DeadlineExceeded) {
  Script s;
  s.events = progress_events(2);
  s.hold_until_cancelled = true;
  fake_.set_script(s);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(run({"generate", "--prompt", "p", "--timeout", "0.3", "-o", path("out.mp4")}), 8);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0);
  EXPECT_GE(seconds, 0.25);
  EXPECT_NE(err_.find("DEADLINE_EXCEEDED"), std::string::npos) << err_;
}

TEST_F(ClientTest, BearerTokenIsSent) {
  fake_.require_token("s3cret");
  const std::string mp4 = random_bytes(2000, 6);
  fake_.set_script(success(mp4));
  EXPECT_EQ(run({"models"}), 9);
  EXPECT_NE(err_.find("UNAUTHENTICATED"), std::string::npos) << err_;
  EXPECT_EQ(run({"generate", "--prompt", "p", "--token", "wrong", "-o", path("out.mp4")}), 9);
  EXPECT_EQ(fake_.last_authorization(), "Bearer wrong");
  EXPECT_EQ(run({"generate", "--prompt", "p", "--token", "s3cret", "-o", path("out.mp4")}), 0) << err_;
  EXPECT_EQ(fake_.last_authorization(), "Bearer s3cret");
  EXPECT_EQ(read(path("out.mp4")), mp4);
  // From the environment too, with the server address.
  env_server_ = true;
  EXPECT_EQ(run({"jobs", "get", kJob}, nullptr, false, {{"STAVID_TOKEN", "s3cret"}}), 0) << err_;
  EXPECT_EQ(fake_.last_authorization(), "Bearer s3cret");
}

TEST_F(ClientTest, InterruptCancelsTheGenerateCall) {
  Script s;
  s.events = progress_events(2);
  s.hold_until_cancelled = true;
  fake_.set_script(s);
  std::atomic<bool> interrupted{false};
  // Ctrl-C once the server has sent its events and waits.
  auto press_ctrl_c = [&] {
    for (int i = 0; i < 1000 && !fake_.holding; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    interrupted = true;
  };
  std::thread ctrl_c(press_ctrl_c);
  const int code = run({"generate", "--prompt", "p", "-o", path("out.mp4")}, &interrupted);
  ctrl_c.join();
  EXPECT_EQ(code, 7);
  // "job job-1" once the client read the first event, "call" if Ctrl-C came before that.
  EXPECT_NE(err_.find("stavid: interrupted: "), std::string::npos) << err_;
  EXPECT_NE(err_.find(" cancelled\n"), std::string::npos) << err_;
  for (int i = 0; i < 200 && !fake_.saw_cancel; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(fake_.saw_cancel);  // the server saw the call go away (and would cancel the job)
  EXPECT_EQ(files_in_dir(), 0u);

  // Interrupting a watch detaches instead (130): the job is not ours to cancel.
  fake_.holding = false;
  fake_.saw_cancel = false;
  interrupted = false;
  std::thread ctrl_c2(press_ctrl_c);
  EXPECT_EQ(run({"jobs", "watch", kJob}, &interrupted), 130);
  ctrl_c2.join();
  EXPECT_NE(err_.find("keeps running"), std::string::npos) << err_;
}

TEST_F(ClientTest, ReattachedWatchWritesTheSameBytes) {
  const std::string mp4 = random_bytes(200000, 7);
  fake_.set_script(success(mp4));
  ASSERT_EQ(run({"generate", "--prompt", "p", "-o", path("first.mp4")}), 0) << err_;
  ASSERT_EQ(run({"jobs", "watch", kJob, "-o", path("again.mp4")}), 0) << err_;
  EXPECT_TRUE(fake_.last_watch().include_result());
  EXPECT_EQ(read(path("again.mp4")), read(path("first.mp4")));
  EXPECT_EQ(read(path("again.mp4")), mp4);

  // Without -o the watch asks for no result and writes nothing.
  ASSERT_EQ(run({"jobs", "watch", kJob}), 0) << err_;
  EXPECT_TRUE(fake_.last_watch().has_include_result());
  EXPECT_FALSE(fake_.last_watch().include_result());
  EXPECT_NE(out_.find("job job-1: 13 frames"), std::string::npos) << out_;
  EXPECT_EQ(files_in_dir(), 2u);

  EXPECT_EQ(run({"jobs", "watch", "job-404", "-o", path("x.mp4")}), 4);
  EXPECT_NE(err_.find("NOT_FOUND: no job job-404"), std::string::npos) << err_;
}

TEST_F(ClientTest, DetachPrintsTheJobId) {
  ASSERT_EQ(run({"generate", "--prompt", "p", "--detach", "--client-job-id", "mine-1", "--steps", "3"}), 0) << err_;
  EXPECT_EQ(out_, "job-1\n");
  EXPECT_NE(err_.find("queued at position 3"), std::string::npos) << err_;
  EXPECT_EQ(fake_.last_submit().client_job_id(), "mine-1");
  EXPECT_EQ(fake_.last_submit().request().steps(), 3u);
  EXPECT_EQ(fake_.last_submit().request().model(), "demo");

  EXPECT_EQ(run({"generate", "--prompt", "p", "--detach", "--client-job-id", "taken"}), 11);
  EXPECT_NE(err_.find("ALREADY_EXISTS"), std::string::npos) << err_;

  ASSERT_EQ(run({"generate", "--prompt", "p", "--detach", "--json"}), 0) << err_;
  const auto j = nlohmann::json::parse(out_);
  EXPECT_EQ(j.at("job_id"), "job-1");
  EXPECT_EQ(j.at("queue_position"), 2);
}

TEST_F(ClientTest, JobsModelsAndJson) {
  ASSERT_EQ(run({"jobs", "list"}), 0) << err_;
  EXPECT_NE(out_.find("JOB ID"), std::string::npos);
  EXPECT_NE(out_.find("job-3"), std::string::npos) << out_;
  EXPECT_NE(out_.find("a red circle moves left"), std::string::npos) << out_;

  ASSERT_EQ(run({"jobs", "list", "--state", "running", "--json"}), 0) << err_;
  const auto list = nlohmann::json::parse(out_);
  ASSERT_EQ(list.at("jobs").size(), 1u);
  EXPECT_EQ(list.at("jobs")[0].at("state"), "JOB_STATE_RUNNING");

  ASSERT_EQ(run({"jobs", "get", kJob}), 0) << err_;
  EXPECT_NE(out_.find("state        running"), std::string::npos) << out_;
  EXPECT_NE(out_.find("submitted    2023-11-14T22:13:20Z"), std::string::npos) << out_;
  EXPECT_EQ(run({"jobs", "get", "job-404"}), 4);

  ASSERT_EQ(run({"jobs", "cancel", kJob}), 0) << err_;
  EXPECT_EQ(out_, "job job-1: cancelled\n");
  EXPECT_EQ(run({"jobs", "cancel", "job-404"}), 4);

  ASSERT_EQ(run({"models"}), 0) << err_;
  EXPECT_NE(out_.find("demo"), std::string::npos);
  EXPECT_NE(out_.find("calibrated-a"), std::string::npos) << out_;
  ASSERT_EQ(run({"models", "--json"}), 0) << err_;
  EXPECT_EQ(nlohmann::json::parse(out_).at("models").size(), 2u);
  // --round-robin over a target with several addresses, one of them dead: the call reaches the
  // live one (round_robin only picks ready subchannels).
  ASSERT_EQ(run({"models", "--round-robin", "--server", "ipv4:127.0.0.1:1," + address_}), 0) << err_;
  EXPECT_NE(out_.find("demo"), std::string::npos);
}

TEST_F(ClientTest, GenerateJsonLines) {
  const std::string mp4 = random_bytes(70000, 8);
  fake_.set_script(success(mp4));
  ASSERT_EQ(run({"generate", "--prompt", "p", "--json", "-o", path("out.mp4")}), 0) << err_;
  EXPECT_TRUE(err_.empty()) << err_;
  std::istringstream lines(out_);
  std::string line;
  std::vector<nlohmann::json> objects;
  while (std::getline(lines, line)) objects.push_back(nlohmann::json::parse(line));
  ASSERT_GE(objects.size(), 10u);
  size_t chunk_bytes = 0;
  for (const auto& o : objects) {
    if (o.contains("result")) {
      EXPECT_FALSE(o.at("result").contains("data"));  // bytes never reach the log
      chunk_bytes += o.at("result").at("data_bytes").get<size_t>();
    }
  }
  EXPECT_EQ(chunk_bytes, mp4.size());
  const auto& summary = objects.back();
  EXPECT_EQ(summary.at("path"), path("out.mp4"));
  EXPECT_EQ(summary.at("bytes"), mp4.size());
  EXPECT_EQ(summary.at("sha256"), stavid::client::to_hex(stavid::client::sha256(mp4)));
  EXPECT_EQ(summary.at("completed").at("seed"), "42");  // uint64 is a JSON string in proto3 JSON
}

TEST_F(ClientTest, TerminalProgressBar) {
  const std::string mp4 = random_bytes(5000, 9);
  fake_.set_script(success(mp4));
  ASSERT_EQ(run({"generate", "--prompt", "p", "-o", path("out.mp4")}, nullptr, /*tty=*/true), 0) << err_;
  EXPECT_NE(err_.find("\r\033[Kdenoise [##########..........] 2/4  0.25 s/step  ETA 0.50s"),
            std::string::npos)
      << err_;
  EXPECT_NE(err_.find("stage text done in 0.50s\n"), std::string::npos) << err_;
  // The bar is cleared and the last line is complete before the command ends.
  EXPECT_NE(err_.find("\r\033[Kjob job-1 completed in 6.00s\n"), std::string::npos) << err_;
  EXPECT_EQ(err_.back(), '\n');
}

TEST_F(ClientTest, HealthCheck) {
  ASSERT_EQ(run({"health"}), 0) << err_;
  EXPECT_EQ(out_, "SERVING\n");
  EXPECT_EQ(run({"health", "--service", "liveness"}), 0);
  EXPECT_EQ(run({"health", "--service", "readiness"}), 5);
  EXPECT_EQ(out_, "NOT_SERVING\n");
  EXPECT_EQ(run({"health", "--service", "nope"}), 4);
  server_->GetHealthCheckService()->SetServingStatus("readiness", true);
  EXPECT_EQ(run({"health", "--service=readiness", "--json"}), 0);
  EXPECT_EQ(nlohmann::json::parse(out_).at("status"), "SERVING");
}

TEST_F(ClientTest, MutualTls) {
  const Pem pem = make_self_signed_cert();
  ASSERT_NE(pem.cert.find("BEGIN CERTIFICATE"), std::string::npos);
  grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = pem.cert;
  options.pem_key_cert_pairs.push_back({pem.key, pem.cert});
  FakeVideoService fake;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::SslServerCredentials(options), &port);
  builder.RegisterService(&fake);
  auto server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  const std::string tls_server = "localhost:" + std::to_string(port);
  for (const auto& [name, text] : {std::pair{"ca.pem", pem.cert}, std::pair{"key.pem", pem.key}}) {
    std::ofstream(path(name)) << text;
  }
  const std::vector<std::string> models = {"models", "--server", tls_server};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = models;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  EXPECT_EQ(run(with({"--ca", path("ca.pem"), "--cert", path("ca.pem"), "--key", path("key.pem"), "--timeout", "5"})), 0)
      << err_;
  EXPECT_NE(out_.find("hunyuan-video"), std::string::npos) << out_;
  // No client certificate, or no TLS at all: the handshake fails (UNAVAILABLE).
  EXPECT_EQ(run(with({"--ca", path("ca.pem"), "--timeout", "5"})), 5);
  EXPECT_EQ(run(with({"--timeout", "5"})), 5);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

TEST_F(ClientTest, UsageErrors) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"jobs"},
      {"jobs", "get"},
      {"jobs", "get", "a", "b"},
      {"generate", "-o", "x.mp4"},                                   // no prompt
      {"generate", "--prompt", "p"},                                 // no -o
      {"generate", "--prompt", "p", "--detach", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--client-job-id", "a", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--frames", "ten", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--frames", "-1", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--frames", "99999999999", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--guidance", "nan", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--gpu-group-size", "two", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--sta", "1,2", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--sta", "0,1,1", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--sta", "1,1,1:x", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--sta", "strategy:", "-o", "x.mp4"},
      {"generate", "--prompt"},                                      // missing value
      {"generate", "--prompt", "p", "--bogus", "-o", "x.mp4"},
      {"generate", "--prompt", "p", "--state", "queued", "-o", "x.mp4"},  // not a generate flag
      {"generate", "--prompt", "p", "--detach=yes"},
      {"models", "--timeout", "0"},
      {"models", "--timeout", "-1"},
      {"models", "--cert", "c.pem"},                                 // --cert without --key
      {"models", "--ca", "/nonexistent/ca.pem"},
      {"models", "--token", "bad\ntoken"},
      {"jobs", "list", "--state", "done"},
      {"health", "extra"},
      {"models", "-x"},
  };
  for (const auto& args : cases) {
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(run(args), 2) << joined;
    EXPECT_NE(err_.find("stavid"), std::string::npos) << joined;
  }
  EXPECT_EQ(files_in_dir(), 0u);
}

TEST_F(ClientTest, Help) {
  ASSERT_EQ(run({"--help"}), 0);
  EXPECT_NE(out_.find("Exit codes:"), std::string::npos);
  EXPECT_NE(out_.find("10  the MP4 did not verify"), std::string::npos);
  ASSERT_EQ(run({"generate", "--help"}), 0);
  EXPECT_NE(out_.find("--teacache X"), std::string::npos);
  ASSERT_EQ(run({"help", "jobs", "watch"}), 0);
  EXPECT_NE(out_.find("Re-attaches"), std::string::npos);
}

TEST(ResultAssembler, RepeatsOverlapsAndEmptyLastChunk) {
  const std::string mp4 = random_bytes(1000, 10);
  auto chunk = [&](uint64_t off, size_t n) {
    v1::ResultChunk c;
    c.set_offset(off);
    c.set_data(mp4.substr(off, n));
    return c;
  };
  v1::ResultChunk last;
  last.set_offset(1000);
  last.set_last(true);
  last.set_total_bytes(1000);
  last.set_sha256(stavid::client::sha256(mp4));

  ResultAssembler a;
  a.add(chunk(500, 500));
  a.add(chunk(0, 500));
  a.add(chunk(0, 500));  // an identical repeat is harmless
  a.add(last);           // size and digest only
  EXPECT_EQ(a.bytes_received(), 1000u);
  EXPECT_EQ(a.assemble(), mp4);

  ResultAssembler b;
  b.add(chunk(0, 500));
  v1::ResultChunk other = chunk(0, 500);
  other.mutable_data()->at(7) ^= 1;
  EXPECT_THROW(b.add(other), ResultCorrupt);

  ResultAssembler c;  // overlapping chunks
  c.add(chunk(0, 600));
  c.add(chunk(500, 500));
  c.add(last);
  EXPECT_THROW(c.assemble(), ResultCorrupt);

  ResultAssembler d;  // a digest that is not 32 bytes
  v1::ResultChunk short_digest = last;
  short_digest.set_sha256("abc");
  EXPECT_THROW(d.add(short_digest), ResultCorrupt);

  ResultAssembler e;  // bytes past the announced end
  e.add(chunk(0, 1000));
  v1::ResultChunk small = last;
  small.set_total_bytes(999);
  e.add(small);
  EXPECT_THROW(e.assemble(), ResultCorrupt);
}

TEST(ResultAssembler, Sha256KnownAnswer) {
  EXPECT_EQ(stavid::client::to_hex(stavid::client::sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(WriteFileAtomically, ReplacesAndReportsErrors) {
  const fs::path dir = fs::temp_directory_path() / ("stavid_atomic_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string target = (dir / "v.mp4").string();
  stavid::client::write_file_atomically(target, "old");
  stavid::client::write_file_atomically(target, "new bytes");
  std::ifstream in(target);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "new bytes");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), {}), 1);
  try {
    stavid::client::write_file_atomically((dir / "missing" / "v.mp4").string(), "x");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
