// VideoService (see service.h for the policy).
#include "server/service.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <deque>
#include <optional>

namespace stavid::server {

namespace v1 = stavid::v1;
using std::chrono::system_clock;

namespace {

constexpr size_t kMaxClientJobIdLength = 128;
constexpr uint32_t kDefaultPageSize = 100;
constexpr uint32_t kMaxPageSize = 1000;
constexpr int32_t kMinPriority = -10;
constexpr int32_t kMaxPriority = 10;
constexpr uint32_t kMaxQueueTimeoutSeconds = 7 * 24 * 3600;

grpc::Status status_of(StatusCode code, const std::string& message) {
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(code)), message);
}

const char* grpc_code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

v1::JobState job_state_proto(JobState s) {
  switch (s) {
    case JobState::Queued: return v1::JOB_STATE_QUEUED;
    case JobState::Running: return v1::JOB_STATE_RUNNING;
    case JobState::Succeeded: return v1::JOB_STATE_SUCCEEDED;
    case JobState::Failed: return v1::JOB_STATE_FAILED;
    case JobState::Cancelled: return v1::JOB_STATE_CANCELLED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

v1::Stage stage_proto(const std::string& name) {
  if (name == "text") return v1::STAGE_TEXT;
  if (name == "denoise") return v1::STAGE_DENOISE;
  if (name == "decode") return v1::STAGE_DECODE;
  if (name == "encode") return v1::STAGE_ENCODE;
  return v1::STAGE_UNSPECIFIED;
}

double unix_seconds(WallTime t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

double seconds_between(WallTime a, WallTime b) { return std::chrono::duration<double>(b - a).count(); }

// What the runner stores with a result (JobContext::set_result_info): one byte with the digest's
// length (0 or 32), the SHA-256 of the result, then the serialized JobCompleted.
std::string encode_result_info(const std::string& digest, const v1::JobCompleted& done) {
  std::string out(1, static_cast<char>(digest.size()));
  out += digest;
  out += done.SerializeAsString();
  return out;
}

bool decode_result_info(const std::string& info, std::string* digest, v1::JobCompleted* done) {
  if (info.empty()) return false;
  const size_t n = static_cast<uint8_t>(info[0]);
  if (info.size() < 1 + n) return false;
  *digest = info.substr(1, n);
  return done->ParseFromArray(info.data() + 1 + n, static_cast<int>(info.size() - 1 - n));
}

bool valid_client_job_id(const std::string& id) {
  if (id.empty() || id.size() > kMaxClientJobIdLength) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}

}  // namespace

std::string sha256(const uint8_t* data, size_t size) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(data, size, digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

// ---- EventStream: one Generate or WatchJob call ----

class EventStream final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  EventStream(VideoService& service, const char* rpc, bool cancel_job_on_end, bool include_result)
      : service_(service),
        rpc_(rpc),
        cancel_job_on_end_(cancel_job_on_end),
        include_result_(include_result),
        last_write_(std::chrono::steady_clock::now()) {
    service_.register_stream(this);
  }

  // The subscription callback; events may arrive before attached().
  EventCallback callback() {
    return [this](const JobEvent& e) { on_job_event(e); };
  }

  // The job is followed through `subscription`; the stream may finish from now on.
  void attached(const std::string& job_id, WallTime submitted_at, Subscription subscription) {
    subscription_ = std::move(subscription);
    bool cancel_now = false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_id_ = job_id;
      submitted_at_ = submitted_at;
      started_ = true;
      cancel_now = cancelled_ && cancel_job_on_end_ && !terminal_seen_;
      pump_locked();
    }
    if (cancel_now) cancel_job();
  }

  // Ends the call without following a job (a rejected request).
  void finish_now(const grpc::Status& status) {
    std::lock_guard<std::mutex> lk(mu_);
    final_status_ = status;
    started_ = true;
    pump_locked();
  }

  void heartbeat_if_quiet(std::chrono::steady_clock::time_point now, std::chrono::milliseconds interval) {
    std::lock_guard<std::mutex> lk(mu_);
    if (!started_ || finish_called_ || cancelled_ || write_in_flight_ || final_status_) return;
    if (!queue_.empty() || now - last_write_ < interval) return;
    v1::JobEvent event = make_event_locked();
    event.mutable_heartbeat();
    queue_.push_back(std::move(event));
    pump_locked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lk(mu_);
    write_in_flight_ = false;
    if (!ok) broken_ = true;
    pump_locked();
  }

  void OnCancel() override {
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      cancelled_ = true;
      cancel = started_ && cancel_job_on_end_ && !terminal_seen_ && !job_id_.empty();
      pump_locked();
    }
    if (cancel) cancel_job();
  }

  void OnDone() override {
    service_.unregister_stream(this);
    subscription_.reset();  // waits for a callback in progress
    delete this;
  }

 private:
  void cancel_job() {
    try {
      service_.scheduler_->cancel(job_id_);
    } catch (const SubmitError&) {
      // Already gone from the store: nothing to cancel.
    }
  }

  v1::JobEvent make_event_locked() const {
    v1::JobEvent event;
    event.set_job_id(job_id_);
    event.set_elapsed_seconds(seconds_between(submitted_at_, system_clock::now()));
    return event;
  }

  void on_job_event(const JobEvent& e) {
    std::lock_guard<std::mutex> lk(mu_);
    if (finish_called_ || final_status_) return;
    if (job_id_.empty()) job_id_ = e.job_id;
    v1::JobEvent event = make_event_locked();
    switch (e.kind) {
      case JobEvent::Kind::Queued: {
        auto* q = event.mutable_queued();
        q->set_position(static_cast<uint32_t>(e.queue_position));
        q->set_queue_depth(static_cast<uint32_t>(e.queue_depth));
        break;
      }
      case JobEvent::Kind::Started: {
        auto* s = event.mutable_started();
        s->set_worker(service_.pipeline_.worker_name(e.worker));
        for (uint32_t g : service_.pipeline_.worker_gpus(e.worker)) s->add_gpus(g);
        break;
      }
      case JobEvent::Kind::Stage: {
        auto* s = event.mutable_stage();
        s->set_stage(stage_proto(e.stage));
        s->set_finished(e.stage_finished);
        s->set_duration_seconds(e.stage_seconds);
        break;
      }
      case JobEvent::Kind::Step: {
        step_seconds_sum_ += e.step_seconds;
        ++steps_seen_;
        auto* s = event.mutable_step();
        s->set_index(static_cast<uint32_t>(e.step_index));
        s->set_total(static_cast<uint32_t>(e.step_total));
        s->set_step_seconds(e.step_seconds);
        s->set_skipped_by_teacache(e.step_skipped);
        const int32_t remaining = std::max(0, e.step_total - e.step_index - 1);
        s->set_eta_seconds(remaining * (step_seconds_sum_ / steps_seen_));
        break;
      }
      case JobEvent::Kind::Data:
        if (e.data_name != "preview" || !e.bytes) return;
        if (!event.mutable_preview()->ParseFromArray(e.bytes->data(), static_cast<int>(e.bytes->size()))) return;
        break;
      case JobEvent::Kind::Completed: {
        terminal_seen_ = true;
        std::string digest;
        v1::JobCompleted done;
        decode_result_info(e.result_info, &digest, &done);
        *event.mutable_completed() = done;
        final_status_ = grpc::Status::OK;
        if (include_result_ && e.bytes && !e.bytes->empty()) {
          result_ = e.bytes;
          result_offset_ = 0;
          result_digest_ = digest.size() == SHA256_DIGEST_LENGTH ? digest : sha256(e.bytes->data(), e.bytes->size());
          completed_ = std::move(event);  // sent after the last chunk
          pump_locked();
          return;
        }
        if (include_result_ && e.result_evicted) {
          final_status_ = grpc::Status(grpc::StatusCode::NOT_FOUND,
                                       "the job succeeded but its result was evicted from the store");
        }
        break;
      }
      case JobEvent::Kind::Failed:
      case JobEvent::Kind::Cancelled: {
        terminal_seen_ = true;
        const StatusCode code = e.code == StatusCode::Ok
                                    ? (e.kind == JobEvent::Kind::Cancelled ? StatusCode::Cancelled : StatusCode::Internal)
                                    : e.code;
        auto* f = event.mutable_failed();
        f->set_code(static_cast<int32_t>(code));
        f->set_message(e.message);
        final_status_ = status_of(code, e.message);
        break;
      }
    }
    queue_.push_back(std::move(event));
    pump_locked();
  }

  // Starts the next write, or finishes the call once everything is written. mu_ held.
  void pump_locked() {
    if (write_in_flight_ || finish_called_ || !started_) return;
    if (cancelled_ || broken_) {
      finish_locked(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
      return;
    }
    if (!queue_.empty()) {
      writing_ = std::move(queue_.front());
      queue_.pop_front();
      start_write_locked();
      return;
    }
    if (result_) {
      writing_ = make_event_locked();
      auto* chunk = writing_.mutable_result();
      const size_t size = result_->size();
      const size_t n = std::min(kResultChunkBytes, size - result_offset_);
      chunk->set_offset(result_offset_);
      chunk->set_data(result_->data() + result_offset_, n);
      result_offset_ += n;
      if (result_offset_ == size) {
        chunk->set_last(true);
        chunk->set_total_bytes(size);
        chunk->set_sha256(result_digest_);
        result_.reset();
        queue_.push_back(std::move(completed_));
      }
      start_write_locked();
      return;
    }
    if (final_status_) finish_locked(*final_status_);
  }

  void start_write_locked() {
    write_in_flight_ = true;
    last_write_ = std::chrono::steady_clock::now();
    StartWrite(&writing_);
  }

  void finish_locked(const grpc::Status& status) {
    finish_called_ = true;
    // Counted before the status leaves, as finish_unary does: a client that has its status sees the
    // request in /metrics.
    service_.count_request(rpc_, status.error_code());
    Finish(status);
  }

  VideoService& service_;
  const char* const rpc_;
  const bool cancel_job_on_end_;
  const bool include_result_;
  Subscription subscription_;

  std::mutex mu_;
  std::string job_id_;
  WallTime submitted_at_ = system_clock::now();
  std::deque<v1::JobEvent> queue_;
  v1::JobEvent writing_;
  bool write_in_flight_ = false;
  bool started_ = false;
  bool cancelled_ = false;
  bool broken_ = false;
  bool terminal_seen_ = false;
  bool finish_called_ = false;
  std::optional<grpc::Status> final_status_;
  std::chrono::steady_clock::time_point last_write_;
  double step_seconds_sum_ = 0.0;
  int64_t steps_seen_ = 0;
  SharedBytes result_;
  size_t result_offset_ = 0;
  std::string result_digest_;
  v1::JobEvent completed_;
};

// ---- VideoService ----

VideoService::VideoService(Pipeline& pipeline, ServiceOptions options, Metrics* metrics)
    : pipeline_(pipeline), options_(std::move(options)), metrics_(metrics) {
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
}

VideoService::~VideoService() {
  {
    std::lock_guard<std::mutex> lk(streams_mu_);
    stopping_ = true;
  }
  streams_cv_.notify_all();
  heartbeat_.join();
  scheduler_.reset();
}

void VideoService::start() {
  pipeline_.load();
  SchedulerOptions so;
  so.max_queue = options_.max_queue;
  so.worker_memory_budget = options_.worker_memory_budget;
  so.result_ttl = options_.result_ttl;
  so.max_result_bytes = options_.max_result_bytes;
  so.num_workers = pipeline_.num_workers();
  if (metrics_) {
    std::vector<std::pair<std::string, int>> groups;
    for (int w = 0; w < pipeline_.num_workers(); ++w) {
      groups.emplace_back(pipeline_.worker_name(w), pipeline_.worker_group_size(w));
    }
    metrics_->set_worker_groups(groups);
    so.observer = [this](const JobEvent& e) { observe(e); };
  }
  scheduler_ = std::make_unique<Scheduler>(so, [this](JobContext& ctx) { run_job(ctx); });
  ready_.store(true, std::memory_order_release);
}

void VideoService::drain(std::chrono::milliseconds budget) {
  if (scheduler_) scheduler_->drain(budget);
}

size_t VideoService::active_streams() const {
  std::lock_guard<std::mutex> lk(streams_mu_);
  return streams_.size();
}

void VideoService::register_stream(EventStream* stream) {
  std::lock_guard<std::mutex> lk(streams_mu_);
  streams_.insert(stream);
}

void VideoService::unregister_stream(EventStream* stream) {
  std::lock_guard<std::mutex> lk(streams_mu_);
  streams_.erase(stream);
}

void VideoService::heartbeat_loop() {
  const auto interval = options_.heartbeat_interval;
  const auto tick = std::clamp<std::chrono::milliseconds>(interval / 4, std::chrono::milliseconds(5),
                                                          std::chrono::milliseconds(1000));
  std::unique_lock<std::mutex> lk(streams_mu_);
  while (!stopping_) {
    streams_cv_.wait_for(lk, tick, [&] { return stopping_; });
    if (stopping_ || interval.count() <= 0) continue;
    const auto now = std::chrono::steady_clock::now();
    for (EventStream* s : streams_) s->heartbeat_if_quiet(now, interval);
  }
}

void VideoService::count_request(const char* rpc, grpc::StatusCode code) {
  if (metrics_) metrics_->count_request(rpc, grpc_code_name(code));
}

grpc::Status VideoService::check_call(grpc::CallbackServerContext* ctx) const {
  if (!options_.auth_token.empty()) {
    const std::string expected = "Bearer " + options_.auth_token;
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    const bool ok = it != md.end() && it->second.size() == expected.size() &&
                    CRYPTO_memcmp(it->second.data(), expected.data(), expected.size()) == 0;
    if (!ok) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token");
  }
  if (!ready()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is starting (loading models)");
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* VideoService::finish_unary(grpc::CallbackServerContext* ctx, const char* rpc,
                                                     const grpc::Status& status) {
  count_request(rpc, status.error_code());
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

std::string VideoService::submit(const v1::GenerateRequest& request, const std::string& client_job_id,
                                 size_t* queue_position, EventCallback callback, Subscription* subscription) {
  if (request.priority() < kMinPriority || request.priority() > kMaxPriority) {
    throw SubmitError(StatusCode::InvalidArgument,
                      "priority: must be in [-10, 10], got " + std::to_string(request.priority()));
  }
  if (request.queue_timeout_seconds() > kMaxQueueTimeoutSeconds) {
    throw SubmitError(StatusCode::InvalidArgument, "queue_timeout_seconds: at most " +
                                                       std::to_string(kMaxQueueTimeoutSeconds) + ", got " +
                                                       std::to_string(request.queue_timeout_seconds()));
  }
  if (!client_job_id.empty() && !valid_client_job_id(client_job_id)) {
    throw SubmitError(StatusCode::InvalidArgument, "client_job_id: 1..128 characters of [A-Za-z0-9._-]");
  }
  v1::GenerateRequest normalized;
  try {
    normalized = pipeline_.normalize(request, options_.limits);
  } catch (const stavid::Error& e) {
    throw SubmitError(status_code_from_error(e.code()), e.message());
  }
  JobSpec spec;
  spec.client_job_id = client_job_id;
  spec.priority = normalized.priority();
  spec.queue_timeout = normalized.queue_timeout_seconds() > 0
                           ? std::chrono::seconds(normalized.queue_timeout_seconds())
                           : std::chrono::duration_cast<std::chrono::seconds>(options_.default_queue_timeout);
  spec.memory_estimate_bytes = pipeline_.memory_estimate(normalized);
  if (normalized.gpu_group_size() != 0) {
    // Only the workers of the requested (or the model's) group size may take it.
    for (int w = 0; w < pipeline_.num_workers(); ++w) {
      if (pipeline_.worker_group_size(w) == static_cast<int>(normalized.gpu_group_size())) {
        spec.eligible_workers.push_back(w);
      }
    }
    if (spec.eligible_workers.empty()) {
      throw SubmitError(StatusCode::InvalidArgument, "gpu_group_size: no worker of this server has a group of " +
                                                         std::to_string(normalized.gpu_group_size()));
    }
  }
  spec.payload = std::move(normalized);
  std::string id = callback ? scheduler_->submit(std::move(spec), std::move(callback), subscription)
                            : scheduler_->submit(std::move(spec));
  if (queue_position) {
    auto snap = scheduler_->get(id);
    *queue_position = snap && snap->state == JobState::Queued ? snap->queue_position : 0;
  }
  return id;
}

grpc::ServerWriteReactor<v1::JobEvent>* VideoService::Generate(grpc::CallbackServerContext* ctx,
                                                               const v1::GenerateRequest* request) {
  auto* stream = new EventStream(*this, "Generate", /*cancel_job_on_end=*/true, /*include_result=*/true);
  grpc::Status status = check_call(ctx);
  if (!status.ok()) {
    stream->finish_now(status);
    return stream;
  }
  try {
    const WallTime submitted = system_clock::now();
    Subscription sub;
    const std::string id = submit(*request, "", nullptr, stream->callback(), &sub);
    stream->attached(id, submitted, std::move(sub));
  } catch (const SubmitError& e) {
    stream->finish_now(status_of(e.code(), e.what()));
  } catch (const std::exception& e) {
    stream->finish_now(grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what()));
  }
  return stream;
}

grpc::ServerUnaryReactor* VideoService::SubmitJob(grpc::CallbackServerContext* ctx, const v1::SubmitJobRequest* request,
                                                  v1::SubmitJobResponse* response) {
  grpc::Status status = check_call(ctx);
  if (!status.ok()) return finish_unary(ctx, "SubmitJob", status);
  try {
    size_t position = 0;
    response->set_job_id(submit(request->request(), request->client_job_id(), &position));
    response->set_queue_position(static_cast<uint32_t>(position));
  } catch (const SubmitError& e) {
    status = status_of(e.code(), e.what());
  } catch (const std::exception& e) {
    status = grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
  }
  return finish_unary(ctx, "SubmitJob", status);
}

grpc::ServerWriteReactor<v1::JobEvent>* VideoService::WatchJob(grpc::CallbackServerContext* ctx,
                                                               const v1::WatchJobRequest* request) {
  const bool include_result = !request->has_include_result() || request->include_result();
  auto* stream = new EventStream(*this, "WatchJob", /*cancel_job_on_end=*/false, include_result);
  grpc::Status status = check_call(ctx);
  if (status.ok() && request->job_id().empty()) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id: required");
  }
  std::optional<JobSnapshot> snap;
  if (status.ok()) {
    snap = scheduler_->get(request->job_id());
    if (!snap) status = grpc::Status(grpc::StatusCode::NOT_FOUND, "no job '" + request->job_id() + "'");
  }
  if (!status.ok()) {
    stream->finish_now(status);
    return stream;
  }
  try {
    Subscription sub = scheduler_->subscribe(request->job_id(), stream->callback());
    stream->attached(request->job_id(), snap->submitted_at, std::move(sub));
  } catch (const SubmitError& e) {  // removed since get()
    stream->finish_now(status_of(e.code(), e.what()));
  }
  return stream;
}

v1::Job VideoService::job_proto(const JobSnapshot& snap) const {
  v1::Job job;
  job.set_job_id(snap.id);
  job.set_client_job_id(snap.client_job_id);
  job.set_state(job_state_proto(snap.state));
  if (snap.payload) {
    if (const auto* req = std::any_cast<v1::GenerateRequest>(snap.payload.get())) *job.mutable_request() = *req;
  }
  job.set_submitted_at(unix_seconds(snap.submitted_at));
  if (snap.started_at) job.set_started_at(unix_seconds(*snap.started_at));
  if (snap.finished_at) job.set_finished_at(unix_seconds(*snap.finished_at));
  job.set_steps_done(static_cast<uint32_t>(std::max(0, snap.steps_done)));
  if (snap.state == JobState::Failed || snap.state == JobState::Cancelled) {
    job.set_error_code(static_cast<int32_t>(snap.error_code));
    job.set_error_message(snap.error_message);
  }
  job.set_result_bytes(snap.result_bytes);
  return job;
}

grpc::ServerUnaryReactor* VideoService::GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* request,
                                               v1::Job* response) {
  grpc::Status status = check_call(ctx);
  if (status.ok() && request->job_id().empty()) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id: required");
  }
  if (status.ok()) {
    auto snap = scheduler_->get(request->job_id());
    if (snap) {
      *response = job_proto(*snap);
    } else {
      status = grpc::Status(grpc::StatusCode::NOT_FOUND, "no job '" + request->job_id() + "'");
    }
  }
  return finish_unary(ctx, "GetJob", status);
}

