// Row softmax over the last dimension: y = softmax(scale * x), computed in fp32 with the row max
// subtracted. Rows whose every entry is -inf produce zeros (not NaN).
#pragma once

#include <cstdint>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

struct SoftmaxParams {
  const void* x = nullptr;
  void* y = nullptr;  // may alias x
  int64_t rows = 0, cols = 0;
  int64_t x_stride = 0, y_stride = 0;
  float scale = 1.f;
  DType dtype = DType::F32;
  Device device;
};

void softmax(const SoftmaxParams& p, const Stream& stream);

namespace detail {
void softmax_cpu(const SoftmaxParams& p);
void softmax_cuda(const SoftmaxParams& p, CudaStream s);
}  // namespace detail
}  // namespace stavid
