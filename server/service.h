// VideoService: stavid.v1.VideoService on gRPC's callback API over the Scheduler and a Pipeline.
//
// Policy and invariants:
// - No model work on gRPC threads: handlers validate (Pipeline::normalize), submit and subscribe;
//   Pipeline::run runs on the scheduler's workers. The scheduler payload is the normalized request.
// - Streams (Generate, WatchJob) are one EventStream reactor each: scheduler events are mapped to
//   proto JobEvents and queued in the reactor; one write is in flight at a time, the next starts in
//   OnWriteDone. A finished job's result follows as ResultChunks (<= 1 MiB, total size and SHA-256
//   on the last), then JobCompleted; the stream then ends OK. A failed or cancelled job ends with a
//   JobFailed event and the stream ends with the job's status (CANCELLED, DEADLINE_EXCEEDED,
//   INTERNAL, ...). Quiet streams get a Heartbeat every heartbeat_interval.
// - A Generate call that ends early (client gone, deadline) cancels its job; a job made by SubmitJob
//   is cancelled only by CancelJob (or by drain).
// - Status codes: see the proto's header comment and docs/api.md. Admission errors come from the
//   scheduler (RESOURCE_EXHAUSTED, UNAVAILABLE, ALREADY_EXISTS); validation from the pipeline and
//   from the service's own checks (INVALID_ARGUMENT); UNAVAILABLE before start() and while draining.
// - Auth: with a token configured, every RPC of this service needs `authorization: Bearer <token>`
//   metadata, else UNAUTHENTICATED (health is a separate service and stays open).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "server/metrics.h"
#include "server/pipeline.h"
#include "server/scheduler.h"
#include "stavid/v1/video.grpc.pb.h"

namespace stavid::server {

struct ServiceOptions {
  RequestLimits limits;
  size_t max_queue = 16;
  size_t worker_memory_budget = 0;            // bytes; 0 = no limit
  std::chrono::seconds result_ttl{600};
  size_t max_result_bytes = size_t{256} << 20;
  std::chrono::seconds default_queue_timeout{0};  // when a request gives 0; 0 = none
  std::chrono::milliseconds heartbeat_interval{10000};
  std::string auth_token;  // empty: no auth
};

// Maximum ResultChunk payload.
inline constexpr size_t kResultChunkBytes = size_t{1} << 20;

class EventStream;

class VideoService final : public stavid::v1::VideoService::CallbackService {
 public:
  // pipeline and metrics (optional) must outlive the service.
  VideoService(Pipeline& pipeline, ServiceOptions options, Metrics* metrics = nullptr);
  ~VideoService() override;

  // Loads the pipeline and starts the scheduler; RPCs answer UNAVAILABLE until it returns.
  void start();
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // Stops accepting jobs (UNAVAILABLE), cancels queued ones, lets running ones finish within
  // `budget`, then cancels them and waits for their runners to return.
  void drain(std::chrono::milliseconds budget);
  // Null before start(). For tests and the server's gauges.
  Scheduler* scheduler() const { return ready() ? scheduler_.get() : nullptr; }
  Pipeline& pipeline() { return pipeline_; }
  // Streams alive now (tests check that none leak).
  size_t active_streams() const;

  grpc::ServerWriteReactor<stavid::v1::JobEvent>* Generate(grpc::CallbackServerContext* ctx,
                                                           const stavid::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx, const stavid::v1::SubmitJobRequest* request,
                                      stavid::v1::SubmitJobResponse* response) override;
  grpc::ServerWriteReactor<stavid::v1::JobEvent>* WatchJob(grpc::CallbackServerContext* ctx,
                                                           const stavid::v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const stavid::v1::GetJobRequest* request,
                                   stavid::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx, const stavid::v1::ListJobsRequest* request,
                                     stavid::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx, const stavid::v1::CancelJobRequest* request,
                                      stavid::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const stavid::v1::ListModelsRequest* request,
                                       stavid::v1::ListModelsResponse* response) override;

 private:
  friend class EventStream;

  // UNAVAILABLE before start(), UNAUTHENTICATED on a bad token, else OK.
  grpc::Status check_call(grpc::CallbackServerContext* ctx) const;
  // Validation and admission; returns the job id or throws SubmitError.
  // With a callback, the job is submitted and subscribed in one step (Generate).
  std::string submit(const stavid::v1::GenerateRequest& request, const std::string& client_job_id,
                     size_t* queue_position, EventCallback callback = nullptr, Subscription* subscription = nullptr);
  grpc::ServerUnaryReactor* finish_unary(grpc::CallbackServerContext* ctx, const char* rpc, const grpc::Status& status);
  stavid::v1::Job job_proto(const JobSnapshot& snap) const;
  void run_job(JobContext& ctx);
  void observe(const JobEvent& event);
  void count_request(const char* rpc, grpc::StatusCode code);
  void register_stream(EventStream* stream);
  void unregister_stream(EventStream* stream);
  void heartbeat_loop();

  Pipeline& pipeline_;
  const ServiceOptions options_;
  Metrics* const metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  std::atomic<bool> ready_{false};

  mutable std::mutex streams_mu_;
  std::condition_variable streams_cv_;
  std::set<EventStream*> streams_;
  bool stopping_ = false;
  std::thread heartbeat_;
};

// SHA-256 of bytes (OpenSSL), 32 raw bytes.
std::string sha256(const uint8_t* data, size_t size);

}  // namespace stavid::server
