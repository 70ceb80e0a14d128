// stavid_server as a child process on loopback (stub pipeline): SIGTERM drain (a running job finishes
// within the budget, or is cancelled when it cannot), a load test (200 concurrent Generate calls
// against a queue of 16: each completes or gets RESOURCE_EXHAUSTED, none lost or hung, RSS back near
// its baseline), and a real Prometheus scrape (skipped when the `prometheus` binary is absent).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "tests/service_test_util.h"

namespace stavid::server::testing {
namespace {

std::unique_ptr<v1::VideoService::Stub> connect(int port) {
  return v1::VideoService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
}

grpc::Status submit(v1::VideoService::Stub& stub, const v1::GenerateRequest& r, std::string* id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(5000ms));
  v1::SubmitJobRequest req;
  *req.mutable_request() = r;
  v1::SubmitJobResponse resp;
  grpc::Status s = stub.SubmitJob(&ctx, req, &resp);
  if (id) *id = resp.job_id();
  return s;
}

TEST(ServerProcess, SigtermLetsARunningJobFinishWithinTheBudget) {
  ServerProcess p({"--stub", "--listen=127.0.0.1:0", "--metrics-listen=off", "--stub-step-ms=100",
                   "--drain-budget=10"});
  ASSERT_TRUE(p.wait_for_line("ready"));
  auto stub = connect(p.port());
  std::string id;
  ASSERT_TRUE(submit(*stub, stub_request(10), &id).ok());  // about 1 s of work
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(15000ms));
  v1::WatchJobRequest req;
  req.set_job_id(id);
  auto reader = stub->WatchJob(&ctx, req);
  std::atomic<bool> stepped{false};
  StreamResult w;
  std::thread watcher([&] {
    w = read_stream(reader, [&](const v1::JobEvent& e) {
      if (e.has_step()) stepped = true;
      return true;
    });
    w.status = reader->Finish();
  });
  ASSERT_TRUE(eventually([&] { return stepped.load(); }));
  const auto t0 = std::chrono::steady_clock::now();
  p.signal(SIGTERM);
  ASSERT_TRUE(p.wait_for_line("draining"));
  // New jobs are refused once the drain has begun (the line is printed just before it).
  EXPECT_TRUE(eventually([&] { return submit(*stub, stub_request(1), nullptr).error_code() == grpc::StatusCode::UNAVAILABLE; }));
  EXPECT_TRUE(p.wait_for_line("drained"));
  EXPECT_EQ(p.wait_exit(15000ms), 0);
  watcher.join();
  EXPECT_TRUE(w.status.ok()) << w.status.error_message();
  ASSERT_FALSE(w.events.empty());
  EXPECT_TRUE(w.events.back().has_completed());
  EXPECT_EQ(w.bytes.size(), 4096u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10000ms);
}

TEST(ServerProcess, SigtermCancelsAJobThatOutlastsTheBudget) {
  ServerProcess p({"--stub", "--listen=127.0.0.1:0", "--metrics-listen=off", "--stub-step-ms=100",
                   "--drain-budget=0.3"});
  ASSERT_TRUE(p.wait_for_line("ready"));
  auto stub = connect(p.port());
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline_in(15000ms));
  auto reader = stub->Generate(&ctx, stub_request(150));  // 15 s of work
  std::atomic<bool> stepped{false};
  StreamResult g;
  std::thread follower([&] {
    g = read_stream(reader, [&](const v1::JobEvent& e) {
      if (e.has_step()) stepped = true;
      return true;
    });
    g.status = reader->Finish();
  });
  ASSERT_TRUE(eventually([&] { return stepped.load(); }));
  const auto t0 = std::chrono::steady_clock::now();
  p.signal(SIGTERM);
  EXPECT_TRUE(p.wait_for_line("drained"));
  EXPECT_EQ(p.wait_exit(10000ms), 0);
  const auto took = std::chrono::steady_clock::now() - t0;
  follower.join();
  EXPECT_LT(took, 3000ms);  // budget 0.3 s + one 0.1 s step + shutdown
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_FALSE(g.events.empty());
  ASSERT_TRUE(g.events.back().has_failed());
  EXPECT_EQ(g.events.back().failed().code(), static_cast<int>(grpc::StatusCode::CANCELLED));
  EXPECT_LT(g.steps, 150);
}

