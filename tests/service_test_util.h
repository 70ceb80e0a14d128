// Helpers for the service tests: an in-process server on loopback over the stub pipeline, a
// Generate/Watch collector that reassembles and checks result chunks, and a subprocess runner for
// the stavid_server binary. Every wait is bounded.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server/server.h"
#include "stavid/v1/video.grpc.pb.h"

namespace stavid::server::testing {

namespace v1 = stavid::v1;
using namespace std::chrono_literals;

inline std::chrono::system_clock::time_point deadline_in(std::chrono::milliseconds ms) {
  return std::chrono::system_clock::now() + ms;
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return pred();
}

inline v1::GenerateRequest stub_request(uint32_t steps = 4, uint64_t seed = 7) {
  v1::GenerateRequest r;
  r.set_model("stub");
  r.set_prompt("a cat on a skateboard");
  r.set_steps(steps);
  r.set_seed(seed);
  return r;
}

// Everything one streaming call produced.
struct StreamResult {
  std::vector<v1::JobEvent> events;
  grpc::Status status;
  std::string job_id;
  std::string bytes;   // reassembled result
  std::string sha256;  // from the last chunk
  bool chunks_ok = true;  // offsets contiguous, each <= 1 MiB, last carries total and digest
  int heartbeats = 0;
  int steps = 0;
  const v1::JobEvent* find(v1::JobEvent::EventCase c) const {
    for (const auto& e : events) {
      if (e.event_case() == c) return &e;
    }
    return nullptr;
  }
};

// Reads a JobEvent stream to the end. on_event may return false to stop reading (the context is
// then cancelled by the caller).
template <typename Reader, typename OnEvent>
StreamResult read_stream(Reader& reader, OnEvent on_event) {
  StreamResult r;
  v1::JobEvent e;
  bool last_seen = false;
  while (reader->Read(&e)) {
    if (r.job_id.empty()) r.job_id = e.job_id();
    if (e.has_heartbeat()) ++r.heartbeats;
    if (e.has_step()) ++r.steps;
    if (e.has_result()) {
      const auto& c = e.result();
      if (c.offset() != r.bytes.size() || c.data().size() > kResultChunkBytes || last_seen) r.chunks_ok = false;
      r.bytes += c.data();
      if (c.last()) {
        last_seen = true;
        r.sha256 = c.sha256();
        if (c.total_bytes() != r.bytes.size()) r.chunks_ok = false;
      }
    }
    r.events.push_back(e);
    if (!on_event(e)) break;
  }
  return r;
}

inline StreamResult generate(v1::VideoService::Stub& stub, const v1::GenerateRequest& req,
                             std::chrono::milliseconds timeout = 20000ms) {
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(timeout));
  auto reader = stub.Generate(&ctx, req);
  StreamResult r = read_stream(reader, [](const v1::JobEvent&) { return true; });
  r.status = reader->Finish();
  return r;
}

inline StreamResult watch(v1::VideoService::Stub& stub, const std::string& id, bool include_result = true,
                          std::chrono::milliseconds timeout = 20000ms) {
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(timeout));
  v1::WatchJobRequest req;
  req.set_job_id(id);
  req.set_include_result(include_result);
  auto reader = stub.WatchJob(&ctx, req);
  StreamResult r = read_stream(reader, [](const v1::JobEvent&) { return true; });
  r.status = reader->Finish();
  return r;
}

