#include "client/cli.h"

#include <grpcpp/grpcpp.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "client/exit_codes.h"
#include "client/progress.h"
#include "client/result.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "stavid/v1/video.grpc.pb.h"

namespace stavid::client {

namespace v1 = stavid::v1;
namespace health = grpc::health::v1;

namespace {

constexpr const char* kDefaultServer = "localhost:50051";

const char kHelp[] = R"(stavid: client for the stavid video generation service.

Usage:
  stavid generate --prompt TEXT [options] -o OUT.mp4   generate, follow the progress, write the MP4
  stavid generate --prompt TEXT [options] --detach     queue the job and print its id
  stavid jobs list [--state S[,S...]] [--limit N] [--page-token T]
  stavid jobs get ID
  stavid jobs watch ID [-o OUT.mp4]                    re-attach: progress, then the MP4 if -o
  stavid jobs cancel ID
  stavid models
  stavid health [--service NAME]                       grpc.health.v1 Check ("" = whole server,
                                                       "liveness", "readiness")
  stavid COMMAND --help                                the options of one command

Common options (any command):
  --server HOST:PORT   server address (default $STAVID_SERVER, else localhost:50051)
  --token TOKEN        bearer token, sent as "authorization: Bearer TOKEN" (default $STAVID_TOKEN)
  --tls                use TLS; --ca FILE (root certificates, PEM; default: the system's),
                       --cert FILE and --key FILE (client certificate and key, PEM); any of the
                       three implies --tls
  --timeout SECONDS    deadline for the whole call (default: none)
  --round-robin        spread calls over every address the target resolves to (gRPC's round_robin
                       policy; use with dns:///stavid-headless...:50051 on Kubernetes)
  --json               machine output: JSON objects, one per line, on stdout
  -q, --quiet          no progress output
  -h, --help           this text

Progress goes to stderr: a live bar on a terminal, one line per event otherwise. Results (the
output path and a summary, tables, job ids) go to stdout.

Exit codes:
  0   success
  1   any other error (INTERNAL, UNIMPLEMENTED, a stream that ended early, a local write error)
  2   usage error (bad flags or values, unreadable --ca/--cert/--key)
  3   INVALID_ARGUMENT: the request is bad whatever the server state (retrying will not help)
  4   NOT_FOUND: unknown job id (or health service name)
  5   RESOURCE_EXHAUSTED or UNAVAILABLE: queue full, server draining or unreachable; retry later
      (also `stavid health` when the service is NOT_SERVING)
  6   the job failed while running
  7   CANCELLED: the job was cancelled; Ctrl-C during generate cancels the job and exits 7
  8   DEADLINE_EXCEEDED: --timeout passed, or the job's queue timeout
  9   UNAUTHENTICATED or PERMISSION_DENIED: missing or wrong --token
  10  the MP4 did not verify (missing bytes, size or SHA-256 mismatch); nothing was written
  11  ALREADY_EXISTS: the --client-job-id is already taken (the submit was already accepted)
  130 Ctrl-C during `jobs watch` (the job keeps running; watch it again to re-attach)
)";

const char kGenerateHelp[] = R"(stavid generate --prompt TEXT [options] -o OUT.mp4
stavid generate --prompt TEXT [options] --detach [--client-job-id ID]

  --prompt TEXT           the text prompt (required)
  --model NAME            model name (default: the first one `stavid models` lists)
  --negative-prompt TEXT  negative prompt, used with --true-cfg > 1
  --frames N              video frames, 4k+1 (server default when omitted)
  --height N, --width N   pixels, multiples of 16
  --steps N               denoising steps (default 50)
  --seed N                noise seed; 0 or omitted: the server picks one (reported at the end)
  --guidance X            embedded guidance scale (model default 6.0)
  --true-cfg X            true classifier-free guidance scale (> 1 runs two forwards per step)
  --shift X               flow-matching shift (model default 7.0)
  --fps N                 output frame rate (default 24)
  --teacache X            TeaCache threshold, 0 = off (typical 0.1 .. 0.15)
  --sta MODE              attention: "dense", "T,H,W[:DENSE_STEPS]" (one window in tiles after
                          DENSE_STEPS dense steps) or "strategy:NAME" (a calibrated strategy)
  --priority N            -10 .. 10, higher runs first
  --queue-timeout SECONDS give up if the job has not started by then
  --gpu-group-size N      run on a worker whose GPU group has N devices (0 or omitted: the
                          model's default group size, or any worker)
  --crf N, --preset NAME  H.264 quality (0..51, default 18) and x264 preset (default medium)
  -o, --output FILE       where to write the MP4 (required unless --detach); written only
                          once the size and SHA-256 verify, atomically (temporary file + rename)
  --detach                submit (SubmitJob) and print the job id; follow it with `jobs watch`
  --client-job-id ID      with --detach: your own id, so a retried submit is not run twice
                          (exit 11 when it already exists)
)";

const char kJobsListHelp[] = R"(stavid jobs list [--state S[,S...]] [--limit N] [--page-token T]

  --state S     only jobs in these states: queued, running, succeeded, failed, cancelled
  --limit N     at most N jobs (server default 100), newest first
  --page-token  the token printed after a full page
)";
const char kJobsGetHelp[] = "stavid jobs get ID\n\n  Prints the job's state, request and timings.\n";
const char kJobsWatchHelp[] = R"(stavid jobs watch ID [-o OUT.mp4]