TEST(ServerProcess, LoadAndFaults200ConcurrentRequestsAgainstAQueueOf16) {
  ServerProcess p({"--stub", "--listen=127.0.0.1:0", "--metrics-listen=off", "--stub-step-ms=2",
                   "--stub-workers=2", "--max-queue=16", "--result-ttl=1", "--stub-result-bytes=65536",
                   "--stub-fail-marker=FAULT"});
  ASSERT_TRUE(p.wait_for_line("ready"));
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(p.port()), grpc::InsecureChannelCredentials());
  auto stub = v1::VideoService::NewStub(channel);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(generate(*stub, stub_request(2)).status.ok());  // warm up
  std::this_thread::sleep_for(1500ms);  // let warm-up results expire
  const size_t baseline = p.rss_bytes();
  ASSERT_GT(baseline, 0u);

  constexpr int kRequests = 200;
  std::vector<grpc::StatusCode> codes(kRequests, grpc::StatusCode::UNKNOWN);
  std::vector<bool> complete(kRequests, false);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest r = stub_request(3, /*seed=*/1000 + i);
      if (i % 25 == 0) r.set_prompt("FAULT injected here");
      StreamResult res = generate(*stub, r, /*timeout=*/60000ms);
      codes[i] = res.status.error_code();
      complete[i] = res.status.ok() && !res.events.empty() && res.events.back().has_completed() &&
                    res.bytes.size() == 65536 && res.chunks_ok;
      if (res.status.ok() && !complete[i]) {
        ADD_FAILURE() << "request " << i << ": " << res.events.size() << " events, last case "
                      << (res.events.empty() ? -1 : res.events.back().event_case()) << ", " << res.bytes.size()
                      << " bytes, chunks_ok " << res.chunks_ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0, exhausted = 0, internal = 0, other = 0;
  for (int i = 0; i < kRequests; ++i) {
    switch (codes[i]) {
      case grpc::StatusCode::OK: ++ok; EXPECT_TRUE(complete[i]) << i; break;
      case grpc::StatusCode::RESOURCE_EXHAUSTED: ++exhausted; break;
      case grpc::StatusCode::INTERNAL: ++internal; EXPECT_EQ(i % 25, 0) << i; break;
      default: ++other; ADD_FAILURE() << "request " << i << " ended with code " << codes[i]; break;
    }
  }
  EXPECT_EQ(ok + exhausted + internal, kRequests);
  EXPECT_EQ(other, 0);
  EXPECT_GT(ok, 16);
  // The server keeps serving after the faults.
  EXPECT_TRUE(generate(*stub, stub_request(2)).status.ok());
  // Memory: results expire after 1 s; RSS returns near its baseline.
  std::this_thread::sleep_for(1500ms);
  bool near = eventually([&] { return p.rss_bytes() < baseline + (48u << 20); }, 5000ms);
  EXPECT_TRUE(near) << "baseline " << (baseline >> 20) << " MiB, now " << (p.rss_bytes() >> 20) << " MiB";
  p.signal(SIGTERM);
  EXPECT_EQ(p.wait_exit(10000ms), 0);
}

// ---- a real Prometheus scrape ----

std::string find_prometheus() {
  for (const char* dir : {"/usr/bin", "/usr/local/bin", "/bin"}) {
    const std::string path = std::string(dir) + "/prometheus";
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// A tiny HTTP/1.0 GET on loopback; returns the body ("" on failure).
std::string http_get(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string resp;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

std::string url_encode(const std::string& s) {
  std::string out;
  char hex[4];
  for (unsigned char c : s) {
    if (isalnum(c) || c == '_' || c == '.' || c == '-') {
      out += static_cast<char>(c);
    } else {
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

TEST(ServerProcess, PrometheusScrapesAndComputesAP95) {
  const std::string prometheus = find_prometheus();
  if (prometheus.empty()) GTEST_SKIP() << "the prometheus binary is not installed";
  ServerProcess server({"--stub", "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0", "--stub-step-ms=20"});
  ASSERT_TRUE(server.wait_for_line("ready"));
  ASSERT_GT(server.metrics_port(), 0);

  const auto dir = std::filesystem::temp_directory_path() / ("stavid-prom-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string config = (dir / "prometheus.yml").string();
  {
    std::ofstream out(config);
    out << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: stavid\n    static_configs:\n"
        << "      - targets: ['127.0.0.1:" << server.metrics_port() << "']\n";
  }
  const int prom_port = free_port();
  const pid_t prom = fork();
  if (prom == 0) {
    const int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, STDOUT_FILENO);
    dup2(devnull, STDERR_FILENO);
    const std::string cfg = "--config.file=" + config;
    const std::string data = "--storage.tsdb.path=" + (dir / "data").string();
    const std::string listen = "--web.listen-address=127.0.0.1:" + std::to_string(prom_port);
    execl(prometheus.c_str(), "prometheus", cfg.c_str(), data.c_str(), listen.c_str(), (char*)nullptr);
    _exit(127);
  }
  auto stop_prometheus = [&] {
    kill(prom, SIGTERM);
    for (int i = 0; i < 500 && waitpid(prom, nullptr, WNOHANG) == 0; ++i) std::this_thread::sleep_for(10ms);
    kill(prom, SIGKILL);
    waitpid(prom, nullptr, 0);
    std::filesystem::remove_all(dir);
  };

  auto stub = connect(server.port());
  std::atomic<bool> stop{false};
  std::thread load([&] {
    while (!stop) generate(*stub, stub_request(3));
  });
  const std::string query = "/api/v1/query?query=" +
      url_encode("histogram_quantile(0.95, sum by (le) (rate(stavid_job_duration_seconds_bucket[10s])))");
  std::string body;
  double p95 = NAN;
  const bool got = eventually(
      [&] {
        body = http_get(prom_port, query);
        const size_t v = body.find("\"value\":[");
        if (v == std::string::npos) return false;
        const size_t q = body.find(",\"", v);
        if (q == std::string::npos) return false;
        const std::string num = body.substr(q + 2, body.find('"', q + 2) - q - 2);
        p95 = std::strtod(num.c_str(), nullptr);
        if (num == "NaN") p95 = NAN;
        return std::isfinite(p95);
      },
      30000ms);
  stop = true;
  load.join();
  const std::string up = http_get(prom_port, "/api/v1/query?query=up");
  stop_prometheus();
  ASSERT_TRUE(got) << "last answer: " << body;
  EXPECT_GT(p95, 0.0);
  EXPECT_LT(p95, 5.0);  // three 20 ms steps per job
  EXPECT_NE(up.find("\"1\""), std::string::npos) << up;
  server.signal(SIGTERM);
  EXPECT_EQ(server.wait_exit(10000ms), 0);
}

}  // namespace
}  // namespace stavid::server::testing
