// bench_service: the service's own overhead over a stub pipeline that sleeps 0 per step, on loopback
// in one process. Prints one JSON object per line:
//   {"bench":"service_roundtrip", ...}  SubmitJob + GetJob round trips per second from N client threads
//   {"bench":"service_event_latency", ...}  worker -> client latency of stream events (p50/p99, ms),
//     measured on previews that carry their emission time (StubPipeline::preview_timestamp_ns)
// Usage: bench_service [--seconds=S] [--threads=N] [--step-ms=MS]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "server/server.h"

namespace {

using namespace std::chrono_literals;
namespace v1 = stavid::v1;
using stavid::server::ServerConfig;
using stavid::server::StavidServer;
using stavid::server::StubPipeline;
using stavid::server::StubPipelineOptions;

v1::GenerateRequest stub_request(uint32_t steps, uint32_t preview_every) {
  v1::GenerateRequest r;
  r.set_model("stub");
  r.set_prompt("benchmark");
  r.set_steps(steps);
  r.set_seed(1);
  r.set_preview_every_steps(preview_every);
  return r;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

void roundtrips(StavidServer& server, double seconds, int threads) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()), grpc::InsecureChannelCredentials());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done{0}, rejected{0}, errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      auto stub = v1::VideoService::NewStub(channel);
      while (!stop.load(std::memory_order_relaxed)) {
        grpc::ClientContext sctx;
        v1::SubmitJobRequest sreq;
        *sreq.mutable_request() = stub_request(1, 0);
        v1::SubmitJobResponse sresp;
        grpc::Status s = stub->SubmitJob(&sctx, sreq, &sresp);
        if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ++rejected;
          continue;
        }
        if (!s.ok()) {
          ++errors;
          continue;
        }
        grpc::ClientContext gctx;
        v1::GetJobRequest greq;
        greq.set_job_id(sresp.job_id());
        v1::Job job;
        if (stub->GetJob(&gctx, greq, &job).ok()) {
          ++done;
        } else {
          ++errors;
        }
      }
    });
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : pool) t.join();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "{\"bench\":\"service_roundtrip\",\"threads\":%d,\"seconds\":%.2f,\"submit_get_per_s\":%.0f,"
      "\"round_trips\":%llu,\"rejected\":%llu,\"errors\":%llu,\"cores\":%u}\n",
      threads, elapsed, static_cast<double>(done.load()) / elapsed, static_cast<unsigned long long>(done.load()),
      static_cast<unsigned long long>(rejected.load()), static_cast<unsigned long long>(errors.load()),
      std::thread::hardware_concurrency());
}

void event_latency(StavidServer& server, int jobs, uint32_t steps, double step_ms) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()), grpc::InsecureChannelCredentials());
  auto stub = v1::VideoService::NewStub(channel);
  std::vector<double> ms;
  int failures = 0;
  for (int j = 0; j < jobs; ++j) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    auto reader = stub->Generate(&ctx, stub_request(steps, 1));
    v1::JobEvent e;
    while (reader->Read(&e)) {
      if (!e.has_preview()) continue;
      const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now().time_since_epoch())
                              .count();
      ms.push_back(static_cast<double>(now - StubPipeline::preview_timestamp_ns(e.preview())) / 1e6);
    }
    failures += !reader->Finish().ok();
  }
  std::printf(
      "{\"bench\":\"service_event_latency\",\"step_ms\":%.1f,\"jobs\":%d,\"events\":%zu,\"p50_ms\":%.3f,"
      "\"p99_ms\":%.3f,\"max_ms\":%.3f,\"failures\":%d}\n",
      step_ms, jobs, ms.size(), percentile(ms, 0.5), percentile(ms, 0.99), percentile(ms, 1.0), failures);
}

std::unique_ptr<StavidServer> make_server(double step_ms) {
  ServerConfig config;
  config.listen = "127.0.0.1:0";
  config.metrics_listen = "";
  config.service.max_queue = 4096;
  config.service.result_ttl = std::chrono::seconds(60);
  StubPipelineOptions stub;
  stub.result_bytes = 1024;
  stub.step_time = std::chrono::microseconds(static_cast<int64_t>(step_ms * 1000));
  auto server = std::make_unique<StavidServer>(config, std::make_unique<StubPipeline>(stub));
  server->start();
  server->load();
  return server;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3.0;
  int threads = 4;
  double step_ms = 1.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--seconds=", 0) == 0) {
      seconds = std::stod(a.substr(10));
    } else if (a.rfind("--threads=", 0) == 0) {
      threads = std::stoi(a.substr(10));
    } else if (a.rfind("--step-ms=", 0) == 0) {
      step_ms = std::stod(a.substr(10));
    } else {
      std::fprintf(stderr, "usage: bench_service [--seconds=S] [--threads=N] [--step-ms=MS]\n");
      return 2;
    }
  }
  {
    auto server = make_server(0.0);
    roundtrips(*server, seconds, threads);
    event_latency(*server, /*jobs=*/10, /*steps=*/100, 0.0);  // a burst: 100 events as fast as they come
    server->shutdown(std::chrono::milliseconds(0));
  }
  {
    auto server = make_server(step_ms);  // events paced like real (if fast) steps
    event_latency(*server, /*jobs=*/5, /*steps=*/100, step_ms);
    server->shutdown(std::chrono::milliseconds(0));
  }
  return 0;
}
