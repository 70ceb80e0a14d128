// StavidServer: the gRPC server around a VideoService: listening address, optional TLS (server
// cert/key, optional client CA -> client certificates required and verified), bearer-token auth,
// grpc.health.v1 (names "", "liveness", "readiness", "stavid.v1.VideoService"), switchable
// reflection, the metrics exposer, and graceful drain. Also the command-line flags of
// `stavid_server` (parse_server_flags) and its main loop (server_main), which takes the pipeline
// factory so the binary links whichever Pipeline the build provides.
//
// Lifecycle: start() binds and serves (liveness SERVING, readiness NOT_SERVING, the video service
// UNAVAILABLE); load() loads the pipeline and starts the scheduler (readiness SERVING); shutdown()
// sets readiness NOT_SERVING, drains the scheduler within the budget (new jobs UNAVAILABLE; running
// jobs finish or are cancelled), lets the streams write their last events (shutdown_grace), then
// Server::Shutdown.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "server/metrics.h"
#include "server/pipeline.h"
#include "server/service.h"
#include "server/stub_pipeline.h"

namespace grpc {
class Server;
}

namespace stavid::server {

inline constexpr const char* kHealthLiveness = "liveness";
inline constexpr const char* kHealthReadiness = "readiness";
inline constexpr const char* kHealthVideoService = "stavid.v1.VideoService";

struct ServerConfig {
  std::string listen = "0.0.0.0:50051";        // port 0 picks a free one
  std::string metrics_listen = "0.0.0.0:9464";  // "" disables the exposer
  std::string tls_cert_file;                    // PEM; with tls_key_file turns TLS on
  std::string tls_key_file;
  std::string tls_client_ca_file;  // PEM; requires and verifies client certificates
  // Server reflection. Reflection is not token-checked (it is not a VideoService method), so with an
  // auth token it stays off unless asked for explicitly (reflection_explicit, i.e. --reflection).
  bool reflection = true;
  bool reflection_explicit = false;
  std::chrono::milliseconds drain_budget{30000};
  std::chrono::milliseconds shutdown_grace{5000};  // after the drain: time streams get to finish writing
  ServiceOptions service;
  std::string config_file;  // the pipeline's models config (JSON)
  int workers = 0;          // 0: the pipeline decides (one per GPU, else one CPU worker)
  std::vector<int> gpu_groups;  // devices per worker (sequence-parallel groups); empty: one each
  bool stub = false;        // serve StubPipeline instead of models (tests, overhead benchmarks)
  StubPipelineOptions stub_options;
};

// Parses `stavid_server` flags (without argv[0]). Throws std::invalid_argument naming the flag.
// Sets *help when --help was given.
ServerConfig parse_server_flags(const std::vector<std::string>& args, bool* help = nullptr);
std::string server_usage();

class StavidServer {
 public:
  StavidServer(ServerConfig config, std::unique_ptr<Pipeline> pipeline);
  ~StavidServer();
  StavidServer(const StavidServer&) = delete;
  StavidServer& operator=(const StavidServer&) = delete;

  // Binds the gRPC port and the metrics port; throws stavid::Error when either fails.
  void start();
  // Loads the models (Pipeline::load) and becomes ready.
  void load();
  // Graceful drain; idempotent. Returns when the gRPC server has shut down.
  void shutdown(std::chrono::milliseconds drain_budget);
  void shutdown() { shutdown(config_.drain_budget); }

  int port() const { return port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  VideoService& service() { return *service_; }
  Metrics* metrics() { return metrics_.get(); }
  grpc::Server* grpc_server() { return server_.get(); }

 private:
  void set_health(const char* name, bool serving);

  ServerConfig config_;
  std::unique_ptr<Pipeline> pipeline_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<VideoService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Makes the model pipeline from the parsed flags (config_file, workers, ...).
using PipelineFactory = std::function<std::unique_ptr<Pipeline>(const ServerConfig&)>;

// The whole `stavid_server` process: flags, start, load, wait for SIGTERM/SIGINT, drain. Returns the
// exit code: 0 after a clean drain, 2 on bad flags, 1 on a start or load failure. A null factory
// serves only --stub.
int server_main(int argc, char** argv, const PipelineFactory& make_pipeline, GpuMemoryReader gpu_memory = {});

}  // namespace stavid::server
