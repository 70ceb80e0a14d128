// Where a buffer lives and on which queue work runs. Free of CUDA headers: a CUDA stream is carried
// as the runtime's own opaque pointer type, so CPU-only translation units compile without CUDA.
#pragma once

#include <cstdint>
#include <string>

struct CUstream_st;  // the CUDA runtime's stream type; cudaStream_t is CUstream_st*

namespace stavid {

enum class DeviceType : uint8_t { Cpu, Cuda };

struct Device {
  DeviceType type = DeviceType::Cpu;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  static Device cpu() { return {DeviceType::Cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::Cuda, index}; }
  bool is_cpu() const { return type == DeviceType::Cpu; }
  bool is_cuda() const { return type == DeviceType::Cuda; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu" or "cuda:N"
};

using CudaStream = CUstream_st*;

// The queue a kernel is issued on. For the CPU, work runs synchronously on the calling thread.
// A null CUDA stream is the legacy default stream; the runtime hands out real streams.
struct Stream {
  Device device;
  CudaStream cuda = nullptr;

  static Stream cpu() { return {Device::cpu(), nullptr}; }
};

}  // namespace stavid
