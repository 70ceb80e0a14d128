// Element types and their host-side conversions. Device code uses cuda_bf16.h / cuda_fp16.h; these
// host conversions round to nearest even and agree with them bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace stavid {

enum class DType : uint8_t { F32, BF16, F16 };

constexpr size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
const char* dtype_name(DType t);
// "f32" / "bf16" / "f16" (also "float32", "bfloat16", "float16"); throws on anything else.
DType dtype_from_name(std::string_view name);

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bfloat16: the top half of an IEEE binary32, rounded to nearest even; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}
inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// IEEE binary16, rounded to nearest even, with subnormals, infinities and NaN.
uint16_t float_to_f16(float f);
float f16_to_float(uint16_t h);

// Rounds through the storage type: what a value becomes once stored as `t`.
inline float round_to(DType t, float f) {
  switch (t) {
    case DType::F32: return f;
    case DType::BF16: return bf16_to_float(float_to_bf16(f));
    case DType::F16: return f16_to_float(float_to_f16(f));
  }
  return f;
}

// Reads element i of a buffer of type t as float; writes one.
inline float load_as_float(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  return 0.f;
}
inline void store_from_float(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = float_to_bf16(v); break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = float_to_f16(v); break;
  }
}

}  // namespace stavid
