#include "model/weights/tensor_io.h"

#include <cstring>

#include "kernels/core/error.h"

namespace stavid {

StDType st_dtype_of(DType t) {
  switch (t) {
    case DType::F32: return StDType::F32;
    case DType::BF16: return StDType::BF16;
    case DType::F16: return StDType::F16;
  }
  return StDType::F32;
}

Tensor load_tensor(const Checkpoint& ckpt, const TensorRecord& rec, Device device, DType dtype) {
  const Shape shape(rec.shape.begin(), rec.shape.end());
  Tensor host;
  if (const auto dt = st_to_dtype(rec.dtype)) {
    host = Tensor::empty(shape, *dt, Device::cpu());
    const auto bytes = ckpt.bytes(rec);
    STAVID_CHECK_CODE(bytes.size() == host.nbytes(), ErrorCode::DataLoss, "tensor '", rec.name, "' in ", rec.file,
                      " has ", bytes.size(), " bytes for shape ", shape_str(shape));
    if (!bytes.empty()) std::memcpy(host.data(), bytes.data(), bytes.size());
  } else {
    const std::vector<float> v = read_as_float(ckpt, rec);  // F64 converts; others throw Unsupported
    host = Tensor::from_host(v, shape, DType::F32, Device::cpu());
  }
  return host.to(dtype).to(device);
}

void save_tensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> hosts;
  std::vector<TensorToWrite> out;
  hosts.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    hosts.push_back(t.to(Device::cpu()).contiguous());
    const Tensor& h = hosts.back();
    out.push_back({name, st_dtype_of(h.dtype()), std::vector<int64_t>(h.shape().begin(), h.shape().end()), h.data(),
                   h.nbytes()});
  }
  write_safetensors(path, out, metadata);
}

}  // namespace stavid
