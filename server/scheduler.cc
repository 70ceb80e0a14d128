// The job scheduler (see scheduler.h for the policy). One mutex (mu_) guards every job record and the
// queue; each subscriber has its own small mutex for its pending events, taken only under or after
// mu_, never the other way round. Callbacks run with neither held.
#include "server/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <utility>

namespace stavid::server {

namespace detail {

struct Subscriber {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<JobEvent> pending;
  bool delivering = false;
  bool active = true;
  std::thread::id deliverer;
  EventCallback callback;
};

struct Job {
  std::string id;
  std::string client_job_id;
  int32_t priority = 0;
  uint64_t seq = 0;
  size_t memory_estimate_bytes = 0;
  std::vector<int> eligible;  // sorted worker indices; empty = any
  std::shared_ptr<const std::any> payload;
  std::optional<std::chrono::steady_clock::time_point> deadline;

  JobState state = JobState::Queued;
  int worker = -1;
  WallTime submitted_at{};
  std::optional<WallTime> started_at;
  std::optional<WallTime> finished_at;
  int32_t steps_done = 0;
  int32_t steps_total = 0;
  double last_step_seconds = 0.0;
  bool last_step_skipped = false;
  std::string stage;
  bool stage_finished = false;
  double stage_seconds = 0.0;

  std::atomic<bool> cancel_requested{false};
  std::string cancel_reason;  // guarded by the scheduler mutex
  StatusCode error_code = StatusCode::Ok;
  std::string error_message;
  SharedBytes result;
  std::string result_info;
  size_t result_bytes = 0;
  bool result_evicted = false;

  std::vector<std::shared_ptr<Subscriber>> subscribers;
};

}  // namespace detail

namespace {

constexpr size_t kMaxClientJobIdLength = 128;

bool eligible_for(const detail::Job& job, int worker) {
  return job.eligible.empty() || std::binary_search(job.eligible.begin(), job.eligible.end(), worker);
}

// Whether two jobs could run on one same worker (both sets sorted; empty = every worker).
bool share_a_worker(const detail::Job& a, const detail::Job& b) {
  if (a.eligible.empty() || b.eligible.empty()) return true;
  auto i = a.eligible.begin();
  auto j = b.eligible.begin();
  while (i != a.eligible.end() && j != b.eligible.end()) {
    if (*i == *j) return true;
    if (*i < *j) {
      ++i;
    } else {
      ++j;
    }
  }
  return false;
}

}  // namespace

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::Ok: return "OK";
    case StatusCode::Cancelled: return "CANCELLED";
    case StatusCode::InvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::DeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::NotFound: return "NOT_FOUND";
    case StatusCode::AlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::ResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::Unimplemented: return "UNIMPLEMENTED";
    case StatusCode::Internal: return "INTERNAL";
    case StatusCode::Unavailable: return "UNAVAILABLE";
    case StatusCode::DataLoss: return "DATA_LOSS";
  }
  return "UNKNOWN";
}

StatusCode status_code_from_error(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return StatusCode::InvalidArgument;
    case ErrorCode::NotFound: return StatusCode::NotFound;
    case ErrorCode::DataLoss: return StatusCode::DataLoss;
    case ErrorCode::OutOfMemory: return StatusCode::ResourceExhausted;
    case ErrorCode::Unsupported: return StatusCode::Unimplemented;
    case ErrorCode::Internal: return StatusCode::Internal;
  }
  return StatusCode::Internal;
}

const char* job_state_name(JobState state) {
  switch (state) {
    case JobState::Queued: return "queued";
    case JobState::Running: return "running";
    case JobState::Succeeded: return "succeeded";
    case JobState::Failed: return "failed";
    case JobState::Cancelled: return "cancelled";
  }
  return "unknown";
}

bool is_terminal(JobState state) {
  return state == JobState::Succeeded || state == JobState::Failed || state == JobState::Cancelled;
}

// ---- Subscription ----

