// Metrics (see metrics.h). Event-driven metrics live in a prometheus::Registry; the rest is built
// per scrape by DynamicCollector from the service's gauge source, the GPU memory reader and /proc.
// HttpEndpoint serves their text exposition at /metrics.
#include "server/metrics.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace stavid::server {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily gauge_family(std::string name, std::string help) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = MetricType::Gauge;
  return f;
}

MetricFamily counter_family(std::string name, std::string help) {
  MetricFamily f = gauge_family(std::move(name), std::move(help));
  f.type = MetricType::Counter;
  return f;
}

void add_value(MetricFamily& f, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

struct ProcessStats {
  bool valid = false;
  double cpu_seconds = 0;
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double start_time_seconds = 0;
  double threads = 0;
  double open_fds = 0;
  double max_fds = 0;
};

// /proc/self/stat fields after the command name (field 3 onwards): utime 14, stime 15, num_threads
// 20, starttime 22 (clock ticks since boot), vsize 23 (bytes), rss 24 (pages).
ProcessStats read_process_stats() {
  ProcessStats s;
  std::ifstream stat("/proc/self/stat");
  std::string line;
  if (!std::getline(stat, line)) return s;
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return s;
  std::istringstream rest(line.substr(close + 2));
  std::vector<std::string> fields;
  for (std::string f; rest >> f;) fields.push_back(f);
  auto field = [&](int n) { return std::stod(fields.at(static_cast<size_t>(n - 3))); };
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  try {
    s.cpu_seconds = (field(14) + field(15)) / ticks;
    s.threads = field(20);
    s.virtual_bytes = field(23);
    s.resident_bytes = field(24) * page;
    double boot_time = 0;
    std::ifstream sys_stat("/proc/stat");
    for (std::string l; std::getline(sys_stat, l);) {
      if (l.rfind("btime ", 0) == 0) boot_time = std::stod(l.substr(6));
    }
    s.start_time_seconds = boot_time + field(22) / ticks;
  } catch (const std::exception&) {
    return s;
  }
  if (DIR* dir = opendir("/proc/self/fd")) {
    size_t n = 0;
    while (dirent* e = readdir(dir)) n += e->d_name[0] != '.';
    closedir(dir);
    s.open_fds = static_cast<double>(n > 0 ? n - 1 : 0);  // minus the directory stream itself
  }
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) s.max_fds = static_cast<double>(lim.rlim_cur);
  s.valid = true;
  return s;
}

}  // namespace

const std::vector<double>& duration_buckets_seconds() {
  static const std::vector<double> kBuckets = {0.05, 0.1, 0.25, 0.5,  1,    2.5,  5,    10,  20,
                                               30,   60,  120,  300,  600,  900,  1200, 1800, 3600};
  return kBuckets;
}

class Metrics::DynamicCollector final : public prometheus::Collectable {
 public:
  explicit DynamicCollector(std::shared_ptr<prometheus::Registry> registry) : registry_(std::move(registry)) {}

  void set_gauges(std::function<ServiceGauges()> source) {
    std::lock_guard<std::mutex> lk(mu_);
    gauges_ = std::move(source);
  }
  void set_gpu(GpuMemoryReader reader) {
    std::lock_guard<std::mutex> lk(mu_);
    gpu_ = std::move(reader);
  }

