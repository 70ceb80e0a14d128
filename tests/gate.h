// A one-shot gate for tests that hold a worker (or any thread) until the test opens it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace stavid::test {

class Gate {
 public:
  void open() {
    std::lock_guard<std::mutex> lk(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Waits until open() or the timeout; returns whether the gate opened.
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

}  // namespace stavid::test