Subscription& Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    reset();
    sub_ = std::move(other.sub_);
  }
  return *this;
}

void Subscription::reset() {
  if (!sub_) return;
  std::shared_ptr<detail::Subscriber> sub = std::move(sub_);
  sub_.reset();
  std::unique_lock<std::mutex> lk(sub->mu);
  sub->active = false;
  sub->pending.clear();
  if (sub->delivering && sub->deliverer != std::this_thread::get_id()) {
    sub->cv.wait(lk, [&] { return !sub->delivering; });
  }
}

// ---- JobContext ----

const std::string& JobContext::job_id() const { return job_->id; }

const std::any& JobContext::payload() const { return *job_->payload; }

bool JobContext::cancelled() const { return job_->cancel_requested.load(std::memory_order_acquire); }

void JobContext::throw_if_cancelled() const {
  if (cancelled()) throw JobCancelled();
}

void JobContext::step(int32_t index, int32_t total, double seconds, bool skipped) {
  Scheduler::FlushList flush;
  {
    std::lock_guard<std::mutex> lk(scheduler_.mu_);
    job_->steps_done = index + 1;
    job_->steps_total = total;
    job_->last_step_seconds = seconds;
    job_->last_step_skipped = skipped;
    JobEvent event;
    event.kind = JobEvent::Kind::Step;
    event.step_index = index;
    event.step_total = total;
    event.step_seconds = seconds;
    event.step_skipped = skipped;
    scheduler_.publish_locked(*job_, std::move(event), flush);
  }
  Scheduler::flush(flush);
}

void JobContext::stage(std::string_view name, bool finished, double seconds) {
  Scheduler::FlushList flush;
  {
    std::lock_guard<std::mutex> lk(scheduler_.mu_);
    job_->stage = std::string(name);
    job_->stage_finished = finished;
    job_->stage_seconds = seconds;
    JobEvent event;
    event.kind = JobEvent::Kind::Stage;
    event.stage = std::string(name);
    event.stage_finished = finished;
    event.stage_seconds = seconds;
    scheduler_.publish_locked(*job_, std::move(event), flush);
  }
  Scheduler::flush(flush);
}

void JobContext::emit_data(std::string name, Bytes bytes) {
  Scheduler::FlushList flush;
  {
    std::lock_guard<std::mutex> lk(scheduler_.mu_);
    JobEvent event;
    event.kind = JobEvent::Kind::Data;
    event.data_name = std::move(name);
    event.bytes = std::make_shared<const Bytes>(std::move(bytes));
    scheduler_.publish_locked(*job_, std::move(event), flush);
  }
  Scheduler::flush(flush);
}

void JobContext::set_result(Bytes bytes) { result_ = std::make_shared<const Bytes>(std::move(bytes)); }

// ---- Scheduler ----

Scheduler::Scheduler(SchedulerOptions options, JobRunner runner) : options_(options), runner_(std::move(runner)) {
  STAVID_CHECK(options_.max_queue > 0, "scheduler: max_queue must be > 0");
  STAVID_CHECK(options_.num_workers > 0, "scheduler: num_workers must be > 0, got ", options_.num_workers);
  STAVID_CHECK(static_cast<bool>(runner_), "scheduler: a job runner is required");
  if (options_.observer) {
    // One permanent subscriber attached to every job: events from all workers pass through its
    // queue, so whichever thread is delivering hands on the others' events too.
    observer_ = std::make_shared<detail::Subscriber>();
    observer_->callback = options_.observer;
  }
  workers_.reserve(static_cast<size_t>(options_.num_workers));
  for (int w = 0; w < options_.num_workers; ++w) workers_.emplace_back([this, w] { worker_loop(w); });
  timer_ = std::thread([this] { timer_loop(); });
}

Scheduler::~Scheduler() { drain(std::chrono::milliseconds(0)); }

std::string Scheduler::submit(JobSpec spec) { return submit(std::move(spec), nullptr, nullptr); }

