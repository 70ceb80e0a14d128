// ModelPipeline: the Pipeline (server/pipeline.h) on the real models of a serving config
// (server/model_config.h): prompt -> text conditioning (PromptEncoder, or a fixed embeddings file) ->
// flow-matching Euler steps of the HunyuanVideo DiT with STA and optional TeaCache -> causal VAE
// decode under a memory budget -> H.264 MP4 (faststart). server/render.cc is the same path offline.
//
// Workers: one per visible CUDA device (worker w on cuda:w, bf16), or `cpu_workers` CPU workers
// (fp32) when there is none or CUDA is switched off. Every worker owns its own instance of every model
// (DiT, VAE, text encoders or embeddings); tokenizers and parsed strategies are shared (immutable).
// GPU groups (PipelineOptions::group_sizes, docs/parallel.md): a worker may instead be a group of k
// devices running one job together with Ulysses sequence parallelism (8 GPUs as 1x8, 2x4, 4x2 or
// 8x1, or mixed such as 4,2,1,1). Each rank holds the DiT and the VAE; the text encoders live on rank
// 0, which broadcasts the conditioning. Rank r of a job runs on its own thread with the rank's
// persistent stream; rank 0 reports stages, steps and previews and encodes the MP4. Denoising is
// split by heads/tokens, the VAE decode by spatial tiles (parallel::plan_with_tiles). Loading fails
// with InvalidArgument when a group size does not divide a model's attention heads. After a failed or
// cancelled group job the group's communicators are rebuilt (a failing rank aborts the group).
//
// Per job (run): stages "text", "denoise", "decode", "encode" are reported start and end; every
// denoise step is reported (skipped = TeaCache reused the cached residual); cancellation is checked
// before each stage, after every denoise step (and between the two forwards of true CFG), before every
// VAE chunk/tile and between encoded frames, so a cancelled job frees its worker within one step.
// Determinism: the noise is Philox(seed) and every op is deterministic on one device type, so the
// same request and seed give the same frames; the MP4 bytes are identical too at the x264 presets
// without lookahead (ultrafast; see mp4_writer.h for the others).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/model_config.h"
#include "server/pipeline.h"

namespace stavid::server {

// Test-only: makes jobs fail with stavid::Error(Internal) right after denoise step `at_step`
// (0-based) is reported, for the service's fault tests. Off when at_step < 0.
struct FaultInjection {
  int32_t at_step = -1;
  std::string prompt_marker;  // only jobs whose prompt contains this ("" = every job)
};

struct PipelineOptions {
  bool use_cuda = true;   // false: CPU workers even when GPUs are visible
  int max_gpus = 0;       // at most this many GPU workers (0: every visible GPU)
  int cpu_workers = 1;    // CPU workers when no GPU is used, >= 1
  // Devices per worker, one entry per worker (e.g. {4, 4}: 8 GPUs as 2x4). Empty: one device per
  // worker. GPU groups take consecutive ordinals and must fit the visible GPUs (max_gpus is then
  // ignored); without GPUs every entry is a CPU worker of that many CPU ranks (cpu_workers ignored).
  std::vector<int> group_sizes;
  int32_t default_crf = 18;              // OutputOptions defaults
  std::string default_preset = "medium";
  FaultInjection fault;   // test only
};

class ModelPipeline final : public Pipeline {
 public:
  explicit ModelPipeline(ServingConfig config, PipelineOptions options = {});
  ~ModelPipeline() override;
  ModelPipeline(const ModelPipeline&) = delete;
  ModelPipeline& operator=(const ModelPipeline&) = delete;

  void load() override;
  int num_workers() const override;
  std::string worker_name(int worker) const override;
  std::vector<uint32_t> worker_gpus(int worker) const override;
  int worker_group_size(int worker) const override;  // the ranks of its group
  std::vector<stavid::v1::ModelInfo> models() const override;
  stavid::v1::GenerateRequest normalize(const stavid::v1::GenerateRequest& request,
                                        const RequestLimits& limits) const override;
  // Estimate (bytes on one worker's device; esz = 2 on the GPU (bf16), 4 on the CPU):
  //   weights of the requested model (DiT + VAE decoder + text encoders' loaded layers) * esz
  //   + max over the stages of their peak working set:
  //     text:    LLM activations (crop_start + max_length tokens per prompt) + its score buffer
  //     denoise: N tokens (image tokens + text slots) * (12 D + 2 F) * esz for one block's
  //              activations (D hidden, F MLP hidden), TeaCache state 2 * N_img * D * esz per
  //              forward stream, and the fp32 latents (noise, x, velocities, preview copy)
  //     decode:  VaeDecoder::estimate_peak_bytes for the plan the VAE budget gives, plus the latents.
  // A request whose VAE plan cannot fit the model's VAE budget gets SIZE_MAX (never admitted).
  size_t memory_estimate(const stavid::v1::GenerateRequest& normalized) const override;
  stavid::v1::JobCompleted run(JobContext& ctx, const stavid::v1::GenerateRequest& normalized) override;

  bool loaded() const { return loaded_.load(std::memory_order_acquire); }
  const ServingConfig& config() const { return config_; }

 private:
  struct ModelState;
  struct WorkerModel;
  struct Rank;
  struct Worker;
  const ModelState& model_state(const std::string& name) const;
  bool has_group_size(int size) const;
  std::string group_sizes_text() const;  // the distinct group sizes, ascending ("1, 2")
  size_t model_index(const std::string& name) const;
  // One rank's share of run(): every rank of a group calls it with the same request and seed.
  stavid::v1::JobCompleted run_rank(JobContext& ctx, const stavid::v1::GenerateRequest& normalized, Worker& w,
                                    int rank, uint64_t seed);

  const ServingConfig config_;
  const PipelineOptions options_;
  std::vector<std::unique_ptr<ModelState>> models_;  // one per config model, after load()
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<bool> loaded_{false};
};

}  // namespace stavid::server
