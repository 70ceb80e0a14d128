// StubPipeline: a Pipeline without a model, for the service tests, the overhead benchmark and
// `stavid_server --stub`. It validates requests like a model would (service-level and geometry
// fields), sleeps a configurable time per denoise step (0 allowed), reports stages, steps and
// previews, and returns a deterministic blob derived from the seed. Fault injection: a prompt
// containing StubPipelineOptions::fail_marker throws std::runtime_error halfway through denoising.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>

#include "server/pipeline.h"

namespace stavid::server {

struct StubPipelineOptions {
  int workers = 1;
  std::chrono::microseconds step_time{0};  // sleep per denoise step
  std::chrono::milliseconds load_time{0};  // sleep in load()
  size_t result_bytes = 4096;              // size of the result blob
  std::string fail_marker;                 // empty: never fail
  size_t memory_per_voxel = 0;             // memory_estimate = frames * height * width * this
};

class StubPipeline final : public Pipeline {
 public:
  static constexpr const char* kModelName = "stub";
  static constexpr const char* kStrategyName = "stub-calibrated";
  static constexpr uint32_t kDefaultSteps = 4;

  explicit StubPipeline(StubPipelineOptions options = {});
  void load() override;
  bool loaded() const { return loaded_; }
  int num_workers() const override { return options_.workers; }
  std::string worker_name(int worker) const override;
  std::vector<uint32_t> worker_gpus(int worker) const override { return {}; }
  std::vector<stavid::v1::ModelInfo> models() const override;
  stavid::v1::GenerateRequest normalize(const stavid::v1::GenerateRequest& request,
                                        const RequestLimits& limits) const override;
  size_t memory_estimate(const stavid::v1::GenerateRequest& normalized) const override;
  stavid::v1::JobCompleted run(JobContext& ctx, const stavid::v1::GenerateRequest& normalized) override;

  // The blob run() returns for a seed (tests compare against it).
  static Bytes result_for_seed(uint64_t seed, size_t size);
  // Previews carry the steady_clock time of emission (nanoseconds, 8 bytes little-endian) first in
  // their data, so a client in the same process can measure worker -> client latency.
  static int64_t preview_timestamp_ns(const stavid::v1::PreviewFrame& frame);

 private:
  StubPipelineOptions options_;
  std::atomic<bool> loaded_{false};
};

}  // namespace stavid::server
