// Tensor: a typed, strided view of reference-counted device or host memory.
// - Storage is shared by views; it returns its memory to the device's allocator when the last view
//   goes away. CUDA storage remembers the stream it was allocated on (see allocator.h).
// - Shapes and strides are in elements; offset_ is the element offset into the storage.
// - Work is issued on the calling thread's current stream for the tensor's device
//   (rt::current_stream); host-side reads (to_host_f32, item) synchronize that stream.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "kernels/core/device.h"
#include "kernels/core/dtype.h"

namespace stavid {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
std::string shape_str(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Storage {
 public:
  Storage(size_t bytes, Device device, const Stream& stream);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t bytes_;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;

  // ---- creation ----
  static Tensor empty(const Shape& shape, DType dtype, Device device);
  static Tensor zeros(const Shape& shape, DType dtype, Device device);
  static Tensor full(const Shape& shape, float value, DType dtype, Device device);
  // Host fp32 values, converted to `dtype` (rounded to nearest even) and placed on `device`.
  static Tensor from_host(const float* values, const Shape& shape, DType dtype, Device device);
  static Tensor from_host(const std::vector<float>& values, const Shape& shape, DType dtype, Device device);
  // Standard normal samples from the counter-based RNG (kernels/rng.h): the same values on every
  // device for the same (seed, offset).
  static Tensor randn(const Shape& shape, uint64_t seed, DType dtype, Device device, uint64_t offset = 0,
                      float stddev = 1.f);

  // ---- properties ----
  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;
  int64_t stride(int d) const;
  int64_t numel() const { return shape_numel(shape_); }
  int64_t offset() const { return offset_; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  void* data() const;
  template <typename T>
  T* data_as() const { return static_cast<T*>(data()); }
  std::string str() const;  // "bf16[2, 3] cuda:0"

  // ---- views (share storage) ----
  Tensor view(const Shape& shape) const;  // contiguous only; one -1 allowed
  Tensor slice(int d, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int d, int64_t index) const;  // drops dimension d
  Tensor permute(const std::vector<int>& dims) const;
  Tensor transpose(int a, int b) const;
  Tensor unsqueeze(int d) const;

  // ---- copies ----
  Tensor contiguous() const;  // this if already contiguous
  Tensor clone() const;
  Tensor reshape(const Shape& shape) const;  // view when possible, else a contiguous copy
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  // Copies `src` (same shape; any device and dtype) into this tensor's memory.
  void copy_from(const Tensor& src);
  void fill_(float value);
  // All elements as fp32 on the host, in row-major order (synchronizes).
  std::vector<float> to_host_f32() const;
  float item() const;  // the single element

 private:
  int norm_dim(int d, int ndim_for_insert = 0) const;

  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::F32;
};

// Consecutive, non-overlapping normal draws from one seed (random weights of a whole model): each
// call continues the stream where the previous one ended.
class NormalStream {
 public:
  explicit NormalStream(uint64_t seed) : seed_(seed) {}
  Tensor next(const Shape& shape, float stddev, DType dtype, Device device) {
    Tensor t = Tensor::randn(shape, seed_, dtype, device, offset_, stddev);
    offset_ += static_cast<uint64_t>(t.numel() + 3) / 4 * 4;
    return t;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

}  // namespace stavid
