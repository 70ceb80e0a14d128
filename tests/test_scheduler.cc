// The job scheduler (server/scheduler.h): ordering, admission, cancellation, timeouts, failures,
// event replay, concurrency, drain and the result store. Each job's payload is the function its
// runner calls, so every test scripts its own jobs. Every wait is bounded.
#include "server/scheduler.h"
#include "tests/gate.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace stavid::server {
using stavid::test::Gate;

namespace {

using namespace std::chrono_literals;
using Script = std::function<void(JobContext&)>;

constexpr auto kWait = std::chrono::milliseconds(5000);

// Runs the job's payload (a Script); an empty payload is a trivial job.
JobRunner script_runner() {
  return [](JobContext& ctx) {
    if (const auto* script = std::any_cast<Script>(&ctx.payload())) (*script)(ctx);
  };
}

JobSpec spec_of(Script script, int32_t priority = 0) {
  JobSpec spec;
  spec.priority = priority;
  spec.payload = std::move(script);
  return spec;
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = kWait) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

bool is_state(const Scheduler& s, const std::string& id, JobState state) {
  auto snap = s.get(id);
  return snap && snap->state == state;
}

StatusCode submit_code(Scheduler& s, JobSpec spec) {
  try {
    s.submit(std::move(spec));
  } catch (const SubmitError& e) {
    return e.code();
  }
  return StatusCode::Ok;
}

// Collects events; waits for the terminal one.
class Recorder {
 public:
  EventCallback callback() {
    return [this](const JobEvent& e) {
      std::lock_guard<std::mutex> lk(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }
  bool wait_terminal(std::chrono::milliseconds timeout = kWait) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return !events_.empty() && events_.back().is_terminal(); });
  }
  std::vector<JobEvent> events() {
    std::lock_guard<std::mutex> lk(mu_);
    return events_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<JobEvent> events_;
};

SchedulerOptions one_worker(size_t max_queue = 16) {
  SchedulerOptions o;
  o.max_queue = max_queue;
  o.num_workers = 1;
  return o;
}

TEST(Scheduler, PriorityThenFifoWithinPriority) {
  Scheduler s(one_worker(), script_runner());
  Gate gate;
  std::mutex mu;
  std::vector<std::string> order;
  auto record = [&](std::string name) {
    return [&, name](JobContext&) {
      std::lock_guard<std::mutex> lk(mu);
      order.push_back(name);
    };
  };
  const std::string blocker = s.submit(spec_of([&](JobContext&) { ASSERT_TRUE(gate.wait(kWait)); }));
  ASSERT_TRUE(eventually([&] { return is_state(s, blocker, JobState::Running); }));
  std::vector<std::string> ids;
  ids.push_back(s.submit(spec_of(record("a0"), 0)));
  ids.push_back(s.submit(spec_of(record("b5"), 5)));
  ids.push_back(s.submit(spec_of(record("c0"), 0)));
  ids.push_back(s.submit(spec_of(record("d5"), 5)));
  ids.push_back(s.submit(spec_of(record("e9"), 9)));
  ids.push_back(s.submit(spec_of(record("f-1"), -1)));
  EXPECT_EQ(s.get(ids[4])->queue_position, 0u);
  EXPECT_EQ(s.get(ids[5])->queue_position, 5u);
  EXPECT_EQ(s.stats().queue_depth, 6u);
  gate.open();
  for (const auto& id : ids) {
    auto snap = s.wait(id, kWait);
    ASSERT_TRUE(snap);
    EXPECT_EQ(snap->state, JobState::Succeeded);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"e9", "b5", "d5", "a0", "c0", "f-1"}));
  EXPECT_EQ(s.stats().by_state[static_cast<size_t>(JobState::Succeeded)], 7u);
}

TEST(Scheduler, QueueFullIsResourceExhausted) {
  Scheduler s(one_worker(/*max_queue=*/2), script_runner());
  Gate gate;
  const std::string blocker = s.submit(spec_of([&](JobContext&) { ASSERT_TRUE(gate.wait(kWait)); }));
  ASSERT_TRUE(eventually([&] { return is_state(s, blocker, JobState::Running); }));
  EXPECT_EQ(submit_code(s, JobSpec{}), StatusCode::Ok);
  EXPECT_EQ(submit_code(s, JobSpec{}), StatusCode::Ok);
  EXPECT_EQ(submit_code(s, JobSpec{}), StatusCode::ResourceExhausted);
  EXPECT_EQ(s.stats().rejected_total, 1u);
  gate.open();
  ASSERT_TRUE(eventually([&] { return s.stats().by_state[static_cast<size_t>(JobState::Succeeded)] == 3; }));
}