  Re-attaches to a job: replays its state, follows it live, and with -o writes its MP4 (verified,
  atomically). Exit codes as for generate; Ctrl-C detaches (exit 130) and the job keeps running.
)";
const char kJobsCancelHelp[] = "stavid jobs cancel ID\n\n  Cancels a queued or running job.\n";
const char kModelsHelp[] = "stavid models\n\n  Lists the served models with their limits and STA strategies.\n";
const char kHealthHelp[] = R"(stavid health [--service NAME]

  grpc.health.v1 Check. NAME: "" (default, the whole server), "liveness" or "readiness".
  Prints SERVING or NOT_SERVING; exits 0 when SERVING, 5 when NOT_SERVING, 4 for an unknown name.
)";

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- flags ----

struct FlagSpec {
  const char* name;
  bool takes_value;
};

constexpr FlagSpec kFlags[] = {
    {"server", true},      {"token", true},         {"tls", false},          {"ca", true},
    {"cert", true},        {"key", true},           {"timeout", true},       {"json", false},
    {"quiet", false},      {"help", false},         {"prompt", true},        {"model", true},
    {"negative-prompt", true}, {"frames", true},    {"height", true},        {"width", true},
    {"steps", true},       {"seed", true},          {"guidance", true},      {"shift", true},
    {"fps", true},         {"teacache", true},      {"sta", true},           {"priority", true},
    {"queue-timeout", true}, {"crf", true},         {"preset", true},        {"true-cfg", true},
    {"detach", false},     {"client-job-id", true}, {"output", true},        {"state", true},
    {"limit", true},       {"page-token", true},    {"service", true},       {"round-robin", false},
    {"gpu-group-size", true},
};

const std::set<std::string> kCommonFlags = {"server",  "token", "tls",   "ca",   "cert",       "key",
                                            "timeout", "json",  "quiet", "help", "round-robin"};

const FlagSpec* find_flag(const std::string& name) {
  for (const auto& f : kFlags) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

struct ParsedArgs {
  std::vector<std::string> words;  // positional arguments, in order
  std::map<std::string, std::string> flags;
};

ParsedArgs parse_args(const std::vector<std::string>& args) {
  ParsedArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      parsed.words.insert(parsed.words.end(), args.begin() + i + 1, args.end());
      break;
    }
    std::string name;
    std::optional<std::string> value;
    if (a.rfind("--", 0) == 0) {
      const size_t eq = a.find('=');
      name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      if (eq != std::string::npos) value = a.substr(eq + 1);
    } else if (a == "-o") {
      name = "output";
    } else if (a == "-h") {
      name = "help";
    } else if (a == "-q") {
      name = "quiet";
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option " + a);
    } else {
      parsed.words.push_back(a);
      continue;
    }
    const FlagSpec* spec = find_flag(name);
    if (spec == nullptr) throw UsageError("unknown option --" + name);
    if (spec->takes_value) {
      if (!value) {
        if (i + 1 >= args.size()) throw UsageError("--" + name + " needs a value");
        value = args[++i];
      }
      parsed.flags[name] = *value;
    } else {
      if (value) throw UsageError("--" + name + " takes no value");
      parsed.flags[name] = "1";
    }
  }
  return parsed;
}

uint64_t parse_u64(const std::string& flag, const std::string& text, uint64_t max) {
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v > max) {
    throw UsageError("--" + flag + " wants a whole number from 0 to " + std::to_string(max) + ", not '" +
                     text + "'");
  }
  return v;
}

int64_t parse_i64(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < min || v > max) {
    throw UsageError("--" + flag + " wants a whole number from " + std::to_string(min) + " to " +
                     std::to_string(max) + ", not '" + text + "'");
  }
  return v;
}

double parse_double(const std::string& flag, const std::string& text) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v)) {
    throw UsageError("--" + flag + " wants a number, not '" + text + "'");
  }
  return v;
}