grpc::ServerUnaryReactor* VideoService::ListJobs(grpc::CallbackServerContext* ctx, const v1::ListJobsRequest* request,
                                                 v1::ListJobsResponse* response) {
  grpc::Status status = check_call(ctx);
  if (!status.ok()) return finish_unary(ctx, "ListJobs", status);
  std::vector<JobState> states;
  for (int s : request->states()) {
    switch (s) {
      case v1::JOB_STATE_QUEUED: states.push_back(JobState::Queued); break;
      case v1::JOB_STATE_RUNNING: states.push_back(JobState::Running); break;
      case v1::JOB_STATE_SUCCEEDED: states.push_back(JobState::Succeeded); break;
      case v1::JOB_STATE_FAILED: states.push_back(JobState::Failed); break;
      case v1::JOB_STATE_CANCELLED: states.push_back(JobState::Cancelled); break;
      default:
        return finish_unary(ctx, "ListJobs",
                            grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                         "states: unknown or unspecified state " + std::to_string(s)));
    }
  }
  // The page token is the submission sequence number of the last job of the previous page; the
  // next page holds older jobs.
  uint64_t before = UINT64_MAX;
  if (!request->page_token().empty()) {
    const std::string& t = request->page_token();
    const bool digits = t.size() <= 20 && std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) {
      return finish_unary(ctx, "ListJobs", grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_token: malformed"));
    }
    before = std::stoull(t);
  }
  const uint32_t page_size =
      request->page_size() == 0 ? kDefaultPageSize : std::min(request->page_size(), kMaxPageSize);
  const std::vector<JobSnapshot> all = scheduler_->list(states);
  uint64_t last_seq = 0;
  bool more = false;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (it->seq >= before) continue;
    if (static_cast<uint32_t>(response->jobs_size()) == page_size) {
      more = true;
      break;
    }
    *response->add_jobs() = job_proto(*it);
    last_seq = it->seq;
  }
  if (more) response->set_next_page_token(std::to_string(last_seq));
  return finish_unary(ctx, "ListJobs", status);
}