TEST(Scheduler, AdmissionChecks) {
  SchedulerOptions o = one_worker();
  o.worker_memory_budget = 1000;
  Scheduler s(o, script_runner());
  JobSpec big;
  big.memory_estimate_bytes = 1001;
  EXPECT_EQ(submit_code(s, std::move(big)), StatusCode::ResourceExhausted);
  JobSpec fits;
  fits.memory_estimate_bytes = 1000;
  EXPECT_EQ(submit_code(s, std::move(fits)), StatusCode::Ok);

  JobSpec first;
  first.client_job_id = "client-1";
  const std::string id = s.submit(std::move(first));
  JobSpec dup;
  dup.client_job_id = "client-1";
  EXPECT_EQ(submit_code(s, std::move(dup)), StatusCode::AlreadyExists);
  EXPECT_EQ(s.find_by_client_id("client-1"), id);
  EXPECT_EQ(s.get(id)->client_job_id, "client-1");

  JobSpec negative;
  negative.queue_timeout = -1ms;
  EXPECT_EQ(submit_code(s, std::move(negative)), StatusCode::InvalidArgument);

  EXPECT_FALSE(s.get("no-such-job"));
  try {
    s.cancel("no-such-job");
    FAIL() << "cancel of an unknown job did not throw";
  } catch (const SubmitError& e) {
    EXPECT_EQ(e.code(), StatusCode::NotFound);
  }
  EXPECT_THROW(s.subscribe("no-such-job", [](const JobEvent&) {}), SubmitError);
}

TEST(Scheduler, CancelQueuedJob) {
  Scheduler s(one_worker(), script_runner());
  Gate gate;
  std::atomic<bool> ran{false};
  const std::string blocker = s.submit(spec_of([&](JobContext&) { ASSERT_TRUE(gate.wait(kWait)); }));
  ASSERT_TRUE(eventually([&] { return is_state(s, blocker, JobState::Running); }));
  const std::string queued = s.submit(spec_of([&](JobContext&) { ran = true; }));
  EXPECT_TRUE(s.cancel(queued));
  auto snap = s.get(queued);
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->state, JobState::Cancelled);
  EXPECT_EQ(snap->error_code, StatusCode::Cancelled);
  EXPECT_EQ(s.stats().queue_depth, 0u);
  EXPECT_FALSE(s.cancel(queued));  // already finished
  gate.open();
  ASSERT_TRUE(s.wait(blocker, kWait));
  EXPECT_FALSE(ran.load());
}

TEST(Scheduler, CancelRunningJobFreesTheWorker) {
  Scheduler s(one_worker(), script_runner());
  std::atomic<int> steps{0};
  const std::string slow = s.submit(spec_of([&](JobContext& ctx) {
    for (int i = 0; i < 5000; ++i) {  // 5 s at most
      ctx.throw_if_cancelled();
      std::this_thread::sleep_for(1ms);
      ctx.step(i, 5000, 0.001);
      ++steps;
    }
  }));
  const std::string next = s.submit(JobSpec{});
  ASSERT_TRUE(eventually([&] { return steps.load() >= 3; }));
  EXPECT_TRUE(s.cancel(slow));
  auto slow_snap = s.wait(slow, kWait);
  ASSERT_TRUE(slow_snap);
  EXPECT_EQ(slow_snap->state, JobState::Cancelled);
  EXPECT_EQ(slow_snap->error_code, StatusCode::Cancelled);
  EXPECT_LT(slow_snap->steps_done, 5000);
  auto next_snap = s.wait(next, kWait);
  ASSERT_TRUE(next_snap);
  EXPECT_EQ(next_snap->state, JobState::Succeeded);
  ASSERT_TRUE(next_snap->started_at && slow_snap->finished_at);
  EXPECT_GE(*next_snap->started_at, *slow_snap->finished_at);
}

TEST(Scheduler, QueueTimeoutIsDeadlineExceeded) {
  Scheduler s(one_worker(), script_runner());
  Gate gate;
  const std::string blocker = s.submit(spec_of([&](JobContext&) { ASSERT_TRUE(gate.wait(kWait)); }));
  ASSERT_TRUE(eventually([&] { return is_state(s, blocker, JobState::Running); }));
  JobSpec spec;
  spec.queue_timeout = 50ms;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string id = s.submit(std::move(spec));
  auto snap = s.wait(id, kWait);
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->state, JobState::Failed);
  EXPECT_EQ(snap->error_code, StatusCode::DeadlineExceeded);
  EXPECT_GE(elapsed, 50ms);
  EXPECT_LT(elapsed, 2000ms);
  EXPECT_EQ(s.stats().queue_depth, 0u);
  gate.open();
}