std::string Scheduler::submit(JobSpec spec, EventCallback callback, Subscription* subscription) {
  std::unique_lock<std::mutex> lk(mu_);
  auto reject = [&](StatusCode code, const std::string& message) {
    ++rejected_total_;
    throw SubmitError(code, message);
  };
  if (spec.queue_timeout.count() < 0) reject(StatusCode::InvalidArgument, "queue timeout must be >= 0");
  if (spec.client_job_id.size() > kMaxClientJobIdLength) {
    reject(StatusCode::InvalidArgument, "client job id longer than " + std::to_string(kMaxClientJobIdLength));
  }
  std::sort(spec.eligible_workers.begin(), spec.eligible_workers.end());
  spec.eligible_workers.erase(std::unique(spec.eligible_workers.begin(), spec.eligible_workers.end()),
                              spec.eligible_workers.end());
  for (int w : spec.eligible_workers) {
    if (w < 0 || w >= options_.num_workers) {
      reject(StatusCode::InvalidArgument, "eligible worker " + std::to_string(w) + " does not exist (workers 0.." +
                                              std::to_string(options_.num_workers - 1) + ")");
    }
  }
  if (draining_) reject(StatusCode::Unavailable, "server is draining");
  if (options_.worker_memory_budget > 0 && spec.memory_estimate_bytes > options_.worker_memory_budget) {
    reject(StatusCode::ResourceExhausted, "memory estimate " + std::to_string(spec.memory_estimate_bytes) +
                                              " bytes exceeds a worker's budget of " +
                                              std::to_string(options_.worker_memory_budget));
  }
  if (!spec.client_job_id.empty() && client_ids_.count(spec.client_job_id) > 0) {
    reject(StatusCode::AlreadyExists, "client job id '" + spec.client_job_id + "' already exists");
  }
  if (queue_.size() >= options_.max_queue) {
    reject(StatusCode::ResourceExhausted, "queue full (" + std::to_string(options_.max_queue) + " jobs)");
  }

  auto job = std::make_shared<detail::Job>();
  job->seq = next_seq_++;
  char id[48];
  std::snprintf(id, sizeof(id), "job-%llu", static_cast<unsigned long long>(job->seq));
  job->id = id;
  job->client_job_id = std::move(spec.client_job_id);
  job->priority = spec.priority;
  job->memory_estimate_bytes = spec.memory_estimate_bytes;
  job->eligible = std::move(spec.eligible_workers);
  job->payload = std::make_shared<const std::any>(std::move(spec.payload));
  job->submitted_at = std::chrono::system_clock::now();
  if (spec.queue_timeout.count() > 0) {
    job->deadline = std::chrono::steady_clock::now() + spec.queue_timeout;
    deadlines_.emplace(*job->deadline, job->seq);
  }
  jobs_.emplace(job->id, job);
  by_seq_.emplace(job->seq, job.get());
  if (!job->client_job_id.empty()) client_ids_.emplace(job->client_job_id, job->id);
  if (observer_) job->subscribers.push_back(observer_);
  queue_.emplace(QueueKey{job->priority, job->seq}, job);
  ++state_counts_[static_cast<size_t>(JobState::Queued)];
  FlushList flush_list;
  if (callback) {
    auto sub = std::make_shared<detail::Subscriber>();
    sub->callback = std::move(callback);
    JobEvent queued;
    queued.kind = JobEvent::Kind::Queued;
    queued.job_id = job->id;
    queued.queue_position = queue_position_locked(*job);
    queued.queue_depth = queue_.size();
    sub->pending.push_back(std::move(queued));
    job->subscribers.push_back(sub);
    flush_list.push_back(sub);
    if (subscription) *subscription = Subscription(sub);
  }
  std::string result = job->id;
  lk.unlock();
  work_cv_.notify_all();  // not notify_one: the one woken might not be eligible for this job
  if (job->deadline) timer_cv_.notify_one();
  flush(flush_list);
  return result;
}