grpc::ServerUnaryReactor* VideoService::CancelJob(grpc::CallbackServerContext* ctx, const v1::CancelJobRequest* request,
                                                  v1::Job* response) {
  grpc::Status status = check_call(ctx);
  if (status.ok() && request->job_id().empty()) {
    status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id: required");
  }
  if (status.ok()) {
    try {
      scheduler_->cancel(request->job_id());
      auto snap = scheduler_->get(request->job_id());
      if (snap) *response = job_proto(*snap);
    } catch (const SubmitError& e) {
      status = status_of(e.code(), e.what());
    }
  }
  return finish_unary(ctx, "CancelJob", status);
}

grpc::ServerUnaryReactor* VideoService::ListModels(grpc::CallbackServerContext* ctx, const v1::ListModelsRequest*,
                                                   v1::ListModelsResponse* response) {
  grpc::Status status = check_call(ctx);
  if (status.ok()) {
    for (v1::ModelInfo& m : pipeline_.models()) *response->add_models() = std::move(m);
  }
  return finish_unary(ctx, "ListModels", status);
}

void VideoService::run_job(JobContext& ctx) {
  const auto& request = std::any_cast<const v1::GenerateRequest&>(ctx.payload());
  v1::JobCompleted done = pipeline_.run(ctx, request);
  const WallTime now = system_clock::now();
  if (auto snap = scheduler_->get(ctx.job_id())) {
    if (snap->started_at) done.set_queue_seconds(seconds_between(snap->submitted_at, *snap->started_at));
    done.set_total_seconds(seconds_between(snap->submitted_at, now));
  }
  const SharedBytes& result = ctx.result();
  done.set_result_bytes(result ? result->size() : 0);
  ctx.set_result_info(encode_result_info(result ? sha256(result->data(), result->size()) : std::string(), done));
}