TEST(Scheduler, RunnerErrorsFailTheJobAndTheWorkerKeepsServing) {
  Scheduler s(one_worker(), script_runner());
  const std::string bad = s.submit(spec_of([](JobContext&) {
    STAVID_THROW(ErrorCode::InvalidArgument, "prompt too long");
  }));
  const std::string crash = s.submit(spec_of([](JobContext&) { throw std::runtime_error("boom"); }));
  const std::string fine = s.submit(spec_of([](JobContext& ctx) { ctx.set_result({1, 2, 3}); }));

  auto bad_snap = s.wait(bad, kWait);
  ASSERT_TRUE(bad_snap);
  EXPECT_EQ(bad_snap->state, JobState::Failed);
  EXPECT_EQ(bad_snap->error_code, StatusCode::InvalidArgument);
  EXPECT_EQ(bad_snap->error_message, "prompt too long");

  auto crash_snap = s.wait(crash, kWait);
  ASSERT_TRUE(crash_snap);
  EXPECT_EQ(crash_snap->state, JobState::Failed);
  EXPECT_EQ(crash_snap->error_code, StatusCode::Internal);
  EXPECT_NE(crash_snap->error_message.find("boom"), std::string::npos);

  auto fine_snap = s.wait(fine, kWait);
  ASSERT_TRUE(fine_snap);
  EXPECT_EQ(fine_snap->state, JobState::Succeeded);
  ASSERT_TRUE(fine_snap->result);
  EXPECT_EQ(*fine_snap->result, (Bytes{1, 2, 3}));
}

TEST(Scheduler, SubscribeAfterCompletionReplaysStateAndResult) {
  Scheduler s(one_worker(), script_runner());
  const std::string id = s.submit(spec_of([](JobContext& ctx) {
    ctx.stage("denoise", /*finished=*/false);
    for (int i = 0; i < 3; ++i) ctx.step(i, 3, 0.01, /*skipped=*/i == 2);
    ctx.stage("denoise", /*finished=*/true, 0.03);
    ctx.set_result({9, 8, 7, 6});
  }));
  ASSERT_TRUE(s.wait(id, kWait));
  for (int attempt = 0; attempt < 2; ++attempt) {  // re-attaching gets the same thing
    Recorder rec;
    Subscription sub = s.subscribe(id, rec.callback());
    ASSERT_TRUE(rec.wait_terminal());
    auto ev = rec.events();
    ASSERT_EQ(ev.size(), 4u);
    EXPECT_EQ(ev[0].kind, JobEvent::Kind::Started);
    EXPECT_EQ(ev[0].worker, 0);
    EXPECT_EQ(ev[1].kind, JobEvent::Kind::Stage);
    EXPECT_EQ(ev[1].stage, "denoise");
    EXPECT_TRUE(ev[1].stage_finished);
    EXPECT_EQ(ev[2].kind, JobEvent::Kind::Step);
    EXPECT_EQ(ev[2].step_index, 2);
    EXPECT_EQ(ev[2].step_total, 3);
    EXPECT_TRUE(ev[2].step_skipped);
    EXPECT_EQ(ev[3].kind, JobEvent::Kind::Completed);
    ASSERT_TRUE(ev[3].bytes);
    EXPECT_EQ(*ev[3].bytes, (Bytes{9, 8, 7, 6}));
    for (const auto& e : ev) {
      EXPECT_TRUE(e.replay);
      EXPECT_EQ(e.job_id, id);
    }
  }
}

