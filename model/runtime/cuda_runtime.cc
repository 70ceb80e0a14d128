#include "model/runtime/cuda_runtime.h"

#include <cstring>
#include <unordered_map>

#include "kernels/core/error.h"

#if defined(STAVID_WITH_CUDA)
#include "kernels/core/cuda_check.h"
#endif

namespace stavid::rt {
namespace {

#if defined(STAVID_WITH_CUDA)
// Per-thread default streams, one per device, synchronized and destroyed at thread exit.
struct ThreadStreams {
  std::unordered_map<int, CudaStream> owned;
  std::unordered_map<int, CudaStream> current;  // overrides installed by StreamGuard
  ~ThreadStreams() {
    for (auto& [dev, s] : owned) {
      cudaSetDevice(dev);
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
};
thread_local ThreadStreams t_streams;
#endif

void check_cuda_index(Device d) {
  STAVID_CHECK(d.index >= 0 && d.index < cuda_device_count(), "no CUDA device ", d.index, " (",
               cuda_device_count(), " available)");
}
}  // namespace

int cuda_device_count() {
#if defined(STAVID_WITH_CUDA)
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device" error
      n = 0;
    }
    return n;
  }();
  return count;
#else
  return 0;
#endif
}

void set_device(Device device) {
  if (device.is_cpu()) return;
#if defined(STAVID_WITH_CUDA)
  check_cuda_index(device);
  STAVID_CUDA_CHECK(cudaSetDevice(device.index));
#endif
}

Stream current_stream(Device device) {
  if (device.is_cpu()) return Stream::cpu();
  check_cuda_index(device);
#if defined(STAVID_WITH_CUDA)
  if (auto it = t_streams.current.find(device.index); it != t_streams.current.end())
    return {device, it->second};
  auto it = t_streams.owned.find(device.index);
  if (it == t_streams.owned.end()) {
    set_device(device);
    CudaStream s = nullptr;
    STAVID_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    it = t_streams.owned.emplace(device.index, s).first;
  }
  return {device, it->second};
#else
  return Stream::cpu();
#endif
}

StreamGuard::StreamGuard(const Stream& stream) : prev_{}, had_prev_(false) {
#if defined(STAVID_WITH_CUDA)
  if (stream.device.is_cuda()) {
    auto it = t_streams.current.find(stream.device.index);
    if (it != t_streams.current.end()) {
      had_prev_ = true;
      prev_ = {stream.device, it->second};
    } else {
      prev_ = {stream.device, nullptr};
    }
    t_streams.current[stream.device.index] = stream.cuda;
    return;
  }
#endif
  prev_ = stream;
}

StreamGuard::~StreamGuard() {
#if defined(STAVID_WITH_CUDA)
  if (prev_.device.is_cuda()) {
    if (had_prev_) {
      t_streams.current[prev_.device.index] = prev_.cuda;
    } else {
      t_streams.current.erase(prev_.device.index);
    }
  }
#endif
}

OwnedStream::OwnedStream(Device device) : stream_{device, nullptr} {
  if (device.is_cpu()) return;
#if defined(STAVID_WITH_CUDA)
  set_device(device);
  STAVID_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_.cuda, cudaStreamNonBlocking));
#endif
}

OwnedStream::~OwnedStream() {
#if defined(STAVID_WITH_CUDA)
  if (stream_.cuda) {
    cudaStreamSynchronize(stream_.cuda);
    cudaStreamDestroy(stream_.cuda);
  }
#endif
}

void synchronize(const Stream& stream) {
  if (stream.device.is_cpu()) return;
#if defined(STAVID_WITH_CUDA)
  STAVID_CUDA_CHECK(cudaStreamSynchronize(stream.cuda));
#endif
}

void synchronize_device(Device device) {
  if (device.is_cpu()) return;
#if defined(STAVID_WITH_CUDA)
  set_device(device);
  STAVID_CUDA_CHECK(cudaDeviceSynchronize());
#endif
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes,
                const Stream& stream) {
  if (bytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memmove(dst, src, bytes);
    return;
  }
#if defined(STAVID_WITH_CUDA)
  cudaMemcpyKind kind = cudaMemcpyDeviceToDevice;
  if (src_device.is_cpu()) kind = cudaMemcpyHostToDevice;
  if (dst_device.is_cpu()) kind = cudaMemcpyDeviceToHost;
  STAVID_CHECK(stream.device.is_cuda(), "copy_bytes: a copy touching CUDA memory needs a CUDA stream");
  if (kind == cudaMemcpyDeviceToDevice && dst_device != src_device) {
    STAVID_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, bytes, stream.cuda));
  } else {
    STAVID_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream.cuda));
  }
  if (kind == cudaMemcpyDeviceToHost) STAVID_CUDA_CHECK(cudaStreamSynchronize(stream.cuda));
#else
  STAVID_THROW(ErrorCode::Unsupported, "copy_bytes: this build has no CUDA backend");
#endif
}

void device_memory_info(Device device, size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = 0;
  if (device.is_cpu()) return;
#if defined(STAVID_WITH_CUDA)
  set_device(device);
  STAVID_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
#endif
}

}  // namespace stavid::rt