void VideoService::observe(const JobEvent& e) {
  // The worker label: the pipeline's worker name ("gpu0-3", "cpu"), "none" for a job that never ran.
  auto worker = [&] { return e.worker >= 0 ? pipeline_.worker_name(e.worker) : std::string("none"); };
  switch (e.kind) {
    case JobEvent::Kind::Started: {
      auto snap = scheduler_->get(e.job_id);
      if (snap && snap->started_at) metrics_->observe_queue_wait(seconds_between(snap->submitted_at, *snap->started_at));
      break;
    }
    case JobEvent::Kind::Stage:
      if (e.stage_finished) {
        const v1::Stage s = stage_proto(e.stage);
        metrics_->observe_stage(s == v1::STAGE_UNSPECIFIED ? "other" : e.stage, e.stage_seconds, worker());
      }
      break;
    case JobEvent::Kind::Step:
      metrics_->observe_step(e.step_seconds, e.step_skipped, worker());
      break;
    case JobEvent::Kind::Completed:
    case JobEvent::Kind::Failed:
    case JobEvent::Kind::Cancelled: {
      const char* outcome = e.kind == JobEvent::Kind::Completed ? "succeeded"
                            : e.kind == JobEvent::Kind::Failed  ? "failed"
                                                                : "cancelled";
      auto snap = scheduler_->get(e.job_id);
      if (snap && snap->finished_at) {
        metrics_->observe_job(outcome, seconds_between(snap->submitted_at, *snap->finished_at), worker());
      }
      break;
    }
    case JobEvent::Kind::Queued:
    case JobEvent::Kind::Data:
      break;
  }
}

}  // namespace stavid::server