  std::vector<MetricFamily> Collect() const override {
    std::vector<MetricFamily> out = registry_->Collect();
    std::function<ServiceGauges()> gauges;
    GpuMemoryReader gpu;
    {
      std::lock_guard<std::mutex> lk(mu_);
      gauges = gauges_;
      gpu = gpu_;
    }
    if (gauges) {
      const ServiceGauges g = gauges();
      MetricFamily depth = gauge_family("stavid_queue_depth", "Jobs waiting in the queue.");
      add_value(depth, static_cast<double>(g.queue_depth));
      MetricFamily flight = gauge_family("stavid_jobs_in_flight", "Jobs running on a worker.");
      add_value(flight, static_cast<double>(g.jobs_in_flight));
      MetricFamily workers = gauge_family("stavid_workers", "Workers by state (busy: running a job).");
      const size_t busy = std::min(g.jobs_in_flight, g.workers);
      add_value(workers, static_cast<double>(busy), {{"state", "busy"}});
      add_value(workers, static_cast<double>(g.workers - busy), {{"state", "idle"}});
      MetricFamily store = gauge_family("stavid_result_store_bytes", "Bytes of finished results kept in the job store.");
      add_value(store, static_cast<double>(g.result_store_bytes));
      MetricFamily ready = gauge_family("stavid_ready", "1 when the models are loaded and the server accepts jobs.");
      add_value(ready, g.ready && !g.draining ? 1.0 : 0.0);
      for (MetricFamily* f : {&depth, &flight, &workers, &store, &ready}) out.push_back(std::move(*f));
    }
    if (gpu) {
      MetricFamily used = gauge_family("stavid_gpu_memory_used_bytes", "Device memory in use per GPU.");
      MetricFamily total = gauge_family("stavid_gpu_memory_total_bytes", "Device memory per GPU.");
      for (const GpuMemoryUsage& u : gpu()) {
        add_value(used, static_cast<double>(u.used_bytes), {{"gpu", std::to_string(u.gpu)}});
        if (u.total_bytes > 0) add_value(total, static_cast<double>(u.total_bytes), {{"gpu", std::to_string(u.gpu)}});
      }
      if (!used.metric.empty()) out.push_back(std::move(used));
      if (!total.metric.empty()) out.push_back(std::move(total));
    }
    const ProcessStats p = read_process_stats();
    if (p.valid) {
      MetricFamily cpu = counter_family("process_cpu_seconds_total", "User and system CPU time spent in seconds.");
      add_value(cpu, p.cpu_seconds);
      MetricFamily rss = gauge_family("process_resident_memory_bytes", "Resident memory size in bytes.");
      add_value(rss, p.resident_bytes);
      MetricFamily vms = gauge_family("process_virtual_memory_bytes", "Virtual memory size in bytes.");
      add_value(vms, p.virtual_bytes);
      MetricFamily fds = gauge_family("process_open_fds", "Number of open file descriptors.");
      add_value(fds, p.open_fds);
      MetricFamily max_fds = gauge_family("process_max_fds", "Maximum number of open file descriptors.");
      add_value(max_fds, p.max_fds);
      MetricFamily start = gauge_family("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.");
      add_value(start, p.start_time_seconds);
      MetricFamily threads = gauge_family("process_threads", "Number of OS threads in the process.");
      add_value(threads, p.threads);
      for (MetricFamily* f : {&cpu, &rss, &vms, &fds, &max_fds, &start, &threads}) out.push_back(std::move(*f));
    }
    return out;
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;
  std::function<ServiceGauges()> gauges_;
  GpuMemoryReader gpu_;
};

// `GET /metrics` over HTTP/1.1: one listener thread (std::thread, default stack), one connection at
// a time, answered and closed (Connection: close). The request head must arrive within
// kHeadTimeout and fit in kMaxHeadBytes, so a silent or slow client delays the next scrape by at
// most kHeadTimeout; the answer is sent with the same timeout. The destructor wakes the thread
// through an eventfd, also while it waits on a client.
class Metrics::HttpEndpoint {
 public:
  HttpEndpoint(const std::string& address, std::function<std::string()> scrape);
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  int port() const { return port_; }

 private:
  static constexpr std::chrono::milliseconds kHeadTimeout{2000};
  static constexpr size_t kMaxHeadBytes = 8192;

  void serve();
  // The request head (through the blank line); "" when it outgrew kMaxHeadBytes; nullopt on
  // timeout, a closed or failed connection, or shutdown.
  std::optional<std::string> read_head(int fd) const;
  std::string answer(const std::string& head) const;

