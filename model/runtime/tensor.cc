#include "model/runtime/tensor.h"

#include <algorithm>
#include <numeric>
#include <sstream>

#include "kernels/core/error.h"
#include "kernels/elementwise.h"
#include "kernels/rng.h"
#include "model/runtime/allocator.h"
#include "model/runtime/cuda_runtime.h"

namespace stavid {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int i = static_cast<int>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

Storage::Storage(size_t bytes, Device device, const Stream& stream)
    : data_(rt::allocator_for(device).allocate(bytes, stream)), bytes_(bytes), device_(device) {}

Storage::~Storage() { rt::allocator_for(device_).deallocate(data_); }

// ---- creation ----

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) STAVID_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype),
                                         device, rt::current_stream(device));
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.f, dtype, device);
}

Tensor Tensor::full(const Shape& shape, float value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_host(const float* values, const Shape& shape, DType dtype, Device device) {
  Tensor host = empty(shape, dtype, Device::cpu());
  const int64_t n = host.numel();
  for (int64_t i = 0; i < n; ++i) store_from_float(host.data(), dtype, static_cast<size_t>(i), values[i]);
  return device.is_cpu() ? host : host.to(device);
}

Tensor Tensor::from_host(const std::vector<float>& values, const Shape& shape, DType dtype, Device device) {
  STAVID_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_host: ", values.size(),
               " values for shape ", shape_str(shape));
  return from_host(values.data(), shape, dtype, device);
}

Tensor Tensor::randn(const Shape& shape, uint64_t seed, DType dtype, Device device, uint64_t offset, float stddev) {
  Tensor t = empty(shape, dtype, device);
  NormalParams p;
  p.y = t.data();
  p.n = t.numel();
  p.seed = seed;
  p.offset = offset;
  p.stddev = stddev;
  p.dtype = dtype;
  p.device = device;
  normal(p, rt::current_stream(device));
  return t;
}

// ---- properties ----

int Tensor::norm_dim(int d, int extra) const {
  const int n = dim() + extra;
  const int r = d < 0 ? d + n : d;
  STAVID_CHECK(r >= 0 && r < n, "dimension ", d, " out of range for a ", dim(), "-d tensor");
  return r;
}

int64_t Tensor::size(int d) const { return shape_[norm_dim(d)]; }
int64_t Tensor::stride(int d) const { return strides_[norm_dim(d)]; }

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expect) return false;
    expect *= shape_[i];
  }
  return true;
}

void* Tensor::data() const {
  STAVID_CHECK(defined(), "data() of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device().str();
}

// ---- views ----

Tensor Tensor::view(const Shape& shape) const {
  STAVID_CHECK(is_contiguous(), "view of a non-contiguous tensor ", str(), " (use reshape)");
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < static_cast<int>(s.size()); ++i) {
    if (s[i] == -1) {
      STAVID_CHECK(infer < 0, "view: more than one -1 in ", shape_str(shape));
      infer = i;
    } else {
      STAVID_CHECK(s[i] >= 0, "view: negative dimension in ", shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    STAVID_CHECK(known > 0 && numel() % known == 0, "view: cannot infer -1 for ", str(), " -> ", shape_str(shape));
    s[infer] = numel() / known;
  }
  STAVID_CHECK(shape_numel(s) == numel(), "view: ", str(), " has ", numel(), " elements, ", shape_str(s),
               " has ", shape_numel(s));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end, int64_t step) const {
  d = norm_dim(d);
  const int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  STAVID_CHECK(step >= 1, "slice: step must be >= 1");
  STAVID_CHECK(start >= 0 && start <= end, "slice: range [", start, ", ", end, ") invalid for size ", n,
               " of ", str());
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = (end - start + step - 1) / step;
  t.strides_[d] *= step;
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  d = norm_dim(d);
  if (index < 0) index += shape_[d];
  STAVID_CHECK(index >= 0 && index < shape_[d], "select: index ", index, " out of range for ", str());
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  STAVID_CHECK(static_cast<int>(dims.size()) == dim(), "permute: ", dims.size(), " dims for ", str());
  std::vector<bool> seen(dims.size(), false);
  Tensor t = *this;
  for (size_t i = 0; i < dims.size(); ++i) {
    const int s = norm_dim(dims[i]);
    STAVID_CHECK(!seen[s], "permute: dimension ", s, " repeated");
    seen[s] = true;
    t.shape_[i] = shape_[s];
    t.strides_[i] = strides_[s];
  }
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  std::vector<int> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[norm_dim(a)], dims[norm_dim(b)]);
  return permute(dims);
}

Tensor Tensor::unsqueeze(int d) const {
  d = norm_dim(d, 1);
  Tensor t = *this;
  const int64_t st = d < dim() ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, st);
  return t;
}