bool Scheduler::cancel(const std::string& job_id) {
  FlushList flush_list;
  bool effective = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    std::shared_ptr<detail::Job> job = find_locked(job_id);
    if (!job) throw SubmitError(StatusCode::NotFound, "no job '" + job_id + "'");
    if (job->state == JobState::Queued) {
      remove_from_queue_locked(*job);
      finish_locked(*job, JobState::Cancelled, StatusCode::Cancelled, "cancelled while queued", nullptr, {},
                    flush_list);
      effective = true;
    } else if (job->state == JobState::Running) {
      if (!job->cancel_requested.load()) job->cancel_reason = "cancelled while running";
      job->cancel_requested.store(true, std::memory_order_release);
      effective = true;
    }
  }
  flush(flush_list);
  return effective;
}

std::optional<JobSnapshot> Scheduler::get(const std::string& job_id) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::shared_ptr<detail::Job> job = find_locked(job_id);
  if (!job) return std::nullopt;
  return snapshot_locked(*job);
}

std::optional<std::string> Scheduler::find_by_client_id(const std::string& client_job_id) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = client_ids_.find(client_job_id);
  if (it == client_ids_.end()) return std::nullopt;
  return it->second;
}

std::vector<JobSnapshot> Scheduler::list(const std::vector<JobState>& states) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<JobSnapshot> out;
  for (const auto& [seq, job] : by_seq_) {
    if (!states.empty() && std::find(states.begin(), states.end(), job->state) == states.end()) continue;
    out.push_back(snapshot_locked(*job));
  }
  return out;
}

std::optional<JobSnapshot> Scheduler::wait(const std::string& job_id, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    std::shared_ptr<detail::Job> job = find_locked(job_id);
    if (!job) return std::nullopt;
    if (is_terminal(job->state)) return snapshot_locked(*job);
    if (done_cv_.wait_until(lk, deadline) == std::cv_status::timeout) {
      job = find_locked(job_id);
      if (!job) return std::nullopt;
      return snapshot_locked(*job);
    }
  }
}

Subscription Scheduler::subscribe(const std::string& job_id, EventCallback callback) {
  auto sub = std::make_shared<detail::Subscriber>();
  sub->callback = std::move(callback);
  FlushList flush_list{sub};
  {
    std::lock_guard<std::mutex> lk(mu_);
    std::shared_ptr<detail::Job> job = find_locked(job_id);
    if (!job) throw SubmitError(StatusCode::NotFound, "no job '" + job_id + "'");
    auto make = [&](JobEvent::Kind kind) {
      JobEvent event;
      event.kind = kind;
      event.job_id = job->id;
      event.replay = true;
      return event;
    };
    std::vector<JobEvent> replay;
    if (job->state == JobState::Queued) {
      JobEvent event = make(JobEvent::Kind::Queued);
      event.queue_position = queue_position_locked(*job);
      event.queue_depth = queue_.size();
      replay.push_back(std::move(event));
    }
    if (job->started_at) {
      JobEvent started = make(JobEvent::Kind::Started);
      started.worker = job->worker;
      replay.push_back(std::move(started));
      if (!job->stage.empty()) {
        JobEvent stage = make(JobEvent::Kind::Stage);
        stage.stage = job->stage;
        stage.stage_finished = job->stage_finished;
        stage.stage_seconds = job->stage_seconds;
        replay.push_back(std::move(stage));
      }
      if (job->steps_done > 0) {
        JobEvent step = make(JobEvent::Kind::Step);
        step.step_index = job->steps_done - 1;
        step.step_total = job->steps_total;
        step.step_seconds = job->last_step_seconds;
        step.step_skipped = job->last_step_skipped;
        replay.push_back(std::move(step));
      }
    }
    switch (job->state) {
      case JobState::Queued:
      case JobState::Running:
        job->subscribers.push_back(sub);
        break;
      case JobState::Succeeded: {
        JobEvent done = make(JobEvent::Kind::Completed);
        done.bytes = job->result;
        done.result_evicted = job->result_evicted;
        done.result_info = job->result_info;
        replay.push_back(std::move(done));
        break;
      }
      case JobState::Failed:
      case JobState::Cancelled: {
        JobEvent end = make(job->state == JobState::Failed ? JobEvent::Kind::Failed : JobEvent::Kind::Cancelled);
        end.code = job->error_code;
        end.message = job->error_message;
        replay.push_back(std::move(end));
        break;
      }
    }
    std::lock_guard<std::mutex> sub_lk(sub->mu);
    for (JobEvent& event : replay) sub->pending.push_back(std::move(event));
  }
  flush(flush_list);
  return Subscription(sub);
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  SchedulerStats s;
  s.queue_depth = queue_.size();
  s.running = running_;
  s.by_state = state_counts_;
  s.result_bytes = result_bytes_;
  s.submitted_total = next_seq_ - 1;
  s.rejected_total = rejected_total_;
  s.draining = draining_;
  return s;
}