  std::function<std::string()> scrape_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

namespace {

// "host:port" ("[v6]:port"; an empty host means every interface) -> a bound, listening,
// non-blocking TCP socket.
int listen_tcp(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) throw std::invalid_argument("expected host:port");
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) > 65535) {
    throw std::invalid_argument("bad port '" + port + "'");
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    throw std::runtime_error(gai_strerror(rc));
  }
  int fd = -1;
  int err = EADDRNOTAVAIL;
  for (const addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, /*backlog=*/16) != 0) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) throw std::system_error(err, std::generic_category());
  return fd;
}

int bound_port(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  return 0;
}

std::string http_response(const std::string& status, const std::string& content_type, const std::string& body) {
  std::string out = "HTTP/1.1 " + status + "\r\nContent-Type: " + content_type +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n";
  if (status.rfind("405", 0) == 0) out += "Allow: GET\r\n";
  return out + "\r\n" + body;
}

// Best effort: a client that stops reading is dropped after the socket's send timeout.
void send_all(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace

Metrics::HttpEndpoint::HttpEndpoint(const std::string& address, std::function<std::string()> scrape)
    : scrape_(std::move(scrape)), listen_fd_(listen_tcp(address)), port_(bound_port(listen_fd_)) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    const int err = errno;
    close(listen_fd_);
    throw std::system_error(err, std::generic_category());
  }
  thread_ = std::thread([this] { serve(); });
}

Metrics::HttpEndpoint::~HttpEndpoint() {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = write(wake_fd_, &one, sizeof(one));
  thread_.join();
  close(wake_fd_);
  close(listen_fd_);
}

void Metrics::HttpEndpoint::serve() {
  for (;;) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    if (poll(fds, 2, /*timeout=*/-1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents != 0) return;
    if ((fds[1].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) poll(fds, 1, /*timeout=*/100);  // no busy loop
      continue;
    }
    if (const std::optional<std::string> head = read_head(fd)) {
      const timeval send_timeout{kHeadTimeout.count() / 1000, (kHeadTimeout.count() % 1000) * 1000};
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
      send_all(fd, answer(*head));
      shutdown(fd, SHUT_WR);
      // Lingering close: read what the client still sends (a little, briefly) so that close() does
      // not reset the connection before the client has read the answer.
      char sink[4096];
      pollfd in{fd, POLLIN, 0};
      for (int i = 0; i < 16 && poll(&in, 1, /*timeout=*/100) > 0 && recv(fd, sink, sizeof(sink), 0) > 0; ++i) {
      }
    }
    close(fd);
  }
}

std::optional<std::string> Metrics::HttpEndpoint::read_head(int fd) const {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point deadline = Clock::now() + kHeadTimeout;
  std::string head;
  char buf[2048];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {fd, POLLIN, 0}};
    const int ready = poll(fds, 2, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0 || fds[0].revents != 0) return std::nullopt;
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    head.append(buf, static_cast<size_t>(n));
    const size_t end = head.find("\r\n\r\n");
    if (end != std::string::npos && end + 4 <= kMaxHeadBytes) return head.substr(0, end + 4);
    if (head.size() > kMaxHeadBytes) return std::string();
  }
}

std::string Metrics::HttpEndpoint::answer(const std::string& head) const {
  const std::string kText = "text/plain; charset=utf-8";
  // Request line: METHOD SP target SP HTTP/x.y
  const std::string line = head.substr(0, head.find("\r\n"));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.rfind(' ');
  if (sp1 == std::string::npos || sp2 == sp1 || line.compare(sp2 + 1, 5, "HTTP/") != 0) {
    return http_response("400 Bad Request", kText, "bad request\n");
  }
  if (line.substr(0, sp1) != "GET") return http_response("405 Method Not Allowed", kText, "only GET\n");
  const std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (target.substr(0, target.find('?')) != "/metrics") {
    return http_response("404 Not Found", kText, "not found; metrics are at /metrics\n");
  }
  try {
    return http_response("200 OK", "text/plain; version=0.0.4; charset=utf-8", scrape_());
  } catch (const std::exception& e) {
    return http_response("500 Internal Server Error", kText, std::string(e.what()) + "\n");
  }
}

