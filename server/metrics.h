// Prometheus metrics for the service (prometheus-cpp, Debian 1.0.1): prefix `stavid_`, base units
// (seconds, bytes), counters end in `_total`, latency as histograms with buckets from 0.05 s to
// 3600 s. Label values are small closed sets (RPC names, status code names, stages, outcomes,
// worker states, GPU ordinals, worker names such as "gpu0-3" or "cpu"): never job ids or prompts. Gauges that describe the present (queue
// depth, jobs in flight, workers by state, GPU memory) and the `process_*` family (from /proc) are
// computed when scraped. `GET /metrics` is served by a small HTTP/1.1 endpoint of our own on one
// std::thread (not prometheus-cpp's civetweb Exposer: its fixed small thread stacks cannot hold the
// static TLS of cuBLAS and OpenBLAS, so its threads fail to start in stavid_server). No gRPC type here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace stavid::server {

// What the service reports at scrape time.
struct ServiceGauges {
  size_t queue_depth = 0;     // queued jobs
  size_t jobs_in_flight = 0;  // running jobs
  size_t workers = 0;         // total workers
  size_t result_store_bytes = 0;
  bool ready = false;
  bool draining = false;
};

struct GpuMemoryUsage {
  int gpu = 0;                // CUDA ordinal
  uint64_t used_bytes = 0;
  uint64_t total_bytes = 0;   // 0 when unknown
};
// Pluggable reader of per-GPU memory (cudaMemGetInfo lives on the pipeline side); empty on the CPU.
using GpuMemoryReader = std::function<std::vector<GpuMemoryUsage>()>;

// The histogram buckets used for every duration (seconds): 0.05 s .. 3600 s.
const std::vector<double>& duration_buckets_seconds();

class Metrics {
 public:
  // listen_address: "host:port" for the HTTP endpoint ("[::1]:port" for IPv6, port 0 picks a free
  // one), or "" for none (tests read scrape()). version goes into stavid_build_info. Throws
  // std::system_error (what(): the strerror text) when the port cannot be bound, and
  // std::invalid_argument / std::runtime_error for an address that does not parse or resolve.
  Metrics(const std::string& listen_address, const std::string& version);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The bound HTTP port, or 0 without an endpoint.
  int port() const { return port_; }

  void set_gauge_source(std::function<ServiceGauges()> source);
  void set_gpu_memory_reader(GpuMemoryReader reader);

  // One finished RPC: rpc is the method name ("Generate"), code a status code name ("OK").
  void count_request(std::string_view rpc, std::string_view code);
  // A job left the queue after waiting this long.
  void observe_queue_wait(double seconds);
  // The workers and their group sizes (devices per worker), for stavid_worker_group_size.
  void set_worker_groups(const std::vector<std::pair<std::string, int>>& workers);
  // A job ended (outcome: "succeeded", "failed", "cancelled") this long after submission; worker is
  // the name of the worker that ran it ("none" when it never ran).
  void observe_job(std::string_view outcome, double seconds, std::string_view worker = "none");
  void observe_stage(std::string_view stage, double seconds, std::string_view worker);
  void observe_step(double seconds, bool skipped_by_teacache, std::string_view worker);

  // The text exposition of everything (what /metrics serves).
  std::string scrape() const;

 private:
  class DynamicCollector;
  class HttpEndpoint;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<DynamicCollector> dynamic_;
  int port_ = 0;

  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Counter>* jobs_ = nullptr;
  prometheus::Family<prometheus::Histogram>* job_seconds_ = nullptr;
  prometheus::Family<prometheus::Histogram>* stage_seconds_ = nullptr;
  prometheus::Family<prometheus::Gauge>* worker_group_size_ = nullptr;
  prometheus::Histogram* queue_wait_ = nullptr;
  prometheus::Family<prometheus::Histogram>* step_seconds_ = nullptr;
  prometheus::Counter* steps_ = nullptr;
  prometheus::Counter* skipped_steps_ = nullptr;
  std::unique_ptr<HttpEndpoint> http_;  // last: stopped before the rest it scrapes is destroyed
};

}  // namespace stavid::server