bool Scheduler::draining() const {
  std::lock_guard<std::mutex> lk(mu_);
  return draining_;
}

void Scheduler::drain(std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> drain_lk(drain_mu_);
  if (joined_) return;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  FlushList flush_list;
  {
    std::unique_lock<std::mutex> lk(mu_);
    draining_ = true;
    while (!queue_.empty()) {
      std::shared_ptr<detail::Job> job = queue_.begin()->second;
      remove_from_queue_locked(*job);
      finish_locked(*job, JobState::Cancelled, StatusCode::Cancelled, "server is draining", nullptr, {},
                    flush_list);
    }
  }
  flush(flush_list);
  {
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait_until(lk, deadline, [&] { return running_ == 0; });
    if (running_ > 0) {
      for (auto& [id, job] : jobs_) {
        if (job->state != JobState::Running || job->cancel_requested.load()) continue;
        job->cancel_reason = "server is draining";
        job->cancel_requested.store(true, std::memory_order_release);
      }
    }
    // Runners poll cancelled() between steps; wait for them to return.
    done_cv_.wait(lk, [&] { return running_ == 0; });
    stopping_ = true;
  }
  work_cv_.notify_all();
  timer_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  timer_.join();
  joined_ = true;
}

void Scheduler::worker_loop(int worker) {
  for (;;) {
    std::shared_ptr<detail::Job> job;
    FlushList flush_list;
    {
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [&] { return stopping_ || (job = next_job_locked(worker)) != nullptr; });
      if (!job) return;  // stopping (drain emptied the queue)
      remove_from_queue_locked(*job);
      set_state_locked(*job, JobState::Running);
      job->worker = worker;
      job->started_at = std::chrono::system_clock::now();
      ++running_;
      JobEvent event;
      event.kind = JobEvent::Kind::Started;
      event.worker = worker;
      publish_locked(*job, std::move(event), flush_list);
    }
    flush(flush_list);
    run_job(job, worker);
  }
}

void Scheduler::run_job(const std::shared_ptr<detail::Job>& job, int worker) {
  JobContext ctx(*this, job, worker);
  JobState end = JobState::Succeeded;
  StatusCode code = StatusCode::Ok;
  std::string message;
  try {
    runner_(ctx);
  } catch (const JobCancelled&) {
    end = JobState::Cancelled;
  } catch (const stavid::Error& e) {
    end = JobState::Failed;
    code = status_code_from_error(e.code());
    message = e.message();
  } catch (const std::exception& e) {
    end = JobState::Failed;
    code = StatusCode::Internal;
    message = std::string("internal error: ") + e.what();
  } catch (...) {
    end = JobState::Failed;
    code = StatusCode::Internal;
    message = "internal error: unknown exception";
  }
  FlushList flush_list;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // A cancel request wins over whatever the runner did after it.
    if (end == JobState::Cancelled || job->cancel_requested.load()) {
      end = JobState::Cancelled;
      code = StatusCode::Cancelled;
      message = job->cancel_reason.empty() ? "cancelled by the runner" : job->cancel_reason;
    }
    --running_;
    const bool succeeded = end == JobState::Succeeded;
    finish_locked(*job, end, code, std::move(message), succeeded ? ctx.result_ : nullptr,
                  succeeded ? std::move(ctx.result_info_) : std::string(), flush_list);
  }
  flush(flush_list);
}

