#include "kernels/core/error.h"

namespace stavid {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return "invalid argument";
    case ErrorCode::NotFound: return "not found";
    case ErrorCode::DataLoss: return "data loss";
    case ErrorCode::OutOfMemory: return "out of memory";
    case ErrorCode::Unsupported: return "unsupported";
    case ErrorCode::Internal: return "internal";
  }
  return "unknown";
}

namespace {
std::string basename_of(const char* path) {
  std::string p(path);
  const auto slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}
}  // namespace

Error::Error(ErrorCode code, const std::string& message, const char* file, int line)
    : std::runtime_error(detail::str_cat(message, " [", error_code_name(code), " at ",
                                         basename_of(file), ":", line, "]")),
      code_(code),
      message_(message) {}

namespace detail {
void throw_error(ErrorCode code, const std::string& message, const char* file, int line) {
  throw Error(code, message, file, line);
}
}  // namespace detail
}  // namespace stavid
