// The exit codes of the `stavid` CLI. Scripts branch on them, so the values are part of the interface
// (documented in `stavid --help` and docs/client.md); never renumber one.
#pragma once

#include <grpcpp/support/status.h>

namespace stavid::client {

enum class ExitCode : int {
  Ok = 0,
  Failure = 1,           // anything not listed below
  Usage = 2,             // bad flags or arguments, unreadable local files (TLS material)
  InvalidArgument = 3,   // INVALID_ARGUMENT (also OUT_OF_RANGE, FAILED_PRECONDITION)
  NotFound = 4,          // NOT_FOUND: unknown job id, unknown health service name
  Retryable = 5,         // RESOURCE_EXHAUSTED (queue full) or UNAVAILABLE (draining, unreachable)
  JobFailed = 6,         // the job ran and failed (its code was not CANCELLED or DEADLINE_EXCEEDED)
  Cancelled = 7,         // CANCELLED: the job or the call was cancelled (Ctrl-C during generate)
  DeadlineExceeded = 8,  // DEADLINE_EXCEEDED: --timeout passed, or the job's queue timeout
  Auth = 9,              // UNAUTHENTICATED or PERMISSION_DENIED
  ResultCorrupt = 10,    // the MP4 did not reassemble: gap, overlap, size or SHA-256 mismatch
  AlreadyExists = 11,    // ALREADY_EXISTS: the --client-job-id is taken (a retried submit)
  Interrupted = 130,     // Ctrl-C while watching (the job keeps running), 128 + SIGINT
};

inline int to_int(ExitCode code) { return static_cast<int>(code); }

// The exit code for a call that ended with `code` (Ok for OK).
ExitCode exit_code_for_status(grpc::StatusCode code);
// The exit code for a job that ended with JobFailed.code = `code` (a google.rpc.Code value).
ExitCode exit_code_for_job_failure(int code);
// "INVALID_ARGUMENT", ... ("UNKNOWN_CODE" for a value gRPC does not define).
const char* status_code_name(int code);

}  // namespace stavid::client
