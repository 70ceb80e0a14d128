// The generation pipeline as the service's workers see it (the contract between the service and the
// pipeline; server/model_pipeline.h is the implementation on the real models). The service owns one
// Pipeline: it loads it at start, normalizes and admits requests with it, and its workers call run().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/scheduler.h"
#include "stavid/v1/video.pb.h"

namespace stavid::server {

// Server-wide request limits (flags/config override the defaults); a model may be stricter.
struct RequestLimits {
  uint32_t max_frames = 129;
  uint64_t max_pixels = 720ull * 1280ull;  // height * width
  uint32_t max_steps = 200;
  size_t max_prompt_bytes = 4096;
};

// What a worker runs. One Pipeline serves all workers; it owns per-worker model instances (worker w
// runs on the device the pipeline assigned to it: CUDA ordinal w when GPUs exist, else the CPU).
// Thread-safety: models()/normalize()/memory_estimate() from any thread; run() concurrently from
// different workers (each worker index at most once at a time).
class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Loads every model for every worker; throws stavid::Error with a clear message on missing or
  // corrupt weights/config. The service reports readiness only after this returns.
  virtual void load() = 0;
  virtual int num_workers() const = 0;
  // Worker label and GPU ordinals for JobStarted ("gpu0" / {0}; "cpu" / {}).
  virtual std::string worker_name(int worker) const = 0;
  virtual std::vector<uint32_t> worker_gpus(int worker) const = 0;
  // Devices (ranks) of the worker's group: 1 unless the pipeline runs sequence-parallel groups.
  // normalize() resolves GenerateRequest.gpu_group_size to 0 (any worker) or one of these sizes,
  // and the service lets only the workers of that size take the job.
  virtual int worker_group_size(int worker) const { return 1; }
  virtual std::vector<stavid::v1::ModelInfo> models() const = 0;
  // Applies defaults (steps, guidance, shift, fps, crf, preset, STA kind, ...) and validates every
  // field against the model and `limits` (gpu_group_size: 0 = the model's default, else a size some
  // worker has). Throws SubmitError(StatusCode::InvalidArgument, message
  // naming the field and the allowed range) on a bad request. Seed 0 stays 0 (run() picks one).
  virtual stavid::v1::GenerateRequest normalize(const stavid::v1::GenerateRequest& request,
                                                const RequestLimits& limits) const = 0;
  // Peak device memory the job needs on one worker (bytes), for admission control.
  virtual size_t memory_estimate(const stavid::v1::GenerateRequest& normalized) const = 0;
  // Runs one normalized request on ctx.worker(): reports ctx.stage("text"|"denoise"|"decode"|
  // "encode", ...) and ctx.step(...) for every denoise step (skipped = TeaCache), checks
  // ctx.throw_if_cancelled() between denoise steps and VAE chunks, emits previews as
  // ctx.emit_data("preview", <serialized stavid.v1.PreviewFrame>) every preview_every_steps steps,
  // calls ctx.set_result(<mp4 bytes>) and returns the completion summary (seed actually used,
  // frames, size, per-stage seconds, teacache_skipped_steps, sta_sparsity, result_bytes;
  // queue_seconds and total_seconds are filled in by the service). Errors: stavid::Error (mapped
  // to a status by the scheduler) or JobCancelled.
  virtual stavid::v1::JobCompleted run(JobContext& ctx, const stavid::v1::GenerateRequest& normalized) = 0;
};

}  // namespace stavid::server