void Scheduler::timer_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    FlushList flush_list;
    expire_locked(std::chrono::steady_clock::now(), flush_list);
    if (!flush_list.empty()) {
      lk.unlock();
      flush(flush_list);
      lk.lock();
      continue;
    }
    std::optional<SteadyTime> next;
    if (!deadlines_.empty()) next = deadlines_.begin()->first;
    if (!finished_.empty()) {
      SteadyTime ttl_end = finished_.front().first + options_.result_ttl;
      if (!next || ttl_end < *next) next = ttl_end;
    }
    if (next) {
      timer_cv_.wait_until(lk, *next);
    } else {
      timer_cv_.wait(lk);
    }
  }
}

void Scheduler::expire_locked(SteadyTime now, FlushList& flush_list) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t seq = deadlines_.begin()->second;
    auto it = by_seq_.find(seq);
    if (it == by_seq_.end() || it->second->state != JobState::Queued) {
      deadlines_.erase(deadlines_.begin());
      continue;
    }
    std::shared_ptr<detail::Job> job = find_locked(it->second->id);
    remove_from_queue_locked(*job);
    finish_locked(*job, JobState::Failed, StatusCode::DeadlineExceeded, "not started within the queue timeout",
                  nullptr, {}, flush_list);
  }
  while (!finished_.empty() && finished_.front().first + options_.result_ttl <= now) {
    const std::string id = finished_.front().second;
    finished_.pop_front();
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    detail::Job& job = *it->second;
    if (!result_order_.empty() && result_order_.front() == id) result_order_.pop_front();
    if (job.result) result_bytes_ -= job.result->size();
    --state_counts_[static_cast<size_t>(job.state)];
    if (!job.client_job_id.empty()) {
      auto cit = client_ids_.find(job.client_job_id);
      if (cit != client_ids_.end() && cit->second == id) client_ids_.erase(cit);
    }
    by_seq_.erase(job.seq);
    jobs_.erase(it);
  }
}

void Scheduler::publish_locked(detail::Job& job, JobEvent event, FlushList& flush_list) {
  event.job_id = job.id;
  event.worker = job.worker;
  auto& subs = job.subscribers;
  for (auto it = subs.begin(); it != subs.end();) {
    const std::shared_ptr<detail::Subscriber> sub = *it;  // a copy: erase() may drop the last reference
    bool active = false;
    {
      std::lock_guard<std::mutex> sub_lk(sub->mu);
      active = sub->active;
      if (active) sub->pending.push_back(event);
    }
    if (!active) {
      it = subs.erase(it);
      continue;
    }
    flush_list.push_back(sub);
    ++it;
  }
}

void Scheduler::flush(FlushList& flush_list) {
  for (const std::shared_ptr<detail::Subscriber>& sub : flush_list) {
    std::unique_lock<std::mutex> lk(sub->mu);
    if (sub->delivering) continue;  // the thread delivering now picks the new events up
    sub->delivering = true;
    sub->deliverer = std::this_thread::get_id();
    while (sub->active && !sub->pending.empty()) {
      JobEvent event = std::move(sub->pending.front());
      sub->pending.pop_front();
      lk.unlock();
      try {
        sub->callback(event);
      } catch (...) {
        // A callback must not throw; one that does loses only its own event.
      }
      lk.lock();
    }
    sub->delivering = false;
    sub->deliverer = std::thread::id();
    sub->cv.notify_all();
  }
  flush_list.clear();
}

