// StavidServer, the stavid_server flags and its main loop (see server.h).
#include "server/server.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "kernels/core/error.h"

#ifndef STAVID_VERSION
#define STAVID_VERSION "0.0.0"
#endif

namespace stavid::server {

namespace {

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  STAVID_CHECK_CODE(in.good(), ErrorCode::NotFound, what, ": cannot read '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Turns reflection on or off for one builder. Linking grpc++_reflection registers its plugin for
// every server of the process (a static initializer), so this removes whatever reflection plugin
// the builder got and adds one back only when wanted.
class ReflectionOption final : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(bool enabled) : enabled_(enabled) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    const std::string name = grpc::reflection::ProtoServerReflectionPlugin().name();
    std::erase_if(*plugins, [&](const auto& p) { return p->name() == name; });
    if (enabled_) plugins->emplace_back(std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>());
  }

 private:
  bool enabled_;
};

template <typename T>
T parse_number(const std::string& flag, const std::string& value) {
  try {
    size_t pos = 0;
    if constexpr (std::is_floating_point_v<T>) {
      const double v = std::stod(value, &pos);
      if (pos == value.size() && v >= 0) return static_cast<T>(v);
    } else {
      if (!value.empty() && value[0] != '-') {
        const unsigned long long v = std::stoull(value, &pos);
        if (pos == value.size() && v <= static_cast<unsigned long long>(std::numeric_limits<T>::max())) {
          return static_cast<T>(v);
        }
      }
    }
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(flag + ": expected a non-negative number, got '" + value + "'");
}

// SIGTERM/SIGINT reach server_main through a pipe written by a handler. A plain sigwait is not
// enough: threads that shared libraries start before main (OpenBLAS's pool) do not block the
// signals, and a process-directed signal delivered to one of them would take the default action
// and kill the server without a drain (seen in about 3 % of SIGTERMs). With a handler, whichever
// thread takes the signal only writes its number to the pipe.
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int sig) {
  const int saved = errno;
  const unsigned char byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &byte, 1);
  errno = saved;
}

std::chrono::milliseconds seconds_flag(const std::string& flag, const std::string& value) {
  return std::chrono::milliseconds(static_cast<int64_t>(parse_number<double>(flag, value) * 1000.0 + 0.5));
}

}  // namespace

std::string server_usage() {
  return R"(usage: stavid_server [flags]
  --listen=ADDR               gRPC address (default 0.0.0.0:50051; port 0 picks one)
  --metrics-listen=ADDR       Prometheus /metrics address (default 0.0.0.0:9464; "off" disables)
  --config=FILE               models config (JSON) for the pipeline
  --workers=N                 workers (0: one per GPU, else one CPU worker)
  --gpu-groups=K,K,...        workers as groups of K devices running one job with sequence parallelism
                              (8 GPUs: 8 | 4,4 | 2,2,2,2; each K must divide every model's heads)
  --max-queue=N               queued jobs before RESOURCE_EXHAUSTED (default 16)
  --worker-memory-budget=B    bytes one worker can give a job (0: no limit)
  --result-ttl=S              seconds finished jobs stay in the store (default 600)
  --max-result-bytes=B        bound on stored results (default 268435456)
  --default-queue-timeout=S   queue timeout for requests that give none (0: none)
  --heartbeat=S               heartbeat interval on quiet streams (default 10)
  --drain-budget=S            on SIGTERM: time running jobs get before cancellation (default 30)
  --max-frames=N --max-pixels=N --max-steps=N --max-prompt-bytes=N   request limits
  --tls-cert=FILE --tls-key=FILE   serve TLS with this PEM certificate chain and key
  --tls-client-ca=FILE        require client certificates signed by this PEM CA
  --auth-token-file=FILE      require "authorization: Bearer <token>" (also env STAVID_AUTH_TOKEN)
  --reflection / --no-reflection   gRPC server reflection (default on; off with an auth token
                              unless --reflection is given: reflection is not token-checked)
  --stub                      serve the stub pipeline (no model; tests and overhead benchmarks)
  --stub-step-ms=MS --stub-result-bytes=B --stub-workers=N --stub-load-ms=MS
  --stub-fail-marker=TEXT     (test only) stub jobs whose prompt contains TEXT throw mid-job
)";
}