TEST(Scheduler, SubscribeMidRunGetsReplayThenLiveStepsInOrder) {
  Scheduler s(one_worker(), script_runner());
  Gate reached;
  Gate resume;
  const std::string id = s.submit(spec_of([&](JobContext& ctx) {
    ctx.step(0, 5, 0.01);
    ctx.step(1, 5, 0.01);
    reached.open();
    ASSERT_TRUE(resume.wait(kWait));
    for (int i = 2; i < 5; ++i) ctx.step(i, 5, 0.01);
    ctx.set_result({42});
  }));
  ASSERT_TRUE(reached.wait(kWait));
  Recorder rec;
  Subscription sub = s.subscribe(id, rec.callback());
  resume.open();
  ASSERT_TRUE(rec.wait_terminal());
  auto ev = rec.events();
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[0].kind, JobEvent::Kind::Started);
  EXPECT_TRUE(ev[0].replay);
  EXPECT_EQ(ev[1].kind, JobEvent::Kind::Step);
  EXPECT_EQ(ev[1].step_index, 1);
  EXPECT_TRUE(ev[1].replay);
  for (int i = 2; i < 5; ++i) {
    EXPECT_EQ(ev[i].kind, JobEvent::Kind::Step);
    EXPECT_EQ(ev[i].step_index, i);
    EXPECT_FALSE(ev[i].replay);
  }
  EXPECT_EQ(ev[5].kind, JobEvent::Kind::Completed);
  EXPECT_FALSE(ev[5].replay);
  ASSERT_TRUE(ev[5].bytes);
  EXPECT_EQ(*ev[5].bytes, Bytes{42});
}

TEST(Scheduler, UnsubscribeStopsDelivery) {
  Scheduler s(one_worker(), script_runner());
  Gate reached;
  Gate resume;
  const std::string id = s.submit(spec_of([&](JobContext& ctx) {
    reached.open();
    ASSERT_TRUE(resume.wait(kWait));
    ctx.step(0, 1, 0.01);
  }));
  ASSERT_TRUE(reached.wait(kWait));
  std::atomic<int> count{0};
  Subscription sub = s.subscribe(id, [&](const JobEvent&) { ++count; });
  EXPECT_EQ(count.load(), 1);  // the replayed Started
  sub.reset();
  EXPECT_FALSE(sub.active());
  resume.open();
  ASSERT_TRUE(s.wait(id, kWait));
  EXPECT_EQ(count.load(), 1);
}

