// The job scheduler: a bounded priority queue in front of a pool of workers, and a store of finished
// jobs. Transport-agnostic (no gRPC type here) and model-agnostic (the request is an opaque std::any
// handed to a JobRunner), so the service layer and the tests plug in what they need.
//
// Policy and invariants:
// - Admission (submit): bad spec -> InvalidArgument; draining -> Unavailable; duplicate client job id
//   (among jobs still in the store) -> AlreadyExists; memory estimate above one worker's budget, or
//   the queue already holding max_queue jobs -> ResourceExhausted. A rejected job leaves no trace.
//   A job may name the workers allowed to run it (JobSpec::eligible_workers, e.g. the workers of
//   one GPU group size); naming a worker index that does not exist is InvalidArgument. Memory is
//   checked against the one global worker_memory_budget whatever the eligible set (GPU groups of
//   different sizes share it: the estimate is per device, and every device has the same memory).
// - Order: higher priority first, FIFO (submission order) within one priority, per worker: a free
//   worker takes the first job in that order among those it is eligible for, so a job restricted to
//   a busy worker never holds back the jobs behind it that another free worker may run, and an
//   unrestricted job runs on the first worker that frees up with no earlier eligible job. A queued
//   job's position counts the queued jobs ahead of it in that order that share at least one
//   eligible worker with it (the jobs that can take a worker it could run on before it does).
// - A queued job whose queue timeout passes before a worker takes it ends Failed/DeadlineExceeded.
// - cancel(): a queued job ends Cancelled at once; a running job has its context's cancelled() turn
//   true and ends Cancelled when the runner returns or throws (the runner polls between steps).
// - A runner that throws stavid::Error fails the job with the mapped code and the error's message;
//   any other exception fails it with Internal. A worker never dies with its job.
// - Finished jobs stay in the store for result_ttl (then the record is removed: get() answers nothing
//   and the client job id is free again). Results count against max_result_bytes; past the bound the
//   oldest results are dropped first and their records keep result_evicted = true.
// - Events reach subscribers in order, per subscriber, never under the scheduler lock. A subscription
//   first replays the job's current state (replay = true), then live events; the last event of a job
//   is Completed, Failed or Cancelled.
// - drain(): stop accepting, cancel queued jobs, let running ones finish up to the timeout, then
//   cancel them, wait for their runners to return, join the threads. The destructor drains with zero.
// - A runner may attach an opaque result info string (a completion summary) with set_result_info();
//   it is kept with the job record and carried on the Completed event and in snapshots.
// - SchedulerOptions::observer, when set, sees every live event of every job (never replays), in
//   order per job, on the producing thread and never under the scheduler lock (for metrics).
#pragma once

#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kernels/core/error.h"

namespace stavid::server {

// Outcome codes. The numeric values are gRPC's status codes, so the service maps them with a cast.
enum class StatusCode : int {
  Ok = 0,
  Cancelled = 1,
  InvalidArgument = 3,
  DeadlineExceeded = 4,
  NotFound = 5,
  AlreadyExists = 6,
  ResourceExhausted = 8,
  Unimplemented = 12,
  Internal = 13,
  Unavailable = 14,
  DataLoss = 15,
};
const char* status_code_name(StatusCode code);
// stavid::Error's code as a status: OutOfMemory -> ResourceExhausted, Unsupported -> Unimplemented.
StatusCode status_code_from_error(ErrorCode code);

// Thrown by submit() on admission failure, and by the calls taking a job id when it is unknown.
class SubmitError : public std::runtime_error {
 public:
  SubmitError(StatusCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  StatusCode code() const { return code_; }

 private:
  StatusCode code_;
};

// Thrown by a runner (or by JobContext::throw_if_cancelled) to end a job as Cancelled.
class JobCancelled : public std::exception {
 public:
  const char* what() const noexcept override { return "job cancelled"; }
};

enum class JobState { Queued, Running, Succeeded, Failed, Cancelled };
inline constexpr size_t kNumJobStates = 5;
const char* job_state_name(JobState state);
bool is_terminal(JobState state);

struct JobSpec {
  std::string client_job_id;               // optional; unique among jobs in the store
  int32_t priority = 0;                    // higher runs first
  std::chrono::milliseconds queue_timeout{0};  // max wait before a worker takes it; 0 = none
  size_t memory_estimate_bytes = 0;        // must fit SchedulerOptions::worker_memory_budget
  std::vector<int> eligible_workers;       // worker indices that may run it; empty = any worker
  std::any payload;                        // the request; opaque to the scheduler
};

using Bytes = std::vector<uint8_t>;
using SharedBytes = std::shared_ptr<const Bytes>;
using WallTime = std::chrono::system_clock::time_point;

struct JobSnapshot {
  std::string id;
  uint64_t seq = 0;  // submission order, 1-based, never reused
  std::string client_job_id;
  JobState state = JobState::Queued;
  int32_t priority = 0;
  size_t memory_estimate_bytes = 0;
  size_t queue_position = 0;  // 0-based; meaningful while Queued (see the policy above)
  int worker = -1;            // the worker that took it, or -1
  std::vector<int> eligible_workers;  // sorted, no duplicates; empty = any worker
  WallTime submitted_at{};
  std::optional<WallTime> started_at;
  std::optional<WallTime> finished_at;
  int32_t steps_done = 0;
  int32_t steps_total = 0;
  std::string stage;  // the stage in progress, or the last one
  bool cancel_requested = false;
  StatusCode error_code = StatusCode::Ok;
  std::string error_message;
  size_t result_bytes = 0;  // size of the result, kept even when evicted
  bool result_evicted = false;
  SharedBytes result;  // null unless Succeeded with a result still in the store
  std::string result_info;  // what the runner passed to set_result_info (Succeeded only)
  std::shared_ptr<const std::any> payload;
};

struct JobEvent {
  enum class Kind { Queued, Started, Stage, Step, Data, Completed, Failed, Cancelled };
  Kind kind = Kind::Queued;
  std::string job_id;
  bool replay = false;  // produced by subscribe() from the stored state, not live
  // Queued
  size_t queue_position = 0;
  size_t queue_depth = 0;
  // Started, and every later live event of the job: the worker running it (-1 when it never ran)
  int worker = -1;
  // Stage
  std::string stage;
  bool stage_finished = false;
  double stage_seconds = 0.0;
  // Step (index is 0-based)
  int32_t step_index = 0;
  int32_t step_total = 0;
  double step_seconds = 0.0;
  bool step_skipped = false;
  // Data (runner-defined name, e.g. a preview) and Completed (the result; null when evicted)
  std::string data_name;
  SharedBytes bytes;
  bool result_evicted = false;
  std::string result_info;  // Completed: the runner's set_result_info
  // Failed / Cancelled
  StatusCode code = StatusCode::Ok;
  std::string message;