uint32_t parse_u32(const std::string& flag, const std::string& text) {
  return static_cast<uint32_t>(parse_u64(flag, text, UINT32_MAX));
}

// "dense" | "T,H,W[:DENSE_STEPS]" | "strategy:NAME"
v1::StaMode parse_sta(const std::string& text) {
  v1::StaMode sta;
  const std::string kStrategy = "strategy:";
  if (text == "dense") {
    sta.set_kind(v1::StaMode::KIND_DENSE);
  } else if (text.rfind(kStrategy, 0) == 0) {
    if (text.size() == kStrategy.size()) throw UsageError("--sta strategy: needs a name");
    sta.set_kind(v1::StaMode::KIND_STRATEGY);
    sta.set_strategy(text.substr(kStrategy.size()));
  } else {
    const std::string bad = "--sta wants dense, T,H,W[:DENSE_STEPS] or strategy:NAME, not '" + text + "'";
    const size_t colon = text.find(':');
    const std::string window = text.substr(0, colon);
    std::vector<uint32_t> dims;
    std::stringstream ss(window);
    std::string part;
    while (std::getline(ss, part, ',')) {
      try {
        dims.push_back(parse_u32("sta", part));
      } catch (const UsageError&) {
        throw UsageError(bad);
      }
    }
    if (dims.size() != 3 || window.back() == ',') throw UsageError(bad);
    for (uint32_t d : dims) {
      if (d == 0) throw UsageError("--sta windows are at least 1 tile");
    }
    sta.set_kind(v1::StaMode::KIND_FIXED);
    sta.set_window_t(dims[0]);
    sta.set_window_h(dims[1]);
    sta.set_window_w(dims[2]);
    if (colon != std::string::npos) {
      try {
        sta.set_dense_steps(parse_u32("sta", text.substr(colon + 1)));
      } catch (const UsageError&) {
        throw UsageError(bad);
      }
    }
  }
  return sta;
}

v1::JobState parse_state(const std::string& text) {
  for (int s = v1::JOB_STATE_QUEUED; s <= v1::JOB_STATE_CANCELLED; ++s) {
    if (job_state_name(static_cast<v1::JobState>(s)) == text) return static_cast<v1::JobState>(s);
  }
  throw UsageError("--state wants queued, running, succeeded, failed or cancelled, not '" + text + "'");
}

// ---- connection ----

struct Common {
  std::string server;
  std::string token;
  bool tls = false;
  bool round_robin = false;
  std::string ca, cert, key;
  std::optional<double> timeout_seconds;
  OutputMode mode = OutputMode::Lines;
};

std::string read_file(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read --" + flag + " file " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::shared_ptr<grpc::Channel> make_channel(const Common& c) {
  grpc::ChannelArguments args;
  // kube-proxy balances connections, not HTTP/2 streams: with a headless Service's dns:/// target,
  // round_robin keeps a subchannel per pod and spreads calls over them.
  if (c.round_robin) args.SetLoadBalancingPolicyName("round_robin");
  if (!c.tls) return grpc::CreateCustomChannel(c.server, grpc::InsecureChannelCredentials(), args);
  grpc::SslCredentialsOptions options;
  if (!c.ca.empty()) options.pem_root_certs = read_file("ca", c.ca);
  if (!c.cert.empty()) options.pem_cert_chain = read_file("cert", c.cert);
  if (!c.key.empty()) options.pem_private_key = read_file("key", c.key);
  return grpc::CreateCustomChannel(c.server, grpc::SslCredentials(options), args);
}

void prepare(grpc::ClientContext& ctx, const Common& c) {
  if (!c.token.empty()) ctx.AddMetadata("authorization", "Bearer " + c.token);
  if (c.timeout_seconds) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::duration<double>(*c.timeout_seconds)));
  }
}

// Cancels `ctx` when `*flag` turns true (polled: a signal handler can only set a flag).
class InterruptWatcher {
 public:
  InterruptWatcher(const std::atomic<bool>* flag, grpc::ClientContext* ctx) {
    if (flag == nullptr) return;
    thread_ = std::thread([this, flag, ctx] {
      std::unique_lock lock(mu_);
      while (!stop_) {
        if (flag->load()) {
          fired_ = true;
          ctx->TryCancel();
          return;
        }
        cv_.wait_for(lock, std::chrono::milliseconds(20));
      }
    });
  }
  ~InterruptWatcher() { stop(); }
  void stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  bool fired() {
    std::lock_guard lock(mu_);
    return fired_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool fired_ = false;
  std::thread thread_;
};

// ---- commands ----

struct Invocation {
  CliIo& io;
  std::map<std::string, std::string> flags;
  std::vector<std::string> args;  // after the command words
  Common common;

