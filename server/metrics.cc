// Metrics (see metrics.h). Event-driven metrics live in a prometheus::Registry; the rest is built
// per scrape by DynamicCollector from the service's gauge source, the GPU memory reader and /proc.
#include "server/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <sstream>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
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

Metrics::Metrics(const std::string& listen_address, const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()), dynamic_(std::make_shared<DynamicCollector>(registry_)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("stavid_requests_total")
                   .Help("Finished RPCs by method and gRPC status code.")
                   .Register(*registry_);
  jobs_ = &prometheus::BuildCounter()
               .Name("stavid_jobs_total")
               .Help("Finished jobs by outcome (succeeded, failed, cancelled).")
               .Register(*registry_);
  job_seconds_ = &prometheus::BuildHistogram()
                      .Name("stavid_job_duration_seconds")
                      .Help("End-to-end job latency, submission to the end, by outcome.")
                      .Register(*registry_);
  stage_seconds_ = &prometheus::BuildHistogram()
                        .Name("stavid_stage_duration_seconds")
                        .Help("Duration of one pipeline stage (text, denoise, decode, encode).")
                        .Register(*registry_);
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("stavid_queue_wait_seconds")
                     .Help("Time a job waited in the queue before a worker took it.")
                     .Register(*registry_)
                     .Add({}, duration_buckets_seconds());
  step_seconds_ = &prometheus::BuildHistogram()
                       .Name("stavid_step_duration_seconds")
                       .Help("Duration of one denoising step (TeaCache-skipped steps included).")
                       .Register(*registry_)
                       .Add({}, duration_buckets_seconds());
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
    exposer_ = std::make_unique<prometheus::Exposer>(listen_address, /*num_threads=*/1);
    exposer_->RegisterCollectable(dynamic_);
    const std::vector<int> ports = exposer_->GetListeningPorts();
    port_ = ports.empty() ? 0 : ports.front();
  }
}

Metrics::~Metrics() = default;

void Metrics::set_gauge_source(std::function<ServiceGauges()> source) { dynamic_->set_gauges(std::move(source)); }

void Metrics::set_gpu_memory_reader(GpuMemoryReader reader) { dynamic_->set_gpu(std::move(reader)); }

void Metrics::count_request(std::string_view rpc, std::string_view code) {
  requests_->Add({{"rpc", std::string(rpc)}, {"code", std::string(code)}}).Increment();
}

void Metrics::observe_queue_wait(double seconds) { queue_wait_->Observe(seconds); }

void Metrics::observe_job(std::string_view outcome, double seconds) {
  jobs_->Add({{"outcome", std::string(outcome)}}).Increment();
  job_seconds_->Add({{"outcome", std::string(outcome)}}, duration_buckets_seconds()).Observe(seconds);
}

void Metrics::observe_stage(std::string_view stage, double seconds) {
  stage_seconds_->Add({{"stage", std::string(stage)}}, duration_buckets_seconds()).Observe(seconds);
}

void Metrics::observe_step(double seconds, bool skipped_by_teacache) {
  step_seconds_->Observe(seconds);
  steps_->Increment();
  if (skipped_by_teacache) skipped_steps_->Increment();
}

std::string Metrics::scrape() const { return prometheus::TextSerializer().Serialize(dynamic_->Collect()); }

}  // namespace stavid::server
