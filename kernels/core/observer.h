// An optional observer of every kernel dispatch (op name, params, stream), for profiling: the
// runtime's profiler records CUDA events around each call and groups time by op family. One null
// check per dispatch when unset.
#pragma once

#include "kernels/core/device.h"

namespace stavid {

class KernelObserver {
 public:
  virtual ~KernelObserver() = default;
  // `params` points at the op's params struct (GemmParams for "gemm", StaAttentionParams for
  // "sta_attention", ...).
  virtual void begin(const char* op, const void* params, const Stream& stream) = 0;
  virtual void end(const char* op, const Stream& stream) = 0;
};

// Installs (or, with nullptr, removes) the process-wide observer. Not thread-safe against
// concurrent dispatches: install it while no other thread launches kernels.
void set_kernel_observer(KernelObserver* observer);
KernelObserver* kernel_observer();

// Brackets one dispatch.
class ObservedDispatch {
 public:
  ObservedDispatch(const char* op, const void* params, const Stream& stream)
      : op_(op), stream_(stream), obs_(kernel_observer()) {
    if (obs_) obs_->begin(op, params, stream);
  }
  ~ObservedDispatch() {
    if (obs_) obs_->end(op_, stream_);
  }
  ObservedDispatch(const ObservedDispatch&) = delete;
  ObservedDispatch& operator=(const ObservedDispatch&) = delete;

 private:
  const char* op_;
  Stream stream_;
  KernelObserver* obs_;
};

}  // namespace stavid