  bool is_terminal() const { return kind == Kind::Completed || kind == Kind::Failed || kind == Kind::Cancelled; }
};

// Called on whichever thread produced the event (a worker, the timer, or the caller of
// submit/cancel/subscribe). Must be cheap and must not throw; it may call back into the Scheduler.
using EventCallback = std::function<void(const JobEvent&)>;

namespace detail {
struct Job;
struct Subscriber;
}  // namespace detail

// Ends a subscription on destruction or reset(). After reset() returns no callback is running for it
// (unless reset() is called from inside that callback). Independent of the Scheduler's lifetime.
class Subscription {
 public:
  Subscription() = default;
  explicit Subscription(std::shared_ptr<detail::Subscriber> sub) : sub_(std::move(sub)) {}
  Subscription(Subscription&&) noexcept = default;
  Subscription& operator=(Subscription&& other) noexcept;
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  ~Subscription() { reset(); }
  void reset();
  bool active() const { return sub_ != nullptr; }

 private:
  std::shared_ptr<detail::Subscriber> sub_;
};

class Scheduler;

// What a runner sees of its job. Reporting calls are thread-safe but meant for the worker thread.
class JobContext {
 public:
  const std::string& job_id() const;
  const std::any& payload() const;
  int worker() const { return worker_; }
  bool cancelled() const;
  void throw_if_cancelled() const;
  // One denoise step finished: index is 0-based, seconds its duration, skipped when a cache reused it.
  void step(int32_t index, int32_t total, double seconds, bool skipped = false);
  // A stage (text, denoise, decode, encode) began (finished = false) or ended (with its duration).
  void stage(std::string_view name, bool finished, double seconds = 0.0);
  // Live-only bytes for subscribers (previews); not stored, not replayed.
  void emit_data(std::string name, Bytes bytes);
  // The job's result, stored when the runner returns normally.
  void set_result(Bytes bytes);
  const SharedBytes& result() const { return result_; }
  // An opaque summary stored with the result (Succeeded only), e.g. a serialized completion record.
  void set_result_info(std::string info) { result_info_ = std::move(info); }