void Scheduler::set_state_locked(detail::Job& job, JobState state) {
  --state_counts_[static_cast<size_t>(job.state)];
  ++state_counts_[static_cast<size_t>(state)];
  job.state = state;
}

void Scheduler::finish_locked(detail::Job& job, JobState state, StatusCode code, std::string message,
                              SharedBytes result, std::string result_info, FlushList& flush_list) {
  set_state_locked(job, state);
  job.finished_at = std::chrono::system_clock::now();
  job.error_code = code;
  job.error_message = std::move(message);
  if (state == JobState::Succeeded && result) {
    job.result = result;
    job.result_bytes = result->size();
    result_bytes_ += result->size();
    result_order_.push_back(job.id);
  }
  job.result_info = std::move(result_info);
  finished_.emplace_back(std::chrono::steady_clock::now(), job.id);

  JobEvent event;
  switch (state) {
    case JobState::Succeeded: event.kind = JobEvent::Kind::Completed; break;
    case JobState::Failed: event.kind = JobEvent::Kind::Failed; break;
    case JobState::Cancelled: event.kind = JobEvent::Kind::Cancelled; break;
    case JobState::Queued:
    case JobState::Running: break;  // not terminal; callers never pass these
  }
  event.bytes = result;  // live subscribers get the bytes even if the store evicts them below
  event.code = code;
  event.message = job.error_message;
  event.result_info = job.result_info;
  evict_results_locked();
  publish_locked(job, std::move(event), flush_list);
  job.subscribers.clear();
  done_cv_.notify_all();
  timer_cv_.notify_one();
}

void Scheduler::remove_from_queue_locked(detail::Job& job) {
  queue_.erase(QueueKey{job.priority, job.seq});
  if (job.deadline) deadlines_.erase({*job.deadline, job.seq});
}

void Scheduler::evict_results_locked() {
  if (options_.max_result_bytes == 0) return;
  while (result_bytes_ > options_.max_result_bytes && !result_order_.empty()) {
    const std::string id = result_order_.front();
    result_order_.pop_front();
    auto it = jobs_.find(id);
    if (it == jobs_.end() || !it->second->result) continue;
    result_bytes_ -= it->second->result->size();
    it->second->result.reset();
    it->second->result_evicted = true;
  }
}

size_t Scheduler::queue_position_locked(const detail::Job& job) const {
  const auto end = queue_.find(QueueKey{job.priority, job.seq});
  if (end == queue_.end()) return 0;
  size_t ahead = 0;
  for (auto it = queue_.begin(); it != end; ++it) ahead += share_a_worker(*it->second, job) ? 1 : 0;
  return ahead;
}

std::shared_ptr<detail::Job> Scheduler::next_job_locked(int worker) const {
  for (const auto& [key, job] : queue_) {
    if (eligible_for(*job, worker)) return job;
  }
  return nullptr;
}

JobSnapshot Scheduler::snapshot_locked(const detail::Job& job) const {
  JobSnapshot s;
  s.id = job.id;
  s.seq = job.seq;
  s.client_job_id = job.client_job_id;
  s.state = job.state;
  s.priority = job.priority;
  s.memory_estimate_bytes = job.memory_estimate_bytes;
  s.queue_position = job.state == JobState::Queued ? queue_position_locked(job) : 0;
  s.worker = job.worker;
  s.eligible_workers = job.eligible;
  s.submitted_at = job.submitted_at;
  s.started_at = job.started_at;
  s.finished_at = job.finished_at;
  s.steps_done = job.steps_done;
  s.steps_total = job.steps_total;
  s.stage = job.stage;
  s.cancel_requested = job.cancel_requested.load();
  s.error_code = job.error_code;
  s.error_message = job.error_message;
  s.result_bytes = job.result_bytes;
  s.result_evicted = job.result_evicted;
  s.result = job.result;
  s.result_info = job.result_info;
  s.payload = job.payload;
  return s;
}

std::shared_ptr<detail::Job> Scheduler::find_locked(const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : it->second;
}

}  // namespace stavid::server