TEST(Scheduler, ConcurrentSubmissionsAreAcceptedOrRejectedNoneLost) {
  SchedulerOptions o;
  o.max_queue = 16;
  o.num_workers = 2;
  Gate gate;
  Scheduler s(o, [&](JobContext&) { ASSERT_TRUE(gate.wait(kWait)); });
  std::mutex mu;
  std::vector<std::string> accepted;
  std::atomic<int> rejected{0};
  std::atomic<int> other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        try {
          std::string id = s.submit(JobSpec{});
          std::lock_guard<std::mutex> lk(mu);
          accepted.push_back(std::move(id));
        } catch (const SubmitError& e) {
          if (e.code() == StatusCode::ResourceExhausted) {
            ++rejected;
          } else {
            ++other;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(accepted.size() + static_cast<size_t>(rejected.load()), 200u);
  // Workers are held, so at most the queue plus one job per worker got in.
  EXPECT_LE(accepted.size(), 16u + 2u);
  EXPECT_GE(accepted.size(), 16u);
  EXPECT_EQ(s.stats().rejected_total, static_cast<uint64_t>(rejected.load()));
  EXPECT_EQ(s.stats().submitted_total, accepted.size());
  gate.open();
  for (const auto& id : accepted) {
    auto snap = s.wait(id, kWait);
    ASSERT_TRUE(snap);
    EXPECT_EQ(snap->state, JobState::Succeeded) << id;
  }
  auto st = s.stats();
  EXPECT_EQ(st.queue_depth, 0u);
  EXPECT_EQ(st.running, 0u);
  EXPECT_EQ(st.by_state[static_cast<size_t>(JobState::Succeeded)], accepted.size());
  EXPECT_EQ(s.list({JobState::Succeeded}).size(), accepted.size());
  EXPECT_TRUE(s.list({JobState::Queued, JobState::Running}).empty());
}

TEST(Scheduler, DrainRejectsNewJobsAndEndsAllJobs) {
  SchedulerOptions o;
  o.num_workers = 2;
  Scheduler s(o, script_runner());
  Gate finishing;
  const std::string quick = s.submit(spec_of([&](JobContext& ctx) {
    ASSERT_TRUE(finishing.wait(kWait));
    ctx.set_result({1});
  }));
  const std::string stubborn = s.submit(spec_of([](JobContext& ctx) {
    for (int i = 0; i < 5000 && !ctx.cancelled(); ++i) std::this_thread::sleep_for(1ms);
  }));
  ASSERT_TRUE(eventually([&] { return s.stats().running == 2; }));
  const std::string queued = s.submit(JobSpec{});
  Recorder rec;
  Subscription sub = s.subscribe(stubborn, rec.callback());

  std::thread drainer([&] { s.drain(200ms); });
  ASSERT_TRUE(eventually([&] { return s.draining(); }));
  EXPECT_EQ(submit_code(s, JobSpec{}), StatusCode::Unavailable);
  finishing.open();  // the quick job ends within the drain budget
  drainer.join();

  EXPECT_EQ(s.get(quick)->state, JobState::Succeeded);
  auto stubborn_snap = s.get(stubborn);
  EXPECT_EQ(stubborn_snap->state, JobState::Cancelled);
  EXPECT_EQ(stubborn_snap->error_message, "server is draining");
  EXPECT_EQ(s.get(queued)->state, JobState::Cancelled);
  ASSERT_TRUE(rec.wait_terminal());
  EXPECT_EQ(rec.events().back().kind, JobEvent::Kind::Cancelled);
  auto st = s.stats();
  EXPECT_TRUE(st.draining);
  EXPECT_EQ(st.running, 0u);
  EXPECT_EQ(st.queue_depth, 0u);
  EXPECT_EQ(submit_code(s, JobSpec{}), StatusCode::Unavailable);
  s.drain(0ms);  // idempotent
}

TEST(Scheduler, ResultStoreEvictsOldestPastTheBound) {
  SchedulerOptions o = one_worker();
  o.max_result_bytes = 100;
  Scheduler s(o, script_runner());
  auto produce = [](uint8_t tag) { return spec_of([tag](JobContext& ctx) { ctx.set_result(Bytes(40, tag)); }); };
  std::vector<std::string> ids;
  for (uint8_t tag = 1; tag <= 3; ++tag) {
    ids.push_back(s.submit(produce(tag)));
    ASSERT_TRUE(s.wait(ids.back(), kWait));
  }
  auto first = s.get(ids[0]);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->state, JobState::Succeeded);
  EXPECT_TRUE(first->result_evicted);
  EXPECT_FALSE(first->result);
  EXPECT_EQ(first->result_bytes, 40u);
  for (int i = 1; i < 3; ++i) {
    auto snap = s.get(ids[i]);
    ASSERT_TRUE(snap && snap->result);
    EXPECT_FALSE(snap->result_evicted);
    EXPECT_EQ(*snap->result, Bytes(40, static_cast<uint8_t>(i + 1)));
  }
  EXPECT_EQ(s.stats().result_bytes, 80u);
  Recorder rec;
  Subscription sub = s.subscribe(ids[0], rec.callback());
  ASSERT_TRUE(rec.wait_terminal());
  EXPECT_EQ(rec.events().back().kind, JobEvent::Kind::Completed);
  EXPECT_TRUE(rec.events().back().result_evicted);
  EXPECT_FALSE(rec.events().back().bytes);
}

TEST(Scheduler, FinishedJobsExpireAfterTheTtl) {
  SchedulerOptions o = one_worker();
  o.result_ttl = std::chrono::seconds(1);
  Scheduler s(o, script_runner());
  JobSpec spec = spec_of([](JobContext& ctx) { ctx.set_result(Bytes(10, 5)); });
  spec.client_job_id = "ttl-job";
  const auto t0 = std::chrono::steady_clock::now();
  const std::string id = s.submit(std::move(spec));
  ASSERT_TRUE(s.wait(id, kWait));
  EXPECT_EQ(s.stats().result_bytes, 10u);
  ASSERT_TRUE(eventually([&] { return !s.get(id).has_value(); }, 4000ms));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
  auto st = s.stats();
  EXPECT_EQ(st.result_bytes, 0u);
  EXPECT_EQ(st.by_state[static_cast<size_t>(JobState::Succeeded)], 0u);
  EXPECT_FALSE(s.find_by_client_id("ttl-job"));
  JobSpec again;
  again.client_job_id = "ttl-job";  // the id is free again
  EXPECT_EQ(submit_code(s, std::move(again)), StatusCode::Ok);
}

TEST(Scheduler, ResultInfoTravelsWithTheResult) {
  Scheduler s(one_worker(), script_runner());
  Recorder live;
  Gate resume;
  const std::string id = s.submit(spec_of([&](JobContext& ctx) {
    ASSERT_TRUE(resume.wait(kWait));
    ctx.set_result({1, 2});
    EXPECT_EQ(ctx.result()->size(), 2u);
    ctx.set_result_info("summary");
  }));
  Subscription sub = s.subscribe(id, live.callback());
  resume.open();
  ASSERT_TRUE(live.wait_terminal());
  EXPECT_EQ(live.events().back().kind, JobEvent::Kind::Completed);
  EXPECT_EQ(live.events().back().result_info, "summary");
  auto snap = s.get(id);
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->result_info, "summary");
  EXPECT_GE(snap->seq, 1u);
  Recorder replay;
  Subscription again = s.subscribe(id, replay.callback());
  ASSERT_TRUE(replay.wait_terminal());
  EXPECT_TRUE(replay.events().back().replay);
  EXPECT_EQ(replay.events().back().result_info, "summary");
  // A failed job keeps no info.
  const std::string bad = s.submit(spec_of([](JobContext& ctx) {
    ctx.set_result_info("ignored");
    throw std::runtime_error("boom");
  }));
  auto bad_snap = s.wait(bad, kWait);
  ASSERT_TRUE(bad_snap);
  EXPECT_EQ(bad_snap->state, JobState::Failed);
  EXPECT_TRUE(bad_snap->result_info.empty());
}