 private:
  friend class Scheduler;
  JobContext(Scheduler& scheduler, std::shared_ptr<detail::Job> job, int worker)
      : scheduler_(scheduler), job_(std::move(job)), worker_(worker) {}
  Scheduler& scheduler_;
  std::shared_ptr<detail::Job> job_;
  int worker_;
  SharedBytes result_;
  std::string result_info_;
};

using JobRunner = std::function<void(JobContext&)>;

struct SchedulerOptions {
  size_t max_queue = 16;                     // queued (not running) jobs; > 0
  size_t worker_memory_budget = 0;           // bytes one worker can give a job; 0 = no limit
  std::chrono::seconds result_ttl{600};      // how long finished jobs stay in the store
  size_t max_result_bytes = size_t{256} << 20;  // bound on stored results; 0 = no limit
  int num_workers = 1;                       // > 0
  EventCallback observer;                    // optional: every live event of every job
};

struct SchedulerStats {
  size_t queue_depth = 0;
  size_t running = 0;
  std::array<size_t, kNumJobStates> by_state{};  // jobs in the store, indexed by JobState
  size_t result_bytes = 0;                       // stored result bytes
  uint64_t submitted_total = 0;                  // accepted since start
  uint64_t rejected_total = 0;                   // refused by admission since start
  bool draining = false;
};

class Scheduler {
 public:
  Scheduler(SchedulerOptions options, JobRunner runner);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Returns the new job id; throws SubmitError on admission failure.
  std::string submit(JobSpec spec);
  // Submits and subscribes in one step: the subscriber sees every event of the job, starting with
  // a Queued event (position, depth). *subscription receives the subscription. The callback may run
  // before this returns.
  std::string submit(JobSpec spec, EventCallback callback, Subscription* subscription);
  // True when the job was cancelled or its cancellation requested; false when already finished.
  // Throws SubmitError(NotFound) for an unknown id.
  bool cancel(const std::string& job_id);
  std::optional<JobSnapshot> get(const std::string& job_id) const;
  std::optional<std::string> find_by_client_id(const std::string& client_job_id) const;
  // Jobs in submission order; an empty filter means every state.
  std::vector<JobSnapshot> list(const std::vector<JobState>& states = {}) const;
  // Waits until the job is finished or the timeout passes; returns its snapshot then (nullopt when
  // unknown or removed).
  std::optional<JobSnapshot> wait(const std::string& job_id, std::chrono::milliseconds timeout) const;
  // Replays the current state, then live events. Throws SubmitError(NotFound) for an unknown id.
  Subscription subscribe(const std::string& job_id, EventCallback callback);
  SchedulerStats stats() const;
  void drain(std::chrono::milliseconds timeout);
  bool draining() const;

 private:
  friend class JobContext;
  using SteadyTime = std::chrono::steady_clock::time_point;
  using FlushList = std::vector<std::shared_ptr<detail::Subscriber>>;
  struct QueueKey {
    int32_t priority;
    uint64_t seq;
    bool operator<(const QueueKey& o) const { return priority != o.priority ? priority > o.priority : seq < o.seq; }
  };

  void worker_loop(int worker);
  void timer_loop();
  void run_job(const std::shared_ptr<detail::Job>& job, int worker);
  void publish_locked(detail::Job& job, JobEvent event, FlushList& flush);
  static void flush(FlushList& flush);
  void set_state_locked(detail::Job& job, JobState state);
  void finish_locked(detail::Job& job, JobState state, StatusCode code, std::string message, SharedBytes result,
                     std::string result_info, FlushList& flush);
  void remove_from_queue_locked(detail::Job& job);
  void evict_results_locked();
  void expire_locked(SteadyTime now, FlushList& flush);
  size_t queue_position_locked(const detail::Job& job) const;
  std::shared_ptr<detail::Job> next_job_locked(int worker) const;
  JobSnapshot snapshot_locked(const detail::Job& job) const;
  std::shared_ptr<detail::Job> find_locked(const std::string& job_id) const;

  const SchedulerOptions options_;
  const JobRunner runner_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;          // workers: queue non-empty or stopping
  std::condition_variable timer_cv_;         // timer: a deadline changed or stopping
  mutable std::condition_variable done_cv_;  // a job finished
  std::unordered_map<std::string, std::shared_ptr<detail::Job>> jobs_;
  std::map<uint64_t, detail::Job*> by_seq_;  // submission order for list()
  std::unordered_map<std::string, std::string> client_ids_;
  std::map<QueueKey, std::shared_ptr<detail::Job>> queue_;
  std::set<std::pair<SteadyTime, uint64_t>> deadlines_;  // queued jobs with a timeout
  std::deque<std::pair<SteadyTime, std::string>> finished_;  // TTL order (= finish order)
  std::deque<std::string> result_order_;                      // jobs holding results, oldest first
  std::array<size_t, kNumJobStates> state_counts_{};
  size_t result_bytes_ = 0;
  size_t running_ = 0;
  uint64_t next_seq_ = 1;
  uint64_t rejected_total_ = 0;
  bool draining_ = false;
  bool stopping_ = false;

  std::mutex drain_mu_;  // serializes drain(); guards joined_
  bool joined_ = false;
  std::vector<std::thread> workers_;
  std::thread timer_;
  std::shared_ptr<detail::Subscriber> observer_;  // subscribed to every job when options_.observer
};

}  // namespace stavid::server
