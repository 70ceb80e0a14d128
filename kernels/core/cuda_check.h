// The CUDA / cuBLAS / NCCL checking macro family. Every runtime call and every kernel launch goes
// through one of these; a failure throws stavid::Error naming the statement, file, line and device.
// Include only from CUDA-aware translation units (.cu, or .cc compiled with STAVID_WITH_CUDA).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kernels/core/error.h"

namespace stavid::detail {
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* stmt, const char* file, int line);
}  // namespace stavid::detail

#define STAVID_CUDA_CHECK(stmt)                                                   \
  do {                                                                            \
    const cudaError_t stavid_err_ = (stmt);                                       \
    if (stavid_err_ != cudaSuccess) {                                             \
      ::stavid::detail::throw_cuda_error(stavid_err_, #stmt, __FILE__, __LINE__); \
    }                                                                             \
  } while (0)

// After every <<<...>>> launch: reports configuration errors (bad grid, too much shared memory).
#define STAVID_CUDA_CHECK_LAUNCH() STAVID_CUDA_CHECK(cudaGetLastError())

#define STAVID_CUBLAS_CHECK(stmt)                                                   \
  do {                                                                              \
    const cublasStatus_t stavid_st_ = (stmt);                                       \
    if (stavid_st_ != CUBLAS_STATUS_SUCCESS) {                                      \
      ::stavid::detail::throw_cublas_error(stavid_st_, #stmt, __FILE__, __LINE__);  \
    }                                                                               \
  } while (0)
