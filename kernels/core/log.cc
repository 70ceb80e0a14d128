#include "kernels/core/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace stavid {
namespace {

LogLevel level_from_env() {
  const char* s = std::getenv("STAVID_LOG_LEVEL");
  if (s == nullptr) return LogLevel::Info;
  if (std::strcmp(s, "debug") == 0) return LogLevel::Debug;
  if (std::strcmp(s, "warn") == 0) return LogLevel::Warn;
  if (std::strcmp(s, "error") == 0) return LogLevel::Error;
  return LogLevel::Info;
}

std::atomic<int>& level_storage() {
  static std::atomic<int> level{static_cast<int>(level_from_env())};
  return level;
}

const char* level_tag(LogLevel level) {
  switch (level) {
    case LogLevel::Debug: return "D";
    case LogLevel::Info: return "I";
    case LogLevel::Warn: return "W";
    case LogLevel::Error: return "E";
  }
  return "?";
}
}  // namespace

LogLevel log_level() { return static_cast<LogLevel>(level_storage().load(std::memory_order_relaxed)); }
void set_log_level(LogLevel level) { level_storage().store(static_cast<int>(level)); }

namespace detail {
LogLine::LogLine(LogLevel level, const char* file, int line) : level_(level) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  const char* base = std::strrchr(file, '/');
  os_ << level_tag(level) << ' ' << stamp << '.' << (ms < 100 ? (ms < 10 ? "00" : "0") : "") << ms
      << "Z " << (base ? base + 1 : file) << ':' << line << "] ";
}

LogLine::~LogLine() {
  os_ << '\n';
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  const std::string s = os_.str();
  std::fwrite(s.data(), 1, s.size(), stderr);
}
}  // namespace detail
}  // namespace stavid