TEST(Scheduler, ObserverSeesEveryLiveEventOfEveryJob) {
  std::mutex mu;
  std::vector<JobEvent> seen;
  SchedulerOptions o = one_worker();
  o.num_workers = 2;
  o.observer = [&](const JobEvent& e) {
    std::lock_guard<std::mutex> lk(mu);
    seen.push_back(e);
  };
  std::vector<std::string> ids;
  {
    Scheduler s(o, script_runner());
    for (int j = 0; j < 4; ++j) {
      ids.push_back(s.submit(spec_of([](JobContext& ctx) {
        ctx.stage("denoise", false);
        for (int i = 0; i < 3; ++i) ctx.step(i, 3, 0.001);
        ctx.stage("denoise", true, 0.003);
        ctx.set_result({7});
      })));
    }
    for (const auto& id : ids) ASSERT_TRUE(s.wait(id, kWait));
    Recorder rec;  // a replaying subscriber does not feed the observer
    Subscription sub = s.subscribe(ids[0], rec.callback());
    ASSERT_TRUE(rec.wait_terminal());
    ASSERT_TRUE(eventually([&] {
      std::lock_guard<std::mutex> lk(mu);
      return seen.size() >= 4u * 7u;
    }));
  }
  std::lock_guard<std::mutex> lk(mu);
  ASSERT_EQ(seen.size(), 4u * 7u);  // started, stage, 3 steps, stage, completed
  for (const auto& id : ids) {
    std::vector<JobEvent::Kind> kinds;
    for (const auto& e : seen) {
      EXPECT_FALSE(e.replay);
      if (e.job_id == id) kinds.push_back(e.kind);
    }
    ASSERT_EQ(kinds.size(), 7u);
    EXPECT_EQ(kinds.front(), JobEvent::Kind::Started);
    EXPECT_EQ(kinds[2], JobEvent::Kind::Step);
    EXPECT_EQ(kinds.back(), JobEvent::Kind::Completed);
  }
}

TEST(Scheduler, SubmitAndSubscribeSeesEveryEventFromQueued) {
  Scheduler s(one_worker(), script_runner());
  for (int round = 0; round < 20; ++round) {  // the job may start before submit returns
    Recorder rec;
    Subscription sub;
    const std::string id = s.submit(spec_of([](JobContext& ctx) {
                                      for (int i = 0; i < 3; ++i) ctx.step(i, 3, 0.0);
                                      ctx.set_result({1});
                                    }),
                                    rec.callback(), &sub);
    ASSERT_TRUE(sub.active());
    ASSERT_TRUE(rec.wait_terminal());
    auto ev = rec.events();
    ASSERT_EQ(ev.size(), 6u);
    EXPECT_EQ(ev[0].kind, JobEvent::Kind::Queued);
    EXPECT_EQ(ev[0].job_id, id);
    EXPECT_EQ(ev[0].queue_position, 0u);
    EXPECT_EQ(ev[0].queue_depth, 1u);
    EXPECT_EQ(ev[1].kind, JobEvent::Kind::Started);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(ev[2 + i].step_index, i);
    EXPECT_EQ(ev[5].kind, JobEvent::Kind::Completed);
  }
}

// ---- routing: JobSpec::eligible_workers ----

SchedulerOptions workers(int n) {
  SchedulerOptions o;
  o.num_workers = n;
  return o;
}

JobSpec routed(Script script, std::vector<int> eligible, int32_t priority = 0) {
  JobSpec spec = spec_of(std::move(script), priority);
  spec.eligible_workers = std::move(eligible);
  return spec;
}

