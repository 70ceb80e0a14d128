#include "kernels/core/cuda_check.h"

namespace stavid::detail {

namespace {
int current_device_or_minus_one() {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  return dev;
}
}  // namespace

void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line) {
  const ErrorCode code =
      err == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Internal;
  throw Error(code,
              str_cat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
                      ") in `", stmt, "` on device ", current_device_or_minus_one()),
              file, line);
}

void throw_cublas_error(cublasStatus_t st, const char* stmt, const char* file, int line) {
  throw Error(ErrorCode::Internal,
              str_cat("cuBLAS error ", cublasGetStatusName(st), " (", cublasGetStatusString(st),
                      ") in `", stmt, "` on device ", current_device_or_minus_one()),
              file, line);
}

}  // namespace stavid::detail