inline std::string hex_sha256(const std::string& bytes) {
  const std::string d = sha256(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : d) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

// An in-process server on 127.0.0.1 with a stub pipeline.
class LocalServer {
 public:
  explicit LocalServer(StubPipelineOptions stub = {}, ServerConfig config = {}, bool load = true) {
    config.listen = "127.0.0.1:0";
    if (config.metrics_listen == ServerConfig{}.metrics_listen) config.metrics_listen = "";
    auto pipeline = std::make_unique<StubPipeline>(stub);
    pipeline_ = pipeline.get();
    server_ = std::make_unique<StavidServer>(config, std::move(pipeline));
    server_->start();
    if (load) server_->load();
    channel_ = make_channel(grpc::InsecureChannelCredentials());
    stub_ = v1::VideoService::NewStub(channel_);
  }
  std::shared_ptr<grpc::Channel> make_channel(const std::shared_ptr<grpc::ChannelCredentials>& creds,
                                              const grpc::ChannelArguments& args = {}) const {
    return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(server_->port()), creds, args);
  }
  v1::VideoService::Stub& stub() { return *stub_; }
  StavidServer& server() { return *server_; }
  StubPipeline& pipeline() { return *pipeline_; }
  Scheduler& scheduler() { return *server_->service().scheduler(); }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  v1::Job get(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline_in(5000ms));
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::Job job;
    stub_->GetJob(&ctx, req, &job);
    return job;
  }
  grpc::Status submit(const v1::GenerateRequest& r, std::string* id, const std::string& client_id = "",
                      uint32_t* position = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline_in(5000ms));
    v1::SubmitJobRequest req;
    *req.mutable_request() = r;
    req.set_client_job_id(client_id);
    v1::SubmitJobResponse resp;
    grpc::Status s = stub_->SubmitJob(&ctx, req, &resp);
    if (id) *id = resp.job_id();
    if (position) *position = resp.queue_position();
    return s;
  }
  bool wait_state(const std::string& id, v1::JobState state, std::chrono::milliseconds timeout = 5000ms) {
    return eventually([&] { return get(id).state() == state; }, timeout);
  }

 private:
  StubPipeline* pipeline_ = nullptr;
  std::unique_ptr<StavidServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::VideoService::Stub> stub_;
};

inline grpc::health::v1::HealthCheckResponse::ServingStatus health_check(const std::shared_ptr<grpc::Channel>& ch,
                                                                         const std::string& name,
                                                                         grpc::Status* status = nullptr) {
  auto stub = grpc::health::v1::Health::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(5000ms));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(name);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  if (status) *status = s;
  return resp.status();
}

// stavid_server as a child process; stdout is read for the "listening on port" and "ready" lines.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> args) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> argv;
      static std::string binary = STAVID_SERVER_BINARY;
      argv.push_back(binary.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(out[1]);
    fd_ = out[0];
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }
  // Reads stdout until a line containing `needle` (bounded).
  bool wait_for_line(const std::string& needle, std::chrono::milliseconds timeout = 10000ms) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      size_t nl;
      while ((nl = buffer_.find('\n')) != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        lines_.push_back(line);
        if (line.find("listening on port ") != std::string::npos) {
          port_ = std::stoi(line.substr(line.find("port ") + 5));
          const size_t m = line.find("metrics on port ");
          if (m != std::string::npos) metrics_port_ = std::stoi(line.substr(m + 16));
        }
        if (line.find(needle) != std::string::npos) return true;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
      char buf[4096];
      const ssize_t n = read(fd_, buf, sizeof(buf));
      if (n <= 0) return false;
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }
  // Waits for exit (bounded); returns the exit status or -1 on timeout / abnormal end.
  int wait_exit(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(5ms);
    }
    return -1;
  }
  void signal(int sig) { kill(pid_, sig); }
  const std::vector<std::string>& lines() const { return lines_; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  // VmRSS of the process in bytes (0 when unreadable).
  size_t rss_bytes() const {
    FILE* f = std::fopen(("/proc/" + std::to_string(pid_) + "/status").c_str(), "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (std::fgets(line, sizeof(line), f)) {
      if (std::sscanf(line, "VmRSS: %zu kB", &kb) == 1) break;
    }
    std::fclose(f);
    return kb * 1024;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  bool exited_ = false;
  int port_ = 0;
  int metrics_port_ = 0;
  std::string buffer_;
  std::vector<std::string> lines_;
};

}  // namespace stavid::server::testing