  bool has(const std::string& name) const { return flags.count(name) != 0; }
  const std::string& get(const std::string& name) const { return flags.at(name); }
  std::string get_or(const std::string& name, const std::string& fallback) const {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second;
  }
  bool json() const { return common.mode == OutputMode::Json; }
  bool quiet() const { return common.mode == OutputMode::Quiet || common.mode == OutputMode::Json; }
};

int report_status(const Invocation& inv, const std::string& what, const grpc::Status& status) {
  inv.io.err << "stavid: " << what << ": " << status_code_name(status.error_code()) << ": "
             << status.error_message() << "\n";
  return to_int(exit_code_for_status(status.error_code()));
}

std::string format_time(double unix_seconds) {
  if (unix_seconds <= 0) return "-";
  const auto t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Follows a Generate or WatchJob stream to its end. With `output`, assembles, verifies and writes the
// MP4. `owns_job`: the call owns the job (Generate), so an interrupt cancels it (exit 7) rather than
// detaching (exit 130).
int follow(const Invocation& inv, grpc::ClientContext& ctx, grpc::ClientReaderInterface<v1::JobEvent>& reader,
           const std::string& output, bool owns_job, const std::string& known_job_id) {
  ProgressPrinter printer(inv.common.mode, inv.io.out, inv.io.err);
  ResultAssembler result;
  std::optional<std::string> corrupt;
  std::optional<v1::JobCompleted> completed;
  std::optional<v1::JobFailed> failed;
  std::string job_id = known_job_id;
  grpc::Status status;
  bool interrupted = false;
  {
    InterruptWatcher watcher(inv.io.interrupted, &ctx);
    v1::JobEvent event;
    while (reader.Read(&event)) {
      if (job_id.empty()) job_id = event.job_id();
      printer.on_event(event);
      switch (event.event_case()) {
        case v1::JobEvent::kResult:
          if (output.empty() || corrupt) break;
          try {
            result.add(event.result());
          } catch (const ResultCorrupt& e) {
            corrupt = e.what();
          }
          break;
        case v1::JobEvent::kCompleted:
          completed = event.completed();
          break;
        case v1::JobEvent::kFailed:
          failed = event.failed();
          break;
        default:
          break;
      }
    }
    status = reader.Finish();
    watcher.stop();
    interrupted = watcher.fired();
  }
  printer.close();
  const std::string job = job_id.empty() ? std::string("(no id yet)") : job_id;

  if (interrupted) {
    if (owns_job) {
      inv.io.err << "stavid: interrupted: " << (job_id.empty() ? "call" : "job " + job_id) << " cancelled\n";
      return to_int(ExitCode::Cancelled);
    }
    inv.io.err << "stavid: interrupted; job " << job << " keeps running (stavid jobs watch " << job << ")\n";
    return to_int(ExitCode::Interrupted);
  }
  if (failed) {
    inv.io.err << "stavid: job " << job << " failed: " << status_code_name(failed->code()) << ": "
               << failed->message() << "\n";
    return to_int(exit_code_for_job_failure(failed->code()));
  }
  if (!status.ok()) return report_status(inv, owns_job ? "generate" : "watch " + job, status);
  if (!completed) {
    inv.io.err << "stavid: the stream of job " << job << " ended before the job finished\n";
    return to_int(ExitCode::Failure);
  }

  nlohmann::json summary = {{"job_id", job_id}};
  if (!output.empty()) {
    if (!corrupt && result.empty()) {
      inv.io.err << "stavid: job " << job << " completed but the server sent no result "
                 << "(dropped from its result store?)\n";
      return to_int(ExitCode::Failure);
    }
    std::string bytes;
    if (!corrupt) {
      try {
        bytes = result.assemble();
        if (completed->result_bytes() != 0 && completed->result_bytes() != bytes.size()) {
          throw ResultCorrupt("received " + std::to_string(bytes.size()) + " bytes, the completion reports " +
                              std::to_string(completed->result_bytes()));
        }
      } catch (const ResultCorrupt& e) {
        corrupt = e.what();
      }
    }
    if (corrupt) {
      inv.io.err << "stavid: the result of job " << job << " is corrupt: " << *corrupt << "; "
                 << output << " not written\n";
      return to_int(ExitCode::ResultCorrupt);
    }
    try {
      write_file_atomically(output, bytes);
    } catch (const std::exception& e) {
      inv.io.err << "stavid: " << e.what() << "\n";
      return to_int(ExitCode::Failure);
    }
    summary["path"] = output;
    summary["bytes"] = bytes.size();
    summary["sha256"] = to_hex(sha256(bytes));
    if (!inv.json()) inv.io.out << output << "\n";
  }
  if (inv.json()) {
    summary["completed"] = nlohmann::json::parse(message_to_json(*completed));
    inv.io.out << summary.dump() << "\n";
  } else {
    inv.io.out << "job " << job << ": " << format_completed(*completed) << "\n";
  }
  return to_int(ExitCode::Ok);
}

int cmd_generate(const Invocation& inv) {
  if (!inv.has("prompt")) throw UsageError("generate needs --prompt");
  const bool detach = inv.has("detach");
  const std::string output = inv.get_or("output", "");
  if (!detach && output.empty()) throw UsageError("generate needs -o FILE (or --detach)");
  if (detach && !output.empty()) {
    throw UsageError("--detach returns at once; write the result with: stavid jobs watch ID -o FILE");
  }
  if (!detach && inv.has("client-job-id")) throw UsageError("--client-job-id goes with --detach");

  v1::GenerateRequest req;
  req.set_prompt(inv.get("prompt"));
  if (inv.has("negative-prompt")) req.set_negative_prompt(inv.get("negative-prompt"));
  if (inv.has("frames")) req.set_frames(parse_u32("frames", inv.get("frames")));
  if (inv.has("height")) req.set_height(parse_u32("height", inv.get("height")));
  if (inv.has("width")) req.set_width(parse_u32("width", inv.get("width")));
  if (inv.has("steps")) req.set_steps(parse_u32("steps", inv.get("steps")));
  if (inv.has("seed")) req.set_seed(parse_u64("seed", inv.get("seed"), UINT64_MAX));
  if (inv.has("guidance")) req.set_guidance(static_cast<float>(parse_double("guidance", inv.get("guidance"))));
  if (inv.has("true-cfg")) req.set_true_cfg_scale(static_cast<float>(parse_double("true-cfg", inv.get("true-cfg"))));
  if (inv.has("shift")) req.set_flow_shift(static_cast<float>(parse_double("shift", inv.get("shift"))));
  if (inv.has("fps")) req.set_fps(parse_u32("fps", inv.get("fps")));
  if (inv.has("teacache")) {
    req.set_teacache_threshold(static_cast<float>(parse_double("teacache", inv.get("teacache"))));
  }
  if (inv.has("sta")) *req.mutable_sta() = parse_sta(inv.get("sta"));
  if (inv.has("priority")) {
    req.set_priority(static_cast<int32_t>(parse_i64("priority", inv.get("priority"), INT32_MIN, INT32_MAX)));
  }
  if (inv.has("queue-timeout")) req.set_queue_timeout_seconds(parse_u32("queue-timeout", inv.get("queue-timeout")));
  if (inv.has("gpu-group-size")) req.set_gpu_group_size(parse_u32("gpu-group-size", inv.get("gpu-group-size")));
  if (inv.has("crf")) req.mutable_output()->set_crf(parse_u32("crf", inv.get("crf")));
  if (inv.has("preset")) req.mutable_output()->set_preset(inv.get("preset"));

  auto channel = make_channel(inv.common);
  auto stub = v1::VideoService::NewStub(channel);
  if (inv.has("model")) {
    req.set_model(inv.get("model"));
  } else {
    grpc::ClientContext ctx;
    prepare(ctx, inv.common);
    v1::ListModelsResponse models;
    const grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &models);
    if (!s.ok()) return report_status(inv, "list models (to pick the default; or pass --model)", s);
    if (models.models_size() == 0) {
      inv.io.err << "stavid: the server lists no models\n";
      return to_int(ExitCode::Failure);
    }
    req.set_model(models.models(0).name());
  }

  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  if (detach) {
    v1::SubmitJobRequest submit;
    *submit.mutable_request() = req;
    submit.set_client_job_id(inv.get_or("client-job-id", ""));
    v1::SubmitJobResponse response;
    const grpc::Status s = stub->SubmitJob(&ctx, submit, &response);
    if (!s.ok()) return report_status(inv, "submit", s);
    if (inv.json()) {
      inv.io.out << message_to_json(response) << "\n";
    } else {
      inv.io.out << response.job_id() << "\n";
      if (!inv.quiet()) inv.io.err << "queued at position " << response.queue_position() + 1 << "\n";
    }
    return to_int(ExitCode::Ok);
  }
  auto reader = stub->Generate(&ctx, req);
  return follow(inv, ctx, *reader, output, /*owns_job=*/true, "");
}

int cmd_jobs_watch(const Invocation& inv) {
  const std::string& id = inv.args.at(0);
  const std::string output = inv.get_or("output", "");
  auto stub = v1::VideoService::NewStub(make_channel(inv.common));
  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  v1::WatchJobRequest req;
  req.set_job_id(id);
  req.set_include_result(!output.empty());
  auto reader = stub->WatchJob(&ctx, req);
  return follow(inv, ctx, *reader, output, /*owns_job=*/false, id);
}

std::string truncate(const std::string& s, size_t n) {
  return s.size() <= n ? s : s.substr(0, n - 3) + "...";
}

std::string pad(const std::string& s, size_t n) { return s.size() >= n ? s + " " : s + std::string(n - s.size(), ' '); }

int cmd_jobs_list(const Invocation& inv) {
  v1::ListJobsRequest req;
  if (inv.has("state")) {
    std::stringstream ss(inv.get("state"));
    std::string part;
    while (std::getline(ss, part, ',')) req.add_states(parse_state(part));
  }
  if (inv.has("limit")) req.set_page_size(parse_u32("limit", inv.get("limit")));
  if (inv.has("page-token")) req.set_page_token(inv.get("page-token"));
  auto stub = v1::VideoService::NewStub(make_channel(inv.common));
  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  v1::ListJobsResponse response;
  const grpc::Status s = stub->ListJobs(&ctx, req, &response);
  if (!s.ok()) return report_status(inv, "list jobs", s);
  if (inv.json()) {
    inv.io.out << message_to_json(response) << "\n";
    return to_int(ExitCode::Ok);
  }
  size_t id_width = 6;
  for (const auto& job : response.jobs()) id_width = std::max(id_width, job.job_id().size() + 2);
  inv.io.out << pad("JOB ID", id_width) << pad("STATE", 11) << pad("STEPS", 9) << pad("AGE", 8)
             << pad("MODEL", 16) << "PROMPT\n";
  const double now = now_unix();
  for (const auto& job : response.jobs()) {
    const std::string steps = std::to_string(job.steps_done()) + "/" +
                              (job.request().steps() ? std::to_string(job.request().steps()) : std::string("-"));
    inv.io.out << pad(job.job_id(), id_width) << pad(job_state_name(job.state()), 11) << pad(steps, 9)
               << pad(job.submitted_at() > 0 ? format_duration(now - job.submitted_at()) : "-", 8)
               << pad(job.request().model(), 16) << truncate(job.request().prompt(), 40) << "\n";
  }
  if (!response.next_page_token().empty() && !inv.quiet()) {
    inv.io.err << "more: stavid jobs list --page-token " << response.next_page_token() << "\n";
  }
  return to_int(ExitCode::Ok);
}

void print_job(const Invocation& inv, const v1::Job& job) {
  if (inv.json()) {
    inv.io.out << message_to_json(job) << "\n";
    return;
  }
  auto& o = inv.io.out;
  const auto& r = job.request();
  o << "job          " << job.job_id() << "\n";
  if (!job.client_job_id().empty()) o << "client id    " << job.client_job_id() << "\n";
  o << "state        " << job_state_name(job.state()) << "\n";
  o << "model        " << r.model() << "\n";
  o << "prompt       " << r.prompt() << "\n";
  o << "video        " << r.frames() << " frames " << r.width() << "x" << r.height() << ", " << r.steps()
    << " steps, seed " << r.seed() << "\n";
  o << "steps done   " << job.steps_done() << "\n";
  o << "submitted    " << format_time(job.submitted_at()) << "\n";
  o << "started      " << format_time(job.started_at()) << "\n";
  o << "finished     " << format_time(job.finished_at()) << "\n";
  if (job.error_code() != 0 || !job.error_message().empty()) {
    o << "error        " << status_code_name(job.error_code()) << ": " << job.error_message() << "\n";
  }
  if (job.result_bytes() != 0) o << "result       " << job.result_bytes() << " bytes\n";
}

int cmd_jobs_get(const Invocation& inv) {
  auto stub = v1::VideoService::NewStub(make_channel(inv.common));
  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  v1::GetJobRequest req;
  req.set_job_id(inv.args.at(0));
  v1::Job job;
  const grpc::Status s = stub->GetJob(&ctx, req, &job);
  if (!s.ok()) return report_status(inv, "get job " + req.job_id(), s);
  print_job(inv, job);
  return to_int(ExitCode::Ok);
}

int cmd_jobs_cancel(const Invocation& inv) {
  auto stub = v1::VideoService::NewStub(make_channel(inv.common));
  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  v1::CancelJobRequest req;
  req.set_job_id(inv.args.at(0));
  v1::Job job;
  const grpc::Status s = stub->CancelJob(&ctx, req, &job);
  if (!s.ok()) return report_status(inv, "cancel job " + req.job_id(), s);
  if (inv.json()) {
    inv.io.out << message_to_json(job) << "\n";
  } else {
    inv.io.out << "job " << job.job_id() << ": " << job_state_name(job.state()) << "\n";
  }
  return to_int(ExitCode::Ok);
}

int cmd_models(const Invocation& inv) {
  auto stub = v1::VideoService::NewStub(make_channel(inv.common));
  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  v1::ListModelsResponse response;
  const grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &response);
  if (!s.ok()) return report_status(inv, "list models", s);
  if (inv.json()) {
    inv.io.out << message_to_json(response) << "\n";
    return to_int(ExitCode::Ok);
  }
  size_t name_width = 6;
  for (const auto& m : response.models()) name_width = std::max(name_width, m.name().size() + 2);
  inv.io.out << pad("NAME", name_width) << pad("FRAMES", 8) << pad("PIXELS", 10) << pad("STEPS", 7)
             << pad("TILE", 10) << pad("STRATEGIES", 24) << "DESCRIPTION\n";
  for (const auto& m : response.models()) {
    std::string strategies;
    for (int i = 0; i < m.strategies_size(); ++i) strategies += (i ? "," : "") + m.strategies(i);
    const std::string tile =
        std::to_string(m.tile_t()) + "x" + std::to_string(m.tile_h()) + "x" + std::to_string(m.tile_w());
    inv.io.out << pad(m.name(), name_width) << pad(std::to_string(m.max_frames()), 8)
               << pad(std::to_string(m.max_pixels()), 10) << pad(std::to_string(m.default_steps()), 7)
               << pad(tile, 10) << pad(strategies.empty() ? "-" : strategies, 24) << m.description() << "\n";
  }
  return to_int(ExitCode::Ok);
}

