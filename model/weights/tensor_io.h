// Bridges checkpoints and tensors: a record's bytes as a Tensor on a device, in a compute dtype.
#pragma once

#include "model/runtime/tensor.h"
#include "model/weights/safetensors.h"

namespace stavid {

// Reads a record (F32, F16, BF16 or F64) into a tensor of `dtype` on `device`. Other dtypes throw
// Unsupported naming the key and the file.
Tensor load_tensor(const Checkpoint& ckpt, const TensorRecord& rec, Device device, DType dtype);

// The safetensors dtype for a compute dtype.
StDType st_dtype_of(DType t);

// Writes host copies of named tensors to a safetensors file (used by tools and tests).
void save_tensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace stavid
