// stavid_server: the gRPC video service (flags: stavid_server --help). Serves the models of a JSON
// serving config (--config, docs/serving-config.md) through ModelPipeline: one worker per visible GPU
// (bf16), else CPU workers (fp32); --stub serves the stub pipeline instead (tests, benchmarks).
#include <memory>
#include <vector>

#include "kernels/core/device.h"
#include "model/runtime/cuda_runtime.h"
#include "server/model_config.h"
#include "server/model_pipeline.h"
#include "server/server.h"

namespace {
using namespace stavid;

std::unique_ptr<server::Pipeline> make_model_pipeline(const server::ServerConfig& config) {
  STAVID_CHECK(!config.config_file.empty(), "stavid_server: --config FILE (the models to serve) is required without --stub");
  server::PipelineOptions options;
  if (config.workers > 0) {
    options.max_gpus = config.workers;
    options.cpu_workers = config.workers;
  }
  options.group_sizes = config.gpu_groups;
  return std::make_unique<server::ModelPipeline>(server::ServingConfig::from_file(config.config_file), options);
}

// Device memory in use per GPU (cudaMemGetInfo: total - free, every process included).
std::vector<server::GpuMemoryUsage> gpu_memory() {
  std::vector<server::GpuMemoryUsage> out;
  for (int d = 0; d < rt::cuda_device_count(); ++d) {
    size_t free_bytes = 0, total_bytes = 0;
    rt::device_memory_info(Device::cuda(d), &free_bytes, &total_bytes);
    out.push_back({d, total_bytes - free_bytes, total_bytes});
  }
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  return stavid::server::server_main(argc, argv, make_model_pipeline, gpu_memory);
}
