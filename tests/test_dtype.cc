#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/core/dtype.h"
#include "kernels/core/error.h"

namespace stavid {
namespace {

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to even (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  // 1 + 3 * 2^-8 is halfway between 1.0078125 and 1.015625: ties go to even (1.015625).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.015625f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
}

TEST(DType, F16RoundTripsEveryHalf) {
  // Every finite f16 bit pattern converts to float and back unchanged.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f = f16_to_float(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_f16(f), bits) << "pattern " << h;
  }
}

TEST(DType, F16RoundingAndLimits) {
  EXPECT_EQ(f16_to_float(float_to_f16(65504.f)), 65504.f);
  EXPECT_TRUE(std::isinf(f16_to_float(float_to_f16(65520.f))));  // rounds past the max
  EXPECT_EQ(f16_to_float(float_to_f16(65519.f)), 65504.f);
  const float min_sub = std::ldexp(1.f, -24);
  EXPECT_EQ(f16_to_float(float_to_f16(min_sub)), min_sub);
  EXPECT_EQ(f16_to_float(float_to_f16(min_sub * 0.49f)), 0.f);
  EXPECT_EQ(f16_to_float(float_to_f16(min_sub * 0.51f)), min_sub);
  // Halfway between 1 and the next f16 (1 + 2^-10): ties to even.
  EXPECT_EQ(f16_to_float(float_to_f16(1.f + std::ldexp(1.f, -11))), 1.f);
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DType, Names) {
  EXPECT_EQ(dtype_from_name("bfloat16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("f16"), DType::F16);
  EXPECT_STREQ(dtype_name(DType::F32), "f32");
  try {
    dtype_from_name("int3");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("int3"), std::string::npos);
  }
}

}  // namespace
}  // namespace stavid
