// Kernel-level profiler: while alive, records the time of every kernel dispatch (CUDA events on the
// dispatch's stream, or wall time on the CPU), grouped by op name, and the shapes of every GEMM, so
// a benchmark can print a per-family breakdown and hand the GEMM list to a floor measurement.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kernels/core/observer.h"

namespace stavid::rt {

class KernelProfiler final : public KernelObserver {
 public:
  KernelProfiler();   // installs itself as the kernel observer
  ~KernelProfiler() override;  // uninstalls and frees its events
  KernelProfiler(const KernelProfiler&) = delete;
  KernelProfiler& operator=(const KernelProfiler&) = delete;

  void begin(const char* op, const void* params, const Stream& stream) override;
  void end(const char* op, const Stream& stream) override;

  // Synchronizes, then returns milliseconds and call counts per op name.
  struct OpTotal {
    double ms = 0;
    int64_t calls = 0;
  };
  std::map<std::string, OpTotal> totals();

  struct GemmShape {
    int64_t m, n, k, batch;
    std::string dtype, out_dtype, epilogue;
    int64_t count;
  };
  std::vector<GemmShape> gemm_shapes() const;

 private:
  struct Record;
  std::vector<Record*> records_;
  std::vector<Record*> open_;
  std::map<std::string, GemmShape> gemms_;
};

}  // namespace stavid::rt
