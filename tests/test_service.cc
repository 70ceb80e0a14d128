// The gRPC service on loopback over the stub pipeline: every RPC, event streams and result chunks,
// cancellation (CancelJob, Generate disconnect, call deadline), re-attaching WatchJob, priorities,
// queue timeout, admission and validation codes, auth, TLS, health, reflection, heartbeats, a
// faulty runner, metrics (and their HTTP endpoint) and the server flags. Each test is bounded in time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>

#include <grpcpp/generic/generic_stub.h>

#include "tests/service_test_util.h"

namespace stavid::server::testing {
namespace {

StubPipelineOptions slow_stub(int step_ms, int workers = 1) {
  StubPipelineOptions o;
  o.step_time = std::chrono::milliseconds(step_ms);
  o.workers = workers;
  return o;
}

TEST(Service, ListModels) {
  LocalServer s;
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  ASSERT_TRUE(s.stub().ListModels(&ctx, v1::ListModelsRequest(), &resp).ok());
  ASSERT_EQ(resp.models_size(), 1);
  EXPECT_EQ(resp.models(0).name(), "stub");
  EXPECT_EQ(resp.models(0).default_steps(), StubPipeline::kDefaultSteps);
}

TEST(Service, GenerateStreamsProgressResultChunksAndCompletion) {
  StubPipelineOptions o;
  o.result_bytes = 3 * 1024 * 1024 + 123;  // four chunks
  LocalServer s(o);
  v1::GenerateRequest req = stub_request(/*steps=*/6, /*seed=*/42);
  req.set_preview_every_steps(2);
  req.set_teacache_threshold(0.1f);
  StreamResult r = generate(s.stub(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_FALSE(r.job_id.empty());
  ASSERT_TRUE(r.events.front().has_queued());  // Generate sees the job from its first state on
  EXPECT_EQ(r.events.front().queued().queue_depth(), 1u);

  ASSERT_NE(r.find(v1::JobEvent::kStarted), nullptr);
  EXPECT_EQ(r.find(v1::JobEvent::kStarted)->started().worker(), "cpu0");
  std::vector<std::pair<v1::Stage, bool>> stages;
  std::vector<uint32_t> step_index, previews;
  int chunks = 0, skipped = 0;
  for (const auto& e : r.events) {
    EXPECT_EQ(e.job_id(), r.job_id);
    EXPECT_GE(e.elapsed_seconds(), 0.0);
    if (e.has_stage()) stages.emplace_back(e.stage().stage(), e.stage().finished());
    if (e.has_step()) {
      step_index.push_back(e.step().index());
      EXPECT_EQ(e.step().total(), 6u);
      EXPECT_GE(e.step().eta_seconds(), 0.0);
      skipped += e.step().skipped_by_teacache();
    }
    if (e.has_preview()) previews.push_back(e.preview().step());
    if (e.has_result()) ++chunks;
  }
  const std::vector<std::pair<v1::Stage, bool>> want_stages = {
      {v1::STAGE_TEXT, false},   {v1::STAGE_TEXT, true},   {v1::STAGE_DENOISE, false}, {v1::STAGE_DENOISE, true},
      {v1::STAGE_DECODE, false}, {v1::STAGE_DECODE, true}, {v1::STAGE_ENCODE, false},  {v1::STAGE_ENCODE, true}};
  EXPECT_EQ(stages, want_stages);
  EXPECT_EQ(step_index, (std::vector<uint32_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(skipped, 3);
  EXPECT_EQ(previews, (std::vector<uint32_t>{2, 4, 6}));
  EXPECT_EQ(chunks, 4);
  EXPECT_TRUE(r.chunks_ok);

  const Bytes want = StubPipeline::result_for_seed(42, o.result_bytes);
  ASSERT_EQ(r.bytes.size(), want.size());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), reinterpret_cast<const uint8_t*>(r.bytes.data())));
  EXPECT_EQ(r.sha256, sha256(want.data(), want.size()));

  const v1::JobEvent& last = r.events.back();
  ASSERT_TRUE(last.has_completed());
  EXPECT_EQ(last.completed().seed(), 42u);
  EXPECT_EQ(last.completed().result_bytes(), want.size());
  EXPECT_EQ(last.completed().teacache_skipped_steps(), 3u);
  EXPECT_GT(last.completed().total_seconds(), 0.0);
  EXPECT_GE(last.completed().total_seconds(), last.completed().queue_seconds());

  // Same seed, same bytes; seed 0 picks one and reports it.
  StreamResult again = generate(s.stub(), req);
  EXPECT_EQ(again.sha256, r.sha256);
  req.set_seed(0);
  StreamResult picked = generate(s.stub(), req);
  ASSERT_TRUE(picked.status.ok());
  EXPECT_NE(picked.events.back().completed().seed(), 0u);
}

TEST(Service, SubmitGetWatchListAndCancel) {
  LocalServer s(slow_stub(/*step_ms=*/20));
  std::string a, b, c;
  uint32_t pos = 99;
  ASSERT_TRUE(s.submit(stub_request(3), &a, "job-a", &pos).ok());
  ASSERT_TRUE(s.submit(stub_request(3), &b, "", &pos).ok());
  ASSERT_TRUE(s.submit(stub_request(50), &c).ok());
  EXPECT_NE(a, b);

  StreamResult wa = watch(s.stub(), a);
  ASSERT_TRUE(wa.status.ok()) << wa.status.error_message();
  ASSERT_TRUE(wa.events.back().has_completed());
  EXPECT_EQ(wa.bytes.size(), 4096u);

  v1::Job ja = s.get(a);
  EXPECT_EQ(ja.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(ja.client_job_id(), "job-a");
  EXPECT_EQ(ja.request().steps(), 3u);
  EXPECT_EQ(ja.request().fps(), 24u);  // normalized: defaults applied
  EXPECT_EQ(ja.steps_done(), 3u);
  EXPECT_EQ(ja.result_bytes(), 4096u);
  EXPECT_GT(ja.finished_at(), 0.0);
  EXPECT_GE(ja.started_at(), ja.submitted_at());

  ASSERT_TRUE(s.wait_state(b, v1::JOB_STATE_SUCCEEDED));
  ASSERT_TRUE(s.wait_state(c, v1::JOB_STATE_RUNNING));
  {
    grpc::ClientContext ctx;
    v1::CancelJobRequest req;
    req.set_job_id(c);
    v1::Job job;
    ASSERT_TRUE(s.stub().CancelJob(&ctx, req, &job).ok());
    EXPECT_EQ(job.job_id(), c);
  }
  ASSERT_TRUE(s.wait_state(c, v1::JOB_STATE_CANCELLED));
  EXPECT_EQ(s.get(c).error_code(), static_cast<int>(grpc::StatusCode::CANCELLED));

  // Newest first, paged, filtered.
  std::vector<std::string> seen;
  std::string token;
  for (int page = 0; page < 5; ++page) {
    grpc::ClientContext ctx;
    v1::ListJobsRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    v1::ListJobsResponse resp;
    ASSERT_TRUE(s.stub().ListJobs(&ctx, req, &resp).ok());
    for (const auto& j : resp.jobs()) seen.push_back(j.job_id());
    token = resp.next_page_token();
    if (token.empty()) break;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{c, b, a}));
  grpc::ClientContext ctx;
  v1::ListJobsRequest req;
  req.add_states(v1::JOB_STATE_CANCELLED);
  v1::ListJobsResponse resp;
  ASSERT_TRUE(s.stub().ListJobs(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.jobs_size(), 1);
  EXPECT_EQ(resp.jobs(0).job_id(), c);
  EXPECT_TRUE(resp.next_page_token().empty());
}

TEST(Service, CancelMidRunFreesTheWorkerWithinAStep) {
  LocalServer s(slow_stub(/*step_ms=*/50));
  std::string long_job, next_job;
  ASSERT_TRUE(s.submit(stub_request(200), &long_job).ok());
  ASSERT_TRUE(s.submit(stub_request(2), &next_job).ok());
  ASSERT_TRUE(eventually([&] { return s.get(long_job).steps_done() >= 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  grpc::ClientContext ctx;
  v1::CancelJobRequest req;
  req.set_job_id(long_job);
  v1::Job job;
  ASSERT_TRUE(s.stub().CancelJob(&ctx, req, &job).ok());
  ASSERT_TRUE(s.wait_state(long_job, v1::JOB_STATE_CANCELLED, 2000ms));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);  // within one 50 ms step (plus slack)
  EXPECT_LT(s.get(long_job).steps_done(), 200u);
  ASSERT_TRUE(s.wait_state(next_job, v1::JOB_STATE_SUCCEEDED));  // the worker took the next job
  // Cancelling a finished job is fine and changes nothing.
  grpc::ClientContext ctx2;
  req.set_job_id(next_job);
  ASSERT_TRUE(s.stub().CancelJob(&ctx2, req, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
}

TEST(Service, GenerateDisconnectCancelsItsJobButSubmitJobsSurvive) {
  LocalServer s(slow_stub(/*step_ms=*/20));
  std::string gen_id;
  {
    grpc::ClientContext ctx;
    auto reader = s.stub().Generate(&ctx, stub_request(150));
    StreamResult r = read_stream(reader, [](const v1::JobEvent& e) { return !e.has_step(); });
    gen_id = r.job_id;
    ctx.TryCancel();
    reader->Finish();
  }
  ASSERT_FALSE(gen_id.empty());
  ASSERT_TRUE(s.wait_state(gen_id, v1::JOB_STATE_CANCELLED, 2000ms));

  std::string sub_id;
  ASSERT_TRUE(s.submit(stub_request(10), &sub_id).ok());
  {
    grpc::ClientContext ctx;
    v1::WatchJobRequest req;
    req.set_job_id(sub_id);
    auto reader = s.stub().WatchJob(&ctx, req);
    read_stream(reader, [](const v1::JobEvent& e) { return !e.has_step(); });
    ctx.TryCancel();
    reader->Finish();
  }
  ASSERT_TRUE(s.wait_state(sub_id, v1::JOB_STATE_SUCCEEDED));
  EXPECT_TRUE(eventually([&] { return s.server().service().active_streams() == 0; }));
}

TEST(Service, ReattachedWatchGetsTheSameResultBytes) {
  StubPipelineOptions o = slow_stub(/*step_ms=*/10);
  o.result_bytes = 3 * 1024 * 1024;
  LocalServer s(o);
  std::string id;
  ASSERT_TRUE(s.submit(stub_request(10, /*seed=*/99), &id).ok());
  {
    grpc::ClientContext ctx;  // first watcher drops mid-run
    v1::WatchJobRequest req;
    req.set_job_id(id);
    auto reader = s.stub().WatchJob(&ctx, req);
    read_stream(reader, [](const v1::JobEvent& e) { return !(e.has_step() && e.step().index() >= 2); });
    ctx.TryCancel();
    reader->Finish();
  }
  StreamResult second = watch(s.stub(), id);  // attaches mid-run or after: replay, live, result
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  StreamResult third = watch(s.stub(), id);  // after completion: replay and result
  ASSERT_TRUE(third.status.ok());
  EXPECT_TRUE(second.chunks_ok);
  EXPECT_TRUE(third.chunks_ok);
  EXPECT_EQ(second.bytes.size(), o.result_bytes);
  EXPECT_EQ(second.sha256, third.sha256);
  EXPECT_EQ(hex_sha256(second.bytes), hex_sha256(third.bytes));
  EXPECT_EQ(sha256(reinterpret_cast<const uint8_t*>(third.bytes.data()), third.bytes.size()), third.sha256);
  // Without the result: replayed events and the completion only.
  StreamResult light = watch(s.stub(), id, /*include_result=*/false);
  ASSERT_TRUE(light.status.ok());
  EXPECT_TRUE(light.bytes.empty());
  EXPECT_TRUE(light.events.back().has_completed());
}

TEST(Service, PrioritiesReorderTheQueue) {
  LocalServer s(slow_stub(/*step_ms=*/30));
  std::string blocker;
  ASSERT_TRUE(s.submit(stub_request(4), &blocker).ok());
  ASSERT_TRUE(s.wait_state(blocker, v1::JOB_STATE_RUNNING));
  std::map<std::string, std::string> ids;
  for (auto [name, prio] : std::vector<std::pair<std::string, int>>{{"low", -5}, {"mid", 0}, {"high", 5}, {"mid2", 0}}) {
    v1::GenerateRequest r = stub_request(1);
    r.set_priority(prio);
    ASSERT_TRUE(s.submit(r, &ids[name]).ok());
  }
  for (auto& [name, id] : ids) ASSERT_TRUE(s.wait_state(id, v1::JOB_STATE_SUCCEEDED)) << name;
  auto started = [&](const std::string& name) { return s.get(ids[name]).started_at(); };
  EXPECT_LT(started("high"), started("mid"));
  EXPECT_LT(started("mid"), started("mid2"));
  EXPECT_LT(started("mid2"), started("low"));
}

TEST(Service, QueueTimeoutFailsWithDeadlineExceeded) {
  LocalServer s(slow_stub(/*step_ms=*/50));
  std::string blocker, late;
  ASSERT_TRUE(s.submit(stub_request(40), &blocker).ok());
  ASSERT_TRUE(s.wait_state(blocker, v1::JOB_STATE_RUNNING));
  v1::GenerateRequest r = stub_request(1);
  r.set_queue_timeout_seconds(1);
  ASSERT_TRUE(s.submit(r, &late).ok());
  StreamResult w = watch(s.stub(), late, true, 5000ms);
  EXPECT_EQ(w.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(w.events.back().has_failed());
  EXPECT_EQ(w.events.back().failed().code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
  ASSERT_NE(w.find(v1::JobEvent::kQueued), nullptr);
  EXPECT_EQ(s.get(late).state(), v1::JOB_STATE_FAILED);
}

TEST(Service, CallDeadlineEndsGenerateAndCancelsTheJob) {
  LocalServer s(slow_stub(/*step_ms=*/20));
  StreamResult r = generate(s.stub(), stub_request(150), /*timeout=*/300ms);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_FALSE(r.job_id.empty());
  ASSERT_TRUE(s.wait_state(r.job_id, v1::JOB_STATE_CANCELLED, 2000ms));
}

TEST(Service, DuplicateClientJobIdAndBadIds) {
  LocalServer s;
  std::string id;
  ASSERT_TRUE(s.submit(stub_request(), &id, "retry-1").ok());
  EXPECT_EQ(s.submit(stub_request(), nullptr, "retry-1").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(s.submit(stub_request(), nullptr, "bad id!").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.submit(stub_request(), nullptr, std::string(129, 'x')).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  auto code_of = [&](auto call) {
    grpc::ClientContext ctx;
    return call(ctx).error_code();
  };
  v1::GetJobRequest get;
  v1::Job job;
  get.set_job_id("job-999999");
  EXPECT_EQ(code_of([&](auto& c) { return s.stub().GetJob(&c, get, &job); }), grpc::StatusCode::NOT_FOUND);
  get.set_job_id("");
  EXPECT_EQ(code_of([&](auto& c) { return s.stub().GetJob(&c, get, &job); }), grpc::StatusCode::INVALID_ARGUMENT);
  v1::CancelJobRequest cancel;
  cancel.set_job_id("job-999999");
  EXPECT_EQ(code_of([&](auto& c) { return s.stub().CancelJob(&c, cancel, &job); }), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(watch(s.stub(), "job-999999").status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(watch(s.stub(), "").status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListJobsRequest list;
  v1::ListJobsResponse resp;
  list.set_page_token("not-a-token");
  EXPECT_EQ(code_of([&](auto& c) { return s.stub().ListJobs(&c, list, &resp); }), grpc::StatusCode::INVALID_ARGUMENT);
  list.set_page_token("");
  list.add_states(v1::JOB_STATE_UNSPECIFIED);
  EXPECT_EQ(code_of([&](auto& c) { return s.stub().ListJobs(&c, list, &resp); }), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(Service, EveryInvalidFieldIsInvalidArgument) {
  LocalServer s;
  using Mut = std::function<void(v1::GenerateRequest&)>;
  const std::vector<std::pair<std::string, Mut>> cases = {
      {"model", [](auto& r) { r.set_model("nope"); }},
      {"model empty", [](auto& r) { r.set_model(""); }},
      {"prompt empty", [](auto& r) { r.set_prompt(""); }},
      {"prompt long", [](auto& r) { r.set_prompt(std::string(5000, 'a')); }},
      {"frames 4k+1", [](auto& r) { r.set_frames(4); }},
      {"frames max", [](auto& r) { r.set_frames(133); }},
      {"height", [](auto& r) { r.set_height(100); }},
      {"width", [](auto& r) { r.set_width(33); }},
      {"pixels", [](auto& r) { r.set_height(1024), r.set_width(1024); }},
      {"steps", [](auto& r) { r.set_steps(201); }},
      {"guidance", [](auto& r) { r.set_guidance(25.0f); }},
      {"guidance nan", [](auto& r) { r.set_guidance(std::nanf("")); }},
      {"true cfg", [](auto& r) { r.set_true_cfg_scale(-1.0f); }},
      {"flow shift", [](auto& r) { r.set_flow_shift(0.5f); }},
      {"fps", [](auto& r) { r.set_fps(61); }},
      {"teacache", [](auto& r) { r.set_teacache_threshold(-0.1f); }},
      {"sta window", [](auto& r) { r.mutable_sta()->set_kind(v1::StaMode::KIND_FIXED); }},
      {"sta strategy", [](auto& r) { r.mutable_sta()->set_kind(v1::StaMode::KIND_STRATEGY), r.mutable_sta()->set_strategy("x"); }},
      {"sta kind", [](auto& r) { r.mutable_sta()->set_kind(static_cast<v1::StaMode::Kind>(9)); }},
      {"priority high", [](auto& r) { r.set_priority(11); }},
      {"priority low", [](auto& r) { r.set_priority(-11); }},
      {"queue timeout", [](auto& r) { r.set_queue_timeout_seconds(30 * 24 * 3600); }},
      {"crf", [](auto& r) { r.mutable_output()->set_crf(52); }},
      {"preset", [](auto& r) { r.mutable_output()->set_preset("warp"); }},
      {"preview", [](auto& r) { r.set_preview_every_steps(5); }},
      {"gpu group size", [](auto& r) { r.set_gpu_group_size(2); }},  // stub workers are groups of 1
  };
  for (const auto& [name, mutate] : cases) {
    v1::GenerateRequest r = stub_request(4);
    mutate(r);
    grpc::Status st = s.submit(r, nullptr);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
    EXPECT_FALSE(st.error_message().empty()) << name;
    EXPECT_EQ(generate(s.stub(), r).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << name;
  }
  EXPECT_EQ(s.scheduler().stats().submitted_total, 0u);  // nothing bad got in
}

TEST(Service, QueueFullAndMemoryEstimateAreResourceExhausted) {
  ServerConfig config;
  config.service.max_queue = 2;
  config.service.worker_memory_budget = 64 * 64 * 5 * 10;
  StubPipelineOptions o = slow_stub(/*step_ms=*/50);
  o.memory_per_voxel = 10;
  LocalServer s(o, config);
  v1::GenerateRequest big = stub_request();
  big.set_height(128);
  EXPECT_EQ(s.submit(big, nullptr).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  std::string running;
  ASSERT_TRUE(s.submit(stub_request(40), &running).ok());
  ASSERT_TRUE(s.wait_state(running, v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(s.submit(stub_request(1), nullptr).ok());
  ASSERT_TRUE(s.submit(stub_request(1), nullptr).ok());
  EXPECT_EQ(s.submit(stub_request(1), nullptr).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(generate(s.stub(), stub_request(1)).status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST(Service, FaultyRunnerFailsWithInternalAndTheServerKeepsServing) {
  StubPipelineOptions o;
  o.fail_marker = "EXPLODE";
  LocalServer s(o);
  v1::GenerateRequest bad = stub_request(6);
  bad.set_prompt("please EXPLODE now");
  StreamResult r = generate(s.stub(), bad);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(r.status.error_message().find("injected fault"), std::string::npos);
  ASSERT_TRUE(r.events.back().has_failed());
  EXPECT_EQ(r.events.back().failed().code(), static_cast<int>(grpc::StatusCode::INTERNAL));
  EXPECT_EQ(r.steps, 3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(generate(s.stub(), stub_request(2)).status.ok());
}

TEST(Service, HeartbeatsOnQuietStreams) {
  ServerConfig config;
  config.service.heartbeat_interval = 40ms;
  LocalServer s(slow_stub(/*step_ms=*/150), config);
  StreamResult r = generate(s.stub(), stub_request(4));
  ASSERT_TRUE(r.status.ok());
  EXPECT_GE(r.heartbeats, 3);
}

TEST(Service, AuthOnAndOff) {
  ServerConfig config;
  config.service.auth_token = "s3cret";
  LocalServer s({}, config);
  auto list_models = [&](const char* header) {
    grpc::ClientContext ctx;
    if (header) ctx.AddMetadata("authorization", header);
    v1::ListModelsResponse resp;
    return s.stub().ListModels(&ctx, v1::ListModelsRequest(), &resp).error_code();
  };
  EXPECT_EQ(list_models(nullptr), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list_models("Bearer wrong"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list_models("s3cret"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(list_models("Bearer s3cret"), grpc::StatusCode::OK);
  EXPECT_EQ(s.submit(stub_request(), nullptr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(generate(s.stub(), stub_request()).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer s3cret");
    auto reader = s.stub().Generate(&ctx, stub_request());
    StreamResult r = read_stream(reader, [](const v1::JobEvent&) { return true; });
    EXPECT_TRUE(reader->Finish().ok());
  }
  // Health stays open.
  grpc::Status hs;
  EXPECT_EQ(health_check(s.channel(), kHealthReadiness, &hs), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_TRUE(hs.ok());
  // And without a token configured, no header is needed.
  LocalServer open;
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  EXPECT_TRUE(open.stub().ListModels(&ctx, v1::ListModelsRequest(), &resp).ok());
}

TEST(Service, HealthNamesFollowLoading) {
  LocalServer s({}, {}, /*load=*/false);
  using HS = grpc::health::v1::HealthCheckResponse;
  EXPECT_EQ(health_check(s.channel(), kHealthLiveness), HS::SERVING);
  EXPECT_EQ(health_check(s.channel(), kHealthReadiness), HS::NOT_SERVING);
  EXPECT_EQ(health_check(s.channel(), ""), HS::NOT_SERVING);
  EXPECT_EQ(health_check(s.channel(), kHealthVideoService), HS::NOT_SERVING);
  EXPECT_EQ(s.submit(stub_request(), nullptr).error_code(), grpc::StatusCode::UNAVAILABLE);
  s.server().load();
  for (const char* name : {"", kHealthLiveness, kHealthReadiness, kHealthVideoService}) {
    EXPECT_EQ(health_check(s.channel(), name), HS::SERVING) << name;
  }
  grpc::Status st;
  health_check(s.channel(), "no.such.Service", &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(s.submit(stub_request(), nullptr).ok());
}

TEST(Service, DrainRefusesNewJobsAndFinishesRunningOnes) {
  LocalServer s(slow_stub(/*step_ms=*/20));
  std::string running, queued;
  ASSERT_TRUE(s.submit(stub_request(10), &running).ok());
  ASSERT_TRUE(s.wait_state(running, v1::JOB_STATE_RUNNING));
  ASSERT_TRUE(s.submit(stub_request(10), &queued).ok());
  std::thread drainer([&] { s.server().service().drain(5000ms); });
  ASSERT_TRUE(eventually([&] { return s.scheduler().draining(); }));
  EXPECT_EQ(s.submit(stub_request(), nullptr).error_code(), grpc::StatusCode::UNAVAILABLE);
  drainer.join();
  EXPECT_EQ(s.get(running).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(s.get(queued).state(), v1::JOB_STATE_CANCELLED);
}

// Server reflection, called as raw bytes: ServerReflectionRequest{list_services: "*"} is field 7.
grpc::Status reflection_list(const std::shared_ptr<grpc::Channel>& channel, std::string* response) {
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(5000ms));
  auto call = generic.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok = false;
  auto step = [&](intptr_t want) { return cq.Next(&tag, &ok) && reinterpret_cast<intptr_t>(tag) == want; };
  call->StartCall(reinterpret_cast<void*>(1));
  step(1);
  const char req[] = {0x3a, 0x01, '*'};
  grpc::Slice slice(req, sizeof(req));
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  step(2);
  call->WritesDone(reinterpret_cast<void*>(3));
  step(3);
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(4));
  if (step(4) && ok) {
    std::vector<grpc::Slice> slices;
    in.Dump(&slices);
    for (const auto& s : slices) response->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  return status;
}

TEST(Service, ReflectionIsSwitchable) {
  LocalServer on;
  std::string listing;
  ASSERT_TRUE(reflection_list(on.channel(), &listing).ok());
  EXPECT_NE(listing.find("stavid.v1.VideoService"), std::string::npos);
  EXPECT_NE(listing.find("grpc.health.v1.Health"), std::string::npos);
  ServerConfig config;
  config.reflection = false;
  LocalServer off({}, config);
  std::string none;
  EXPECT_EQ(reflection_list(off.channel(), &none).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  // With a bearer token reflection (which cannot check it) is off unless asked for explicitly.
  ServerConfig with_token;
  with_token.service.auth_token = "secret";
  LocalServer guarded({}, with_token);
  EXPECT_EQ(reflection_list(guarded.channel(), &none).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  with_token.reflection_explicit = true;
  LocalServer opted_in({}, with_token);
  EXPECT_TRUE(reflection_list(opted_in.channel(), &none).ok());
}

// A self-signed certificate (CN=localhost, SAN localhost/127.0.0.1, CA:TRUE) from the openssl CLI.
struct TempCert {
  std::filesystem::path dir;
  std::string cert_file, key_file, cert, key;
  bool ok = false;
  explicit TempCert(const std::string& tag) {
    dir = std::filesystem::temp_directory_path() / ("stavid-tls-" + tag + "-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    cert_file = (dir / "cert.pem").string();
    key_file = (dir / "key.pem").string();
    const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
                            " -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
                            " -addext basicConstraints=critical,CA:TRUE"
                            " -keyout " + key_file + " -out " + cert_file + " >/dev/null 2>&1";
    ok = std::system(cmd.c_str()) == 0;
    auto slurp = [](const std::string& p) {
      std::ifstream in(p);
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    };
    if (ok) {
      cert = slurp(cert_file);
      key = slurp(key_file);
    }
  }
  ~TempCert() { std::filesystem::remove_all(dir); }
};

grpc::StatusCode tls_list_models(LocalServer& s, const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  auto stub = v1::VideoService::NewStub(s.make_channel(creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(3000ms));
  v1::ListModelsResponse resp;
  return stub->ListModels(&ctx, v1::ListModelsRequest(), &resp).error_code();
}

TEST(Service, TlsAndClientCertificates) {
  TempCert server_cert("server"), client_cert("client");
  if (!server_cert.ok || !client_cert.ok) GTEST_SKIP() << "the openssl CLI could not make a certificate";
  grpc::SslCredentialsOptions trust;
  trust.pem_root_certs = server_cert.cert;
  {
    ServerConfig config;
    config.tls_cert_file = server_cert.cert_file;
    config.tls_key_file = server_cert.key_file;
    LocalServer s({}, config);
    EXPECT_EQ(tls_list_models(s, grpc::SslCredentials(trust)), grpc::StatusCode::OK);
    EXPECT_EQ(tls_list_models(s, grpc::InsecureChannelCredentials()), grpc::StatusCode::UNAVAILABLE);
    grpc::SslCredentialsOptions wrong;
    wrong.pem_root_certs = client_cert.cert;  // does not vouch for the server
    EXPECT_EQ(tls_list_models(s, grpc::SslCredentials(wrong)), grpc::StatusCode::UNAVAILABLE);
  }
  {
    ServerConfig config;
    config.tls_cert_file = server_cert.cert_file;
    config.tls_key_file = server_cert.key_file;
    config.tls_client_ca_file = client_cert.cert_file;
    LocalServer s({}, config);
    EXPECT_NE(tls_list_models(s, grpc::SslCredentials(trust)), grpc::StatusCode::OK);  // no client cert
    grpc::SslCredentialsOptions mtls = trust;
    mtls.pem_cert_chain = client_cert.cert;
    mtls.pem_private_key = client_cert.key;
    EXPECT_EQ(tls_list_models(s, grpc::SslCredentials(mtls)), grpc::StatusCode::OK);
    grpc::SslCredentialsOptions self_signed_other = trust;
    self_signed_other.pem_cert_chain = server_cert.cert;  // not signed by the client CA
    self_signed_other.pem_private_key = server_cert.key;
    EXPECT_NE(tls_list_models(s, grpc::SslCredentials(self_signed_other)), grpc::StatusCode::OK);
  }
}

TEST(Service, MetricsCountRequestsJobsStagesAndProcess) {
  ServerConfig config;
  config.metrics_listen = "127.0.0.1:0";
  LocalServer s({}, config);
  ASSERT_GT(s.server().metrics_port(), 0);
  v1::GenerateRequest req = stub_request(4);
  req.set_teacache_threshold(0.1f);
  ASSERT_TRUE(generate(s.stub(), req).status.ok());
  std::string id;
  ASSERT_TRUE(s.submit(stub_request(2), &id).ok());
  ASSERT_TRUE(s.wait_state(id, v1::JOB_STATE_SUCCEEDED));
  s.get("job-999999");
  const std::string text = s.server().metrics()->scrape();
  for (const char* want : {
           "stavid_requests_total{code=\"OK\",rpc=\"Generate\"} 1",
           "stavid_requests_total{code=\"OK\",rpc=\"SubmitJob\"} 1",
           "stavid_requests_total{code=\"NOT_FOUND\",rpc=\"GetJob\"} 1",
           "stavid_jobs_total{outcome=\"succeeded\",worker=\"cpu0\"} 2",
           "stavid_job_duration_seconds_count{outcome=\"succeeded\"} 2",
           "stavid_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"3600\"} 2",
           "stavid_job_duration_seconds_bucket{outcome=\"succeeded\",le=\"0.05\"}",
           "stavid_queue_wait_seconds_count 2",
           "stavid_stage_duration_seconds_count{stage=\"denoise\",worker=\"cpu0\"} 2",
           "stavid_step_duration_seconds_count{worker=\"cpu0\"} 6",
           "stavid_worker_group_size{worker=\"cpu0\"} 1",
           "stavid_denoise_steps_total 6",
           "stavid_teacache_skipped_steps_total 2",
           "stavid_queue_depth 0",
           "stavid_jobs_in_flight 0",
           "stavid_workers{state=\"idle\"} 1",
           "stavid_build_info{version=",
           "process_cpu_seconds_total",
           "process_resident_memory_bytes",
           "process_virtual_memory_bytes",
           "process_open_fds",
           "process_start_time_seconds",
           "process_threads",
       }) {
    EXPECT_NE(text.find(want), std::string::npos) << want;
  }
  EXPECT_EQ(text.find("job-"), std::string::npos);  // never a job id in a label
  EXPECT_EQ(text.find("stavid_gpu_memory_used_bytes"), std::string::npos);  // no reader on the CPU
  s.server().metrics()->set_gpu_memory_reader([] {
    return std::vector<GpuMemoryUsage>{{0, 1000, 2000}, {1, 10, 0}};
  });
  const std::string gpu = s.server().metrics()->scrape();
  EXPECT_NE(gpu.find("stavid_gpu_memory_used_bytes{gpu=\"1\"} 10"), std::string::npos);
  EXPECT_NE(gpu.find("stavid_gpu_memory_total_bytes{gpu=\"0\"} 2000"), std::string::npos);
}

// A TCP connection to 127.0.0.1:port with a 5 s receive timeout, or -1.
int connect_loopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` and returns everything the server answers until it closes.
std::string http_exchange(int port, const std::string& request) {
  const int fd = connect_loopback(port);
  if (fd < 0) return "";
  std::string resp;
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[4096];
    for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) resp.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return resp;
}

TEST(Metrics, HttpEndpointServesMetricsOnly) {
  Metrics m("127.0.0.1:0", "9.8.7");
  ASSERT_GT(m.port(), 0);
  const std::string ok = http_exchange(m.port(), "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok.substr(0, 200);
  EXPECT_NE(ok.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), std::string::npos);
  EXPECT_NE(ok.find("\r\nConnection: close\r\n"), std::string::npos);
  const size_t body = ok.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  EXPECT_NE(ok.find("\r\nContent-Length: " + std::to_string(ok.size() - body - 4) + "\r\n"), std::string::npos);
  EXPECT_NE(ok.find("stavid_build_info{version=\"9.8.7\"} 1"), std::string::npos);
  EXPECT_NE(ok.find("process_threads"), std::string::npos);
  EXPECT_EQ(http_exchange(m.port(), "GET /metrics?x=1 HTTP/1.0\r\n\r\n").rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  for (const char* path : {"/", "/metric", "/metrics/x"}) {
    const std::string resp = http_exchange(m.port(), std::string("GET ") + path + " HTTP/1.1\r\n\r\n");
    EXPECT_EQ(resp.rfind("HTTP/1.1 404 Not Found\r\n", 0), 0u) << path;
  }
  const std::string post = http_exchange(m.port(), "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405 ", 0), 0u);
  EXPECT_EQ(http_exchange(m.port(), "garbage\r\n\r\n").rfind("HTTP/1.1 400 ", 0), 0u);
  const std::string huge = "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n";
  EXPECT_EQ(http_exchange(m.port(), huge).rfind("HTTP/1.1 400 ", 0), 0u);

  // The port is taken: the same error text as strerror.
  try {
    Metrics taken("127.0.0.1:" + std::to_string(m.port()), "1");
    ADD_FAILURE() << "bound a port in use";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
  EXPECT_ANY_THROW(Metrics("no-port", "1"));
  EXPECT_ANY_THROW(Metrics("127.0.0.1:99999", "1"));
}

TEST(Metrics, SilentClientDelaysTheNextScrapeByAtMostTheHeadTimeout) {
  auto m = std::make_unique<Metrics>("127.0.0.1:0", "1");
  const int silent = connect_loopback(m->port());
  ASSERT_GE(silent, 0);
  const auto start = std::chrono::steady_clock::now();
  const std::string ok = http_exchange(m->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  EXPECT_LT(waited, 3500ms);  // head timeout 2 s
  char byte;
  EXPECT_EQ(recv(silent, &byte, 1, 0), 0);  // the silent client was dropped without an answer
  close(silent);

  // Destruction does not wait out a client that is still silent.
  const int another = connect_loopback(m->port());
  ASSERT_GE(another, 0);
  std::this_thread::sleep_for(50ms);
  const auto stop = std::chrono::steady_clock::now();
  m.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - stop, 500ms);
  close(another);
}

TEST(ServerFlags, ParseAndReject) {
  ServerConfig c = parse_server_flags({"--listen=127.0.0.1:1234", "--max-queue", "8", "--drain-budget=2.5",
                                       "--heartbeat=0.5", "--max-frames=33", "--no-reflection", "--stub",
                                       "--stub-step-ms=3", "--metrics-listen=off"});
  EXPECT_EQ(c.listen, "127.0.0.1:1234");
  EXPECT_EQ(c.service.max_queue, 8u);
  EXPECT_EQ(c.drain_budget, 2500ms);
  EXPECT_EQ(c.service.heartbeat_interval, 500ms);
  EXPECT_EQ(c.service.limits.max_frames, 33u);
  EXPECT_FALSE(c.reflection);
  EXPECT_TRUE(c.stub);
  EXPECT_EQ(c.stub_options.step_time, std::chrono::microseconds(3000));
  EXPECT_TRUE(c.metrics_listen.empty());
  EXPECT_TRUE(c.gpu_groups.empty());
  EXPECT_EQ(parse_server_flags({"--gpu-groups=4,2,1,1"}).gpu_groups, (std::vector<int>{4, 2, 1, 1}));
  EXPECT_EQ(parse_server_flags({"--gpu-groups", "8"}).gpu_groups, (std::vector<int>{8}));
  for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{
           {"--gpu-groups=4,0"}, {"--gpu-groups="}, {"--gpu-groups=2,x"},
           {"--nope"}, {"--max-queue=0"}, {"--max-queue=-3"}, {"--max-steps=abc"}, {"--listen"},
           {"--tls-cert=a.pem"}, {"--tls-client-ca=ca.pem"}, {"--stub=1"}, {"positional"},
           {"--auth-token-file=/nonexistent/token"}}) {
    EXPECT_ANY_THROW(parse_server_flags(bad)) << bad[0];
  }
}

}  // namespace
}  // namespace stavid::server::testing