TEST(Routing, AJobForABusyWorkerWaitsWhileAnotherIsIdleAndUnrestrictedJobsStillFlow) {
  Scheduler s(workers(2), script_runner());
  Gate gate1;
  // Hold worker 1 with a job only it may run.
  const std::string hold1 = s.submit(routed([&](JobContext&) { ASSERT_TRUE(gate1.wait(kWait)); }, {1}));
  ASSERT_TRUE(eventually([&] { return is_state(s, hold1, JobState::Running); }));
  EXPECT_EQ(s.get(hold1)->worker, 1);
  EXPECT_EQ(s.get(hold1)->eligible_workers, std::vector<int>{1});
  // A second job for worker 1 waits although worker 0 is idle.
  std::atomic<int> ran_on{-1};
  const std::string for1 = s.submit(routed([&](JobContext& ctx) { ran_on = ctx.worker(); }, {1}));
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(is_state(s, for1, JobState::Queued));
  EXPECT_EQ(s.get(for1)->queue_position, 0u);
  // Unrestricted jobs submitted after it run on worker 0 meanwhile, and do not count it as ahead.
  for (int i = 0; i < 3; ++i) {
    std::atomic<int> worker{-1};
    const std::string any = s.submit(spec_of([&](JobContext& ctx) { worker = ctx.worker(); }));
    auto snap = s.wait(any, kWait);
    ASSERT_TRUE(snap);
    EXPECT_EQ(snap->state, JobState::Succeeded);
    EXPECT_EQ(worker.load(), 0);
  }
  EXPECT_TRUE(is_state(s, for1, JobState::Queued));
  gate1.open();
  auto snap = s.wait(for1, kWait);
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->state, JobState::Succeeded);
  EXPECT_EQ(snap->worker, 1);
  EXPECT_EQ(ran_on.load(), 1);
}

TEST(Routing, PriorityThenFifoWithinTheEligibleSet) {
  Scheduler s(workers(2), script_runner());
  Gate gate0, gate1;
  const std::string hold0 = s.submit(routed([&](JobContext&) { ASSERT_TRUE(gate0.wait(kWait)); }, {0}));
  const std::string hold1 = s.submit(routed([&](JobContext&) { ASSERT_TRUE(gate1.wait(kWait)); }, {1}));
  ASSERT_TRUE(eventually([&] { return is_state(s, hold0, JobState::Running) && is_state(s, hold1, JobState::Running); }));
  std::mutex mu;
  std::vector<std::string> order1;
  auto record = [&](std::string name) {
    return [&, name](JobContext& ctx) {
      std::lock_guard<std::mutex> lk(mu);
      if (ctx.worker() == 1) order1.push_back(name);
    };
  };
  std::vector<std::string> ids;
  ids.push_back(s.submit(routed(record("a0"), {1}, 0)));
  ids.push_back(s.submit(routed(record("x9"), {0}, 9)));  // higher priority, but for worker 0 only
  ids.push_back(s.submit(routed(record("b5"), {1}, 5)));
  ids.push_back(s.submit(routed(record("c0"), {1}, 0)));
  ids.push_back(s.submit(routed(record("d5"), {0, 1}, 5)));
  // Positions count only the queued jobs ahead that share a worker.
  EXPECT_EQ(s.get(ids[1])->queue_position, 0u);  // x9: first overall
  EXPECT_EQ(s.get(ids[2])->queue_position, 0u);  // b5: x9 is ahead but cannot take worker 1
  EXPECT_EQ(s.get(ids[4])->queue_position, 2u);  // d5: x9 and b5 are ahead
  EXPECT_EQ(s.get(ids[0])->queue_position, 2u);  // a0: b5, d5
  EXPECT_EQ(s.get(ids[3])->queue_position, 3u);  // c0: b5, d5, a0
  EXPECT_EQ(s.stats().queue_depth, 5u);
  gate1.open();  // only worker 1 runs: its eligible jobs in priority then FIFO order; x9 stays
  ASSERT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> lk(mu);
    return order1.size() == 4;
  }));
  {
    std::lock_guard<std::mutex> lk(mu);
    EXPECT_EQ(order1, (std::vector<std::string>{"b5", "d5", "a0", "c0"}));
  }
  EXPECT_TRUE(is_state(s, ids[1], JobState::Queued));
  gate0.open();
  auto x9 = s.wait(ids[1], kWait);
  ASSERT_TRUE(x9);
  EXPECT_EQ(x9->state, JobState::Succeeded);
  EXPECT_EQ(x9->worker, 0);
}