ServerConfig parse_server_flags(const std::vector<std::string>& args, bool* help) {
  ServerConfig c;
  if (help) *help = false;
  if (const char* token = std::getenv("STAVID_AUTH_TOKEN")) c.service.auth_token = token;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    bool has_value = false;
    if (flag.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + flag + "'");
    if (const size_t eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    auto arg = [&]() -> const std::string& {
      if (!has_value) {
        if (i + 1 >= args.size()) throw std::invalid_argument(flag + ": missing value");
        value = args[++i];
        has_value = true;
      }
      return value;
    };
    auto no_value = [&] {
      if (has_value) throw std::invalid_argument(flag + ": takes no value");
    };
    if (flag == "--help" || flag == "-h") {
      if (help) *help = true;
    } else if (flag == "--listen") {
      c.listen = arg();
    } else if (flag == "--metrics-listen") {
      c.metrics_listen = arg() == "off" ? "" : value;
    } else if (flag == "--config") {
      c.config_file = arg();
    } else if (flag == "--workers") {
      c.workers = parse_number<int>(flag, arg());
    } else if (flag == "--gpu-groups") {
      c.gpu_groups.clear();
      std::stringstream ss(arg());
      for (std::string k; std::getline(ss, k, ',');) {
        c.gpu_groups.push_back(parse_number<int>(flag, k));
        if (c.gpu_groups.back() < 1) throw std::invalid_argument("--gpu-groups: every group size must be >= 1");
      }
      if (c.gpu_groups.empty()) throw std::invalid_argument("--gpu-groups: give at least one group size");
    } else if (flag == "--max-queue") {
      c.service.max_queue = parse_number<size_t>(flag, arg());
      if (c.service.max_queue == 0) throw std::invalid_argument("--max-queue: must be > 0");
    } else if (flag == "--worker-memory-budget") {
      c.service.worker_memory_budget = parse_number<size_t>(flag, arg());
    } else if (flag == "--result-ttl") {
      c.service.result_ttl = std::chrono::seconds(parse_number<uint32_t>(flag, arg()));
    } else if (flag == "--max-result-bytes") {
      c.service.max_result_bytes = parse_number<size_t>(flag, arg());
    } else if (flag == "--default-queue-timeout") {
      c.service.default_queue_timeout = std::chrono::seconds(parse_number<uint32_t>(flag, arg()));
    } else if (flag == "--heartbeat") {
      c.service.heartbeat_interval = seconds_flag(flag, arg());
    } else if (flag == "--drain-budget") {
      c.drain_budget = seconds_flag(flag, arg());
    } else if (flag == "--max-frames") {
      c.service.limits.max_frames = parse_number<uint32_t>(flag, arg());
    } else if (flag == "--max-pixels") {
      c.service.limits.max_pixels = parse_number<uint64_t>(flag, arg());
    } else if (flag == "--max-steps") {
      c.service.limits.max_steps = parse_number<uint32_t>(flag, arg());
    } else if (flag == "--max-prompt-bytes") {
      c.service.limits.max_prompt_bytes = parse_number<size_t>(flag, arg());
    } else if (flag == "--tls-cert") {
      c.tls_cert_file = arg();
    } else if (flag == "--tls-key") {
      c.tls_key_file = arg();
    } else if (flag == "--tls-client-ca") {
      c.tls_client_ca_file = arg();
    } else if (flag == "--auth-token-file") {
      std::string token = read_file(arg(), "--auth-token-file");
      while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
      if (token.empty()) throw std::invalid_argument("--auth-token-file: the file is empty");
      c.service.auth_token = token;
    } else if (flag == "--reflection") {
      no_value();
      c.reflection = true;
      c.reflection_explicit = true;
    } else if (flag == "--no-reflection") {
      no_value();
      c.reflection = false;
    } else if (flag == "--stub") {
      no_value();
      c.stub = true;
    } else if (flag == "--stub-step-ms") {
      c.stub_options.step_time =
          std::chrono::microseconds(static_cast<int64_t>(parse_number<double>(flag, arg()) * 1000.0));
    } else if (flag == "--stub-result-bytes") {
      c.stub_options.result_bytes = parse_number<size_t>(flag, arg());
    } else if (flag == "--stub-workers") {
      c.stub_options.workers = parse_number<int>(flag, arg());
      if (c.stub_options.workers == 0) throw std::invalid_argument("--stub-workers: must be > 0");
    } else if (flag == "--stub-load-ms") {
      c.stub_options.load_time = std::chrono::milliseconds(parse_number<uint32_t>(flag, arg()));
    } else if (flag == "--stub-fail-marker") {
      c.stub_options.fail_marker = arg();
    } else {
      throw std::invalid_argument("unknown flag '" + flag + "'");
    }
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    throw std::invalid_argument("--tls-cert and --tls-key go together");
  }
  if (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty()) {
    throw std::invalid_argument("--tls-client-ca needs --tls-cert and --tls-key");
  }
  return c;
}

StavidServer::StavidServer(ServerConfig config, std::unique_ptr<Pipeline> pipeline)
    : config_(std::move(config)), pipeline_(std::move(pipeline)) {
  STAVID_CHECK(pipeline_ != nullptr, "server: a pipeline is required");
}

StavidServer::~StavidServer() { shutdown(std::chrono::milliseconds(0)); }

void StavidServer::set_health(const char* name, bool serving) {
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(name, serving);
}

