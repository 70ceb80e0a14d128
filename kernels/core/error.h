// The project's one error type and its host-side precondition macros.
// Host preconditions throw stavid::Error with file and line; the server boundary turns it into a
// grpc::Status. Kernels never print and never abort.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace stavid {

// What went wrong, coarse enough for the server to map to a status code.
enum class ErrorCode {
  InvalidArgument,  // the caller's input is bad whatever the state (shape, dtype, value)
  NotFound,         // a file, key or id that does not exist
  DataLoss,         // a corrupt or truncated file
  OutOfMemory,      // an allocation failed after the caches were released
  Unsupported,      // valid input that this build or device cannot run
  Internal,         // a bug or a failed library call (CUDA, cuBLAS, NCCL)
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, const char* file, int line);
  ErrorCode code() const { return code_; }
  // The message without the location, for user-facing replies.
  const std::string& message() const { return message_; }

 private:
  ErrorCode code_;
  std::string message_;
};

namespace detail {
[[noreturn]] void throw_error(ErrorCode code, const std::string& message, const char* file, int line);

// Streams every argument into one string: str_cat("shape ", 3, " != ", 4).
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail
}  // namespace stavid

// Throws stavid::Error(code) with the streamed message when `cond` is false.
#define STAVID_CHECK_CODE(cond, code, ...)                                                     \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      ::stavid::detail::throw_error((code), ::stavid::detail::str_cat(__VA_ARGS__), __FILE__, \
                                    __LINE__);                                                  \
    }                                                                                           \
  } while (0)

// The common case: a bad argument.
#define STAVID_CHECK(cond, ...) STAVID_CHECK_CODE(cond, ::stavid::ErrorCode::InvalidArgument, __VA_ARGS__)

#define STAVID_THROW(code, ...) \
  ::stavid::detail::throw_error((code), ::stavid::detail::str_cat(__VA_ARGS__), __FILE__, __LINE__)