Metrics::Metrics(const std::string& listen_address, const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()), dynamic_(std::make_shared<DynamicCollector>(registry_)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("stavid_requests_total")
                   .Help("Finished RPCs by method and gRPC status code.")
                   .Register(*registry_);
  jobs_ = &prometheus::BuildCounter()
               .Name("stavid_jobs_total")
               .Help("Finished jobs by outcome (succeeded, failed, cancelled) and worker.")
               .Register(*registry_);
  job_seconds_ = &prometheus::BuildHistogram()
                      .Name("stavid_job_duration_seconds")
                      .Help("End-to-end job latency, submission to the end, by outcome.")
                      .Register(*registry_);
  stage_seconds_ = &prometheus::BuildHistogram()
                        .Name("stavid_stage_duration_seconds")
                        .Help("Duration of one pipeline stage (text, denoise, decode, encode), by worker.")
                        .Register(*registry_);
  worker_group_size_ = &prometheus::BuildGauge()
                            .Name("stavid_worker_group_size")
                            .Help("Devices (GPUs, or CPU ranks) in each worker's group; 1 without sequence parallelism.")
                            .Register(*registry_);
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("stavid_queue_wait_seconds")
                     .Help("Time a job waited in the queue before a worker took it.")
                     .Register(*registry_)
                     .Add({}, duration_buckets_seconds());
  step_seconds_ = &prometheus::BuildHistogram()
                       .Name("stavid_step_duration_seconds")
                       .Help("Duration of one denoising step (TeaCache-skipped steps included), by worker.")
                       .Register(*registry_);
  steps_ = &prometheus::BuildCounter()
                .Name("stavid_denoise_steps_total")
                .Help("Denoising steps run, skipped ones included.")
                .Register(*registry_)
                .Add({});
  skipped_steps_ = &prometheus::BuildCounter()
                        .Name("stavid_teacache_skipped_steps_total")
                        .Help("Denoising steps whose transformer pass TeaCache skipped.")
                        .Register(*registry_)
                        .Add({});
  prometheus::BuildGauge()
      .Name("stavid_build_info")
      .Help("Build metadata; the value is always 1.")
      .Register(*registry_)
      .Add({{"version", version}})
      .Set(1);
  if (!listen_address.empty()) {
    http_ = std::make_unique<HttpEndpoint>(listen_address, [this] { return scrape(); });
    port_ = http_->port();
  }
}

Metrics::~Metrics() = default;

void Metrics::set_gauge_source(std::function<ServiceGauges()> source) { dynamic_->set_gauges(std::move(source)); }

void Metrics::set_gpu_memory_reader(GpuMemoryReader reader) { dynamic_->set_gpu(std::move(reader)); }

void Metrics::count_request(std::string_view rpc, std::string_view code) {
  requests_->Add({{"rpc", std::string(rpc)}, {"code", std::string(code)}}).Increment();
}

void Metrics::observe_queue_wait(double seconds) { queue_wait_->Observe(seconds); }

void Metrics::set_worker_groups(const std::vector<std::pair<std::string, int>>& workers) {
  for (const auto& [name, size] : workers) worker_group_size_->Add({{"worker", name}}).Set(size);
}

void Metrics::observe_job(std::string_view outcome, double seconds, std::string_view worker) {
  jobs_->Add({{"outcome", std::string(outcome)}, {"worker", std::string(worker)}}).Increment();
  job_seconds_->Add({{"outcome", std::string(outcome)}}, duration_buckets_seconds()).Observe(seconds);
}

void Metrics::observe_stage(std::string_view stage, double seconds, std::string_view worker) {
  stage_seconds_->Add({{"stage", std::string(stage)}, {"worker", std::string(worker)}}, duration_buckets_seconds())
      .Observe(seconds);
}

void Metrics::observe_step(double seconds, bool skipped_by_teacache, std::string_view worker) {
  step_seconds_->Add({{"worker", std::string(worker)}}, duration_buckets_seconds()).Observe(seconds);
  steps_->Increment();
  if (skipped_by_teacache) skipped_steps_->Increment();
}

std::string Metrics::scrape() const { return prometheus::TextSerializer().Serialize(dynamic_->Collect()); }

}  // namespace stavid::server
