// stavid_server: the gRPC video service (flags: stavid_server --help). The model pipeline is plugged
// in through the factory below; without one the binary serves only --stub.
#include "server/server.h"

int main(int argc, char** argv) {
  const stavid::server::PipelineFactory make_model_pipeline;  // ModelPipeline is wired in at merge
  return stavid::server::server_main(argc, argv, make_model_pipeline);
}