int cmd_health(const Invocation& inv) {
  auto stub = health::Health::NewStub(make_channel(inv.common));
  grpc::ClientContext ctx;
  prepare(ctx, inv.common);
  health::HealthCheckRequest req;
  req.set_service(inv.get_or("service", ""));
  health::HealthCheckResponse response;
  const grpc::Status s = stub->Check(&ctx, req, &response);
  const std::string label = req.service().empty() ? std::string("server") : "service " + req.service();
  if (!s.ok()) return report_status(inv, "health of " + label, s);
  const std::string status = health::HealthCheckResponse::ServingStatus_Name(response.status());
  if (inv.json()) {
    inv.io.out << nlohmann::json{{"service", req.service()}, {"status", status}}.dump() << "\n";
  } else {
    inv.io.out << status << "\n";
  }
  switch (response.status()) {
    case health::HealthCheckResponse::SERVING:
      return to_int(ExitCode::Ok);
    case health::HealthCheckResponse::NOT_SERVING:
      return to_int(ExitCode::Retryable);
    case health::HealthCheckResponse::SERVICE_UNKNOWN:
      return to_int(ExitCode::NotFound);
    default:
      return to_int(ExitCode::Failure);
  }
}

struct CommandSpec {
  std::vector<std::string> words;  // {"jobs", "get"}
  size_t arg_count;                // positional arguments after the words
  std::set<std::string> flags;     // besides the common ones
  const char* help;
  std::function<int(const Invocation&)> run;
};

