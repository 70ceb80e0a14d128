// Storage-type access for CPU kernels, resolved at compile time: dispatch on the dtype once per call
// (STAVID_CPU_DISPATCH), then loops use E::load / E::store, which inline (fp32 loops vectorize).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/core/dtype.h"

namespace stavid::cpu {

template <DType D>
struct Elem;
template <>
struct Elem<DType::F32> {
  static float load(const void* p, size_t i) { return static_cast<const float*>(p)[i]; }
  static void store(void* p, size_t i, float v) { static_cast<float*>(p)[i] = v; }
};
template <>
struct Elem<DType::BF16> {
  static float load(const void* p, size_t i) { return bf16_to_float(static_cast<const uint16_t*>(p)[i]); }
  static void store(void* p, size_t i, float v) { static_cast<uint16_t*>(p)[i] = float_to_bf16(v); }
};
template <>
struct Elem<DType::F16> {
  static float load(const void* p, size_t i) { return f16_to_float(static_cast<const uint16_t*>(p)[i]); }
  static void store(void* p, size_t i, float v) { static_cast<uint16_t*>(p)[i] = float_to_f16(v); }
};

}  // namespace stavid::cpu

// Runs `body` with `E` bound to stavid::cpu::Elem<dtype>.
#define STAVID_CPU_DISPATCH(dtype, ...)             \
  switch (dtype) {                                  \
    case ::stavid::DType::F32: {                    \
      using E = ::stavid::cpu::Elem<::stavid::DType::F32>; \
      __VA_ARGS__;                                  \
      break;                                        \
    }                                               \
    case ::stavid::DType::BF16: {                   \
      using E = ::stavid::cpu::Elem<::stavid::DType::BF16>; \
      __VA_ARGS__;                                  \
      break;                                        \
    }                                               \
    case ::stavid::DType::F16: {                    \
      using E = ::stavid::cpu::Elem<::stavid::DType::F16>; \
      __VA_ARGS__;                                  \
      break;                                        \
    }                                               \
  }
