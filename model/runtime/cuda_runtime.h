// Thin host-side runtime over CUDA: device discovery, streams, copies, synchronization. Every
// function works in a CPU-only build (device count 0, CPU streams, host memcpy).
#pragma once

#include <cstddef>

#include "kernels/core/device.h"

namespace stavid::rt {

// Number of usable CUDA devices; 0 in a CPU-only build or on a machine without a GPU.
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }

// The calling thread's current stream for `device`. For CUDA this is a real non-blocking stream
// owned by the thread (created on first use, synchronized and destroyed at thread exit), unless a
// StreamGuard has installed another one.
Stream current_stream(Device device);

// Makes `stream` current for its device on this thread for the guard's lifetime.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream prev_;
  bool had_prev_;
};

// An owned CUDA stream (non-blocking); a CPU "stream" for CPU devices.
class OwnedStream {
 public:
  explicit OwnedStream(Device device);
  ~OwnedStream();
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  const Stream& get() const { return stream_; }

 private:
  Stream stream_;
};

void synchronize(const Stream& stream);
void synchronize_device(Device device);

// Copies bytes between any two devices, ordered on `stream` (which must be on the CUDA side if one
// side is CUDA). Copies that land in host memory are complete when this returns.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                const Stream& stream);

// Free and total bytes of device memory (cudaMemGetInfo); zeros for the CPU.
void device_memory_info(Device device, size_t* free_bytes, size_t* total_bytes);

// Makes `device` current on this thread (no-op for the CPU).
void set_device(Device device);

}  // namespace stavid::rt
