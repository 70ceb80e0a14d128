// Minimal leveled logging to stderr: STAVID_LOG(Info) << "loaded " << n << " tensors";
// One line per statement, written atomically; level from STAVID_LOG_LEVEL (debug|info|warn|error).
#pragma once

#include <sstream>

namespace stavid {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

LogLevel log_level();
void set_log_level(LogLevel level);

namespace detail {
class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();
  template <typename T>
  LogLine& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream os_;
};
}  // namespace detail
}  // namespace stavid

#define STAVID_LOG(level)                                                     \
  if (::stavid::LogLevel::level < ::stavid::log_level()) {                    \
  } else                                                                      \
    ::stavid::detail::LogLine(::stavid::LogLevel::level, __FILE__, __LINE__)