void StavidServer::start() {
  if (!config_.metrics_listen.empty()) {
    try {
      metrics_ = std::make_unique<Metrics>(config_.metrics_listen, STAVID_VERSION);
    } catch (const std::exception& e) {
      STAVID_THROW(ErrorCode::Internal, "metrics: cannot listen on ", config_.metrics_listen, ": ", e.what());
    }
  } else {
    metrics_ = std::make_unique<Metrics>("", STAVID_VERSION);  // counted, not exposed
  }
  service_ = std::make_unique<VideoService>(*pipeline_, config_.service, metrics_.get());
  VideoService* service = service_.get();
  metrics_->set_gauge_source([service] {
    ServiceGauges g;
    g.workers = static_cast<size_t>(service->pipeline().num_workers());
    if (Scheduler* s = service->scheduler()) {
      const SchedulerStats st = s->stats();
      g.queue_depth = st.queue_depth;
      g.jobs_in_flight = st.running;
      g.result_store_bytes = st.result_bytes;
      g.draining = st.draining;
      g.ready = true;
    }
    return g;
  });

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!config_.tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back(
        {read_file(config_.tls_key_file, "--tls-key"), read_file(config_.tls_cert_file, "--tls-cert")});
    if (!config_.tls_client_ca_file.empty()) {
      ssl.pem_root_certs = read_file(config_.tls_client_ca_file, "--tls-client-ca");
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.listen, creds, &port_);
  builder.RegisterService(service_.get());
  // With a bearer token, every RPC but health must check it; reflection cannot, so it is served
  // only when asked for by name.
  const bool reflection = config_.reflection && (config_.service.auth_token.empty() || config_.reflection_explicit);
  builder.SetOption(std::make_unique<ReflectionOption>(reflection));
  // Long streams: let clients keep connections alive with pings no more often than every 10 s.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  server_ = builder.BuildAndStart();
  STAVID_CHECK_CODE(server_ != nullptr && port_ > 0, ErrorCode::Internal, "grpc: cannot listen on ", config_.listen);
  set_health("", false);
  set_health(kHealthLiveness, true);
  set_health(kHealthReadiness, false);
  set_health(kHealthVideoService, false);
}

void StavidServer::load() {
  STAVID_CHECK_CODE(server_ != nullptr, ErrorCode::Internal, "server: load() before start()");
  service_->start();
  set_health(kHealthVideoService, true);
  set_health(kHealthReadiness, true);
  set_health("", true);
}

void StavidServer::shutdown(std::chrono::milliseconds drain_budget) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  set_health(kHealthReadiness, false);
  set_health(kHealthVideoService, false);
  set_health("", false);
  service_->drain(drain_budget);
  // Every job has ended; let the streams deliver their last events and result chunks (bounded),
  // then shut down at once: gRPC would otherwise wait out the deadline for idle client
  // connections to hang up.
  const auto grace_end = std::chrono::steady_clock::now() + config_.shutdown_grace;
  while (service_->active_streams() > 0 && std::chrono::steady_clock::now() < grace_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  metrics_->set_gauge_source(nullptr);
  service_.reset();
}

int server_main(int argc, char** argv, const PipelineFactory& make_pipeline, GpuMemoryReader gpu_memory) {
  // Stop signals: a handler writes them to a pipe that the main thread reads once the server runs
  // (on_stop_signal). The threads this process starts inherit a blocked mask, so the signals land on
  // the main thread (unblocked while it waits) or a library's own thread, never on gRPC or workers.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) {
    std::perror("stavid_server: pipe2");
    return 1;
  }
  struct sigaction action = {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ServerConfig config;
  try {
    bool help = false;
    config = parse_server_flags(std::vector<std::string>(argv + 1, argv + argc), &help);
    if (help) {
      std::cout << server_usage();
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "stavid_server: " << e.what() << "\n" << server_usage();
    return 2;
  }
  try {
    std::unique_ptr<Pipeline> pipeline;
    if (config.stub) {
      if (config.workers > 0) config.stub_options.workers = config.workers;
      pipeline = std::make_unique<StubPipeline>(config.stub_options);
    } else if (make_pipeline) {
      pipeline = make_pipeline(config);
    } else {
      std::cerr << "stavid_server: this build has no model pipeline; run with --stub\n";
      return 2;
    }
    StavidServer server(config, std::move(pipeline));
    server.start();  // creates the metrics
    if (gpu_memory && server.metrics()) server.metrics()->set_gpu_memory_reader(std::move(gpu_memory));
    std::cout << "stavid_server: listening on port " << server.port() << ", metrics on port "
              << server.metrics_port() << std::endl;
    server.load();
    std::cout << "stavid_server: ready" << std::endl;
    pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
    unsigned char byte = 0;
    while (read(g_signal_pipe[0], &byte, 1) != 1) {
      if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "read (signal pipe)");
    }
    const int sig = byte;
    std::cout << "stavid_server: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ", draining (budget "
              << config.drain_budget.count() << " ms)" << std::endl;
    const auto t0 = std::chrono::steady_clock::now();
    server.shutdown();
    std::cout << "stavid_server: drained in "
              << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
              << " ms" << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "stavid_server: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace stavid::server