const std::vector<CommandSpec>& commands() {
  static const std::vector<CommandSpec> kCommands = {
      {{"generate"},
       0,
       {"prompt", "model", "negative-prompt", "frames", "height", "width", "steps", "seed", "guidance",
        "shift", "fps", "teacache", "sta", "priority", "queue-timeout", "crf", "preset", "true-cfg",
        "gpu-group-size", "detach", "client-job-id", "output"},
       kGenerateHelp,
       cmd_generate},
      {{"jobs", "list"}, 0, {"state", "limit", "page-token"}, kJobsListHelp, cmd_jobs_list},
      {{"jobs", "get"}, 1, {}, kJobsGetHelp, cmd_jobs_get},
      {{"jobs", "watch"}, 1, {"output"}, kJobsWatchHelp, cmd_jobs_watch},
      {{"jobs", "cancel"}, 1, {}, kJobsCancelHelp, cmd_jobs_cancel},
      {{"models"}, 0, {}, kModelsHelp, cmd_models},
      {{"health"}, 0, {"service"}, kHealthHelp, cmd_health},
  };
  return kCommands;
}

const CommandSpec* find_command(const std::vector<std::string>& words) {
  for (const auto& c : commands()) {
    if (words.size() >= c.words.size() && std::equal(c.words.begin(), c.words.end(), words.begin())) return &c;
  }
  return nullptr;
}