// ---- copies ----

namespace {
// Describes src -> dst element mapping for the strided copy kernel, merging nothing (<= 6 dims).
CopyParams copy_params(const Tensor& dst, const Tensor& src) {
  STAVID_CHECK(dst.shape() == src.shape(), "copy: shape ", shape_str(src.shape()), " into ",
               shape_str(dst.shape()));
  CopyParams p;
  // Drop size-1 dimensions; they do not move the index.
  for (int i = 0; i < src.dim(); ++i) {
    if (src.size(i) == 1) continue;
    STAVID_CHECK(p.ndim < kMaxCopyDims, "copy: more than ", kMaxCopyDims, " non-trivial dimensions");
    p.sizes[p.ndim] = src.size(i);
    p.src_strides[p.ndim] = src.stride(i);
    p.dst_strides[p.ndim] = dst.stride(i);
    ++p.ndim;
  }
  p.src = src.data();
  p.dst = dst.data();
  p.src_dtype = src.dtype();
  p.dst_dtype = dst.dtype();
  p.device = dst.device();
  return p;
}
}  // namespace

void Tensor::copy_from(const Tensor& src) {
  STAVID_CHECK(defined() && src.defined(), "copy_from: undefined tensor");
  STAVID_CHECK(shape_ == src.shape_, "copy_from: shape ", shape_str(src.shape_), " into ", shape_str(shape_));
  if (numel() == 0) return;
  if (device() == src.device()) {
    strided_copy(copy_params(*this, src), rt::current_stream(device()));
    return;
  }
  // Across devices: make the source dense in the destination dtype on its own side, move the
  // bytes, then scatter on the destination side if the destination is strided.
  Tensor dense_src = src.dtype() == dtype_ ? src.contiguous() : src.to(dtype_);
  const Device cuda_side = device().is_cuda() ? device() : src.device();
  const Stream stream = rt::current_stream(cuda_side);
  if (src.device().is_cuda()) rt::synchronize(rt::current_stream(src.device()));
  if (is_contiguous()) {
    rt::copy_bytes(data(), device(), dense_src.data(), dense_src.device(), nbytes(), stream);
  } else {
    Tensor staging = empty(shape_, dtype_, device());
    rt::copy_bytes(staging.data(), device(), dense_src.data(), dense_src.device(), nbytes(), stream);
    strided_copy(copy_params(*this, staging), rt::current_stream(device()));
  }
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  return is_contiguous() ? view(shape) : clone().view(shape);
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype, device());
  t.copy_from(*this);
  return t;
}

void Tensor::fill_(float value) {
  STAVID_CHECK(is_contiguous(), "fill_ of a non-contiguous tensor ", str());
  FillParams p;
  p.y = data();
  p.n = numel();
  p.value = value;
  p.dtype = dtype_;
  p.device = device();
  fill(p, rt::current_stream(device()));
}

std::vector<float> Tensor::to_host_f32() const {
  Tensor host = to(Device::cpu()).to(DType::F32).contiguous();
  const float* p = host.data_as<float>();
  return std::vector<float>(p, p + host.numel());
}

float Tensor::item() const {
  STAVID_CHECK(numel() == 1, "item() of a tensor with ", numel(), " elements");
  return to_host_f32()[0];
}

}  // namespace stavid
