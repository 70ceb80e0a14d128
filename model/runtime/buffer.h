// An untyped device (or host) buffer from the device allocator, for index tables and other plain
// arrays that are not tensors (int32 maps, window arrays).
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "model/runtime/cuda_runtime.h"
#include "model/runtime/tensor.h"

namespace stavid {

class Buffer {
 public:
  Buffer() = default;
  // Copies `bytes` of host memory to a new buffer on `device` (complete on return for the caller's
  // purposes: later work on the device's current stream sees it).
  static Buffer from_host(const void* data, size_t bytes, Device device) {
    Buffer b;
    b.storage_ = std::make_shared<Storage>(bytes == 0 ? 1 : bytes, device, rt::current_stream(device));
    b.bytes_ = bytes;
    if (bytes > 0) rt::copy_bytes(b.storage_->data(), device, data, Device::cpu(), bytes, rt::current_stream(device));
    if (device.is_cuda()) rt::synchronize(rt::current_stream(device));  // the host data may go away
    return b;
  }
  template <typename T>
  static Buffer from_vector(const std::vector<T>& v, Device device) {
    return from_host(v.data(), v.size() * sizeof(T), device);
  }
  bool defined() const { return storage_ != nullptr; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return storage_ ? static_cast<T*>(storage_->data()) : nullptr; }

 private:
  std::shared_ptr<Storage> storage_;
  size_t bytes_ = 0;
};

}  // namespace stavid