std::string joined(const std::vector<std::string>& words) {
  std::string s;
  for (const auto& w : words) s += (s.empty() ? "" : " ") + w;
  return s;
}

Common common_options(const ParsedArgs& parsed, const CliIo& io) {
  auto flag_or_env = [&](const std::string& flag, const std::string& env, const std::string& fallback) {
    if (auto it = parsed.flags.find(flag); it != parsed.flags.end()) return it->second;
    if (auto it = io.env.find(env); it != io.env.end() && !it->second.empty()) return it->second;
    return fallback;
  };
  Common c;
  c.server = flag_or_env("server", "STAVID_SERVER", kDefaultServer);
  if (c.server.empty()) throw UsageError("--server is empty");
  c.token = flag_or_env("token", "STAVID_TOKEN", "");
  for (unsigned char ch : c.token) {
    if (ch < 0x20 || ch > 0x7e) throw UsageError("the token holds a character that cannot go in a header");
  }
  auto get = [&](const char* name) {
    auto it = parsed.flags.find(name);
    return it == parsed.flags.end() ? std::string() : it->second;
  };
  c.ca = get("ca");
  c.cert = get("cert");
  c.key = get("key");
  if (c.cert.empty() != c.key.empty()) throw UsageError("--cert and --key go together");
  c.tls = parsed.flags.count("tls") || !c.ca.empty() || !c.cert.empty();
  c.round_robin = parsed.flags.count("round-robin") > 0;
  if (parsed.flags.count("timeout")) {
    const double t = parse_double("timeout", parsed.flags.at("timeout"));
    if (t <= 0) throw UsageError("--timeout wants a positive number of seconds");
    c.timeout_seconds = t;
  }
  if (parsed.flags.count("json")) {
    c.mode = OutputMode::Json;
  } else if (parsed.flags.count("quiet")) {
    c.mode = OutputMode::Quiet;
  } else {
    c.mode = io.err_is_tty ? OutputMode::Bar : OutputMode::Lines;
  }
  return c;
}

}  // namespace

