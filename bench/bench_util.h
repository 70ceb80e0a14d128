// Shared benchmark harness: median timing with CUDA events (GPU) or steady_clock (CPU), and the
// device's name for the JSON lines.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/core/device.h"
#include "model/runtime/cuda_runtime.h"

#if defined(STAVID_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace stavid::bench {

// Median milliseconds of `fn` over `reps` runs after `warmup` runs, on `dev`'s current stream.
inline double time_ms(Device dev, int reps, const std::function<void()>& fn, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> ms;
#if defined(STAVID_WITH_CUDA)
  if (dev.is_cuda()) {
    const Stream s = rt::current_stream(dev);
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    for (int i = 0; i < reps; ++i) {
      cudaEventRecord(a, s.cuda);
      fn();
      cudaEventRecord(b, s.cuda);
      cudaEventSynchronize(b);
      float t = 0;
      cudaEventElapsedTime(&t, a, b);
      ms.push_back(t);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
#endif
  if (dev.is_cpu()) {
    for (int i = 0; i < reps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

inline std::string device_name(Device dev) {
#if defined(STAVID_WITH_CUDA)
  if (dev.is_cuda()) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, dev.index);
    return prop.name;
  }
#endif
  return "cpu";
}

// "a,b,c" -> {"a", "b", "c"} (flag lists).
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);) out.push_back(item);
  return out;
}

// Host wall clock in milliseconds (steady).
inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace stavid::bench