TEST(Routing, UnrestrictedJobsAreNotStarvedByJobsForABusyWorker) {
  Scheduler s(workers(2), script_runner());
  Gate gate0, gate1;
  const std::string hold0 = s.submit(routed([&](JobContext&) { ASSERT_TRUE(gate0.wait(kWait)); }, {0}));
  const std::string hold1 = s.submit(routed([&](JobContext&) { ASSERT_TRUE(gate1.wait(kWait)); }, {1}));
  ASSERT_TRUE(eventually([&] { return is_state(s, hold0, JobState::Running) && is_state(s, hold1, JobState::Running); }));
  // Many high-priority jobs for worker 1 ahead of one plain job.
  std::vector<std::string> for1;
  for (int i = 0; i < 5; ++i) for1.push_back(s.submit(routed([](JobContext&) {}, {1}, 5)));
  const std::string any = s.submit(spec_of([](JobContext&) {}));
  EXPECT_EQ(s.get(any)->queue_position, 5u);
  gate0.open();  // worker 0 frees up: it skips the jobs it may not run and takes the plain one
  auto snap = s.wait(any, kWait);
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->state, JobState::Succeeded);
  EXPECT_EQ(snap->worker, 0);
  for (const std::string& id : for1) EXPECT_TRUE(is_state(s, id, JobState::Queued));
  gate1.open();
  for (const std::string& id : for1) {
    auto done = s.wait(id, kWait);
    ASSERT_TRUE(done);
    EXPECT_EQ(done->state, JobState::Succeeded);
    EXPECT_EQ(done->worker, 1);
  }
}

TEST(Routing, CancelAndQueueTimeoutOfARoutedQueuedJob) {
  Scheduler s(workers(2), script_runner());
  Gate gate1;
  const std::string hold1 = s.submit(routed([&](JobContext&) { ASSERT_TRUE(gate1.wait(kWait)); }, {1}));
  ASSERT_TRUE(eventually([&] { return is_state(s, hold1, JobState::Running); }));
  std::atomic<bool> ran{false};
  const std::string cancelled = s.submit(routed([&](JobContext&) { ran = true; }, {1}));
  JobSpec timed = routed([&](JobContext&) { ran = true; }, {1});
  timed.queue_timeout = 50ms;
  const std::string expired = s.submit(std::move(timed));
  EXPECT_TRUE(s.cancel(cancelled));
  auto c = s.get(cancelled);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->state, JobState::Cancelled);
  EXPECT_EQ(c->worker, -1);
  auto e = s.wait(expired, kWait);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->state, JobState::Failed);
  EXPECT_EQ(e->error_code, StatusCode::DeadlineExceeded);
  EXPECT_EQ(s.stats().queue_depth, 0u);
  // Worker 0 stayed idle and still serves; worker 1 serves after its job.
  EXPECT_EQ(s.wait(s.submit(routed([](JobContext&) {}, {0})), kWait)->worker, 0);
  gate1.open();
  EXPECT_EQ(s.wait(s.submit(routed([](JobContext&) {}, {1})), kWait)->worker, 1);
  EXPECT_FALSE(ran.load());
}

TEST(Routing, AnEligibleSetNamingAMissingWorkerIsInvalidArgument) {
  Scheduler s(workers(2), script_runner());
  EXPECT_EQ(submit_code(s, routed([](JobContext&) {}, {2})), StatusCode::InvalidArgument);
  EXPECT_EQ(submit_code(s, routed([](JobContext&) {}, {-1})), StatusCode::InvalidArgument);
  EXPECT_EQ(submit_code(s, routed([](JobContext&) {}, {0, 5})), StatusCode::InvalidArgument);
  EXPECT_EQ(s.stats().rejected_total, 3u);
  EXPECT_EQ(s.stats().submitted_total, 0u);
  // Duplicates are fine (and folded); every event of a running job names its worker.
  Recorder rec;
  s.submit(routed([](JobContext& ctx) { ctx.step(0, 1, 0.01); }, {1, 1}), rec.callback(), nullptr);
  ASSERT_TRUE(rec.wait_terminal());
  const auto events = rec.events();
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events[0].kind, JobEvent::Kind::Queued);
  for (size_t i = 1; i < events.size(); ++i) EXPECT_EQ(events[i].worker, 1) << i;
}

}  // namespace
}  // namespace stavid::server