const char* cli_help() { return kHelp; }

int run_cli(const std::vector<std::string>& args, CliIo& io) {
  try {
    const ParsedArgs parsed = parse_args(args);
    const bool help = parsed.flags.count("help") != 0;
    if (parsed.words.empty() || parsed.words[0] == "help") {
      if (help || (!parsed.words.empty() && parsed.words.size() == 1)) {
        io.out << kHelp;
        return to_int(ExitCode::Ok);
      }
      if (!parsed.words.empty()) {
        const CommandSpec* c = find_command({parsed.words.begin() + 1, parsed.words.end()});
        if (c == nullptr) throw UsageError("no command '" + joined({parsed.words.begin() + 1, parsed.words.end()}) + "'");
        io.out << c->help;
        return to_int(ExitCode::Ok);
      }
      io.err << kHelp;
      return to_int(ExitCode::Usage);
    }
    const CommandSpec* command = find_command(parsed.words);
    if (command == nullptr) {
      if (parsed.words[0] == "jobs") {
        if (help) {
          io.out << kJobsListHelp << "\n" << kJobsGetHelp << "\n" << kJobsWatchHelp << "\n" << kJobsCancelHelp;
          return to_int(ExitCode::Ok);
        }
        throw UsageError("jobs wants list, get ID, watch ID or cancel ID");
      }
      throw UsageError("unknown command '" + parsed.words[0] + "'");
    }
    if (help) {
      io.out << command->help;
      return to_int(ExitCode::Ok);
    }
    const std::string name = joined(command->words);
    for (const auto& [flag, value] : parsed.flags) {
      if (!kCommonFlags.count(flag) && !command->flags.count(flag)) {
        throw UsageError("'" + name + "' takes no --" + flag);
      }
    }
    Invocation inv{io, parsed.flags, {parsed.words.begin() + command->words.size(), parsed.words.end()},
                   common_options(parsed, io)};
    if (inv.args.size() != command->arg_count) {
      throw UsageError("'" + name + "' takes " +
                       (command->arg_count ? std::string("a job id") : std::string("no arguments")) +
                       (inv.args.empty() ? "" : ", not '" + joined(inv.args) + "'"));
    }
    if (command->arg_count && inv.args[0].empty()) throw UsageError("the job id is empty");
    return command->run(inv);
  } catch (const UsageError& e) {
    io.err << "stavid: " << e.what() << " (see stavid --help)\n";
    return to_int(ExitCode::Usage);
  } catch (const std::exception& e) {
    io.err << "stavid: " << e.what() << "\n";
    return to_int(ExitCode::Failure);
  }
}

}  // namespace stavid::client
