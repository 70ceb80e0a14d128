#include "kernels/core/device.h"

namespace stavid {
std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
}  // namespace stavid
