#include "client/exit_codes.h"

namespace stavid::client {

ExitCode exit_code_for_status(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return ExitCode::Ok;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::FAILED_PRECONDITION:
      return ExitCode::InvalidArgument;
    case grpc::StatusCode::NOT_FOUND:
      return ExitCode::NotFound;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::UNAVAILABLE:
      return ExitCode::Retryable;
    case grpc::StatusCode::CANCELLED:
      return ExitCode::Cancelled;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return ExitCode::DeadlineExceeded;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return ExitCode::Auth;
    case grpc::StatusCode::ALREADY_EXISTS:
      return ExitCode::AlreadyExists;
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::DATA_LOSS:
    case grpc::StatusCode::DO_NOT_USE:
      return ExitCode::Failure;
  }
  return ExitCode::Failure;
}

ExitCode exit_code_for_job_failure(int code) {
  if (code == grpc::StatusCode::CANCELLED) return ExitCode::Cancelled;
  if (code == grpc::StatusCode::DEADLINE_EXCEEDED) return ExitCode::DeadlineExceeded;
  return ExitCode::JobFailed;
}

const char* status_code_name(int code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",         "UNKNOWN",        "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",   "UNIMPLEMENTED",    "INTERNAL",
      "UNAVAILABLE", "DATA_LOSS",       "UNAUTHENTICATED"};
  if (code >= 0 && code < static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) return kNames[code];
  return "UNKNOWN_CODE";
}

}  // namespace stavid::client
